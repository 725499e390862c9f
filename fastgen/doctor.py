"""`python -m fastgen.doctor experiment=NAME [key=value ...]`: every asset the experiment needs, before a long run.

For each asset -- backbone weights, teacher, Inception (FID/KID), the FID reference (the COCO folder under
eval.coco_root: annotations valid and an image for every caption entry used; else the data module's held-out
split) and its statistics file, CLIP, aesthetic predictor, digit classifier, reward models, prompt set, W&B
credentials -- it prints where it was looked for, whether it was found, and the config key to set. Missing
backbone/teacher weights, an FID reference the evaluation could not build, training's reward model
(`method.reward`) or W&B credentials stop a run (exit 1); a missing metric asset only leaves that metric empty
(reported, exit 0).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fastgen.runtime.config import CONFIG_PATH, register_resolvers
from fastgen.data.errors import DataError

register_resolvers()


def _line(ok, name, detail, required=False):
    tag = "ok" if ok else ("MISSING" if required else "not computed")
    return ok or not required, f"[{tag:>12}] {name}: {detail}"


def backbone_lines(cfg):
    from fastgen.networks import MissingWeightsError, resolve_pretrained

    lines = []
    method_keys = OmegaConf.to_container(cfg.method, resolve=False) if cfg.get("method") else {}
    teacher_keys = [k for k in method_keys if "teacher" in k]  # resolve only these (others may need Hydra's runtime)
    for key, node in (("model", cfg.get("model")), *[(f"method.{k}", cfg.method[k]) for k in teacher_keys
                                                       if isinstance(cfg.method[k], (str, DictConfig))]):
        pretrained = node.get("pretrained") if isinstance(node, DictConfig) else node
        target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
        if isinstance(node, DictConfig) and pretrained is None:
            lines.append(_line(True, f"{key} weights", f"none needed ({target.rsplit('.', 1)[-1]}: random init)"))
            continue
        name = f"{key}.pretrained" if isinstance(node, DictConfig) else key
        try:
            lines.append(_line(True, f"{key} weights", str(resolve_pretrained(pretrained, name)), required=True))
        except MissingWeightsError as e:
            lines.append(_line(False, f"{key} weights", str(e).replace("\n", " "), required=True))
    return lines


def metric_lines(cfg):
    from fastgen.eval.models.aesthetic import lookup_aesthetic_weights
    from fastgen.eval.models.digit_classifier import SHIPPED_WEIGHTS
    from fastgen.eval.models.inception import lookup_inception_weights
    from fastgen.eval.models.open_clip import describe_clip_weights
    from fastgen.eval.evaluator.settings import eval_settings

    settings = eval_settings(cfg.get("eval"))
    lines = []
    if settings.fid.enabled:
        lookup = lookup_inception_weights(settings.fid.weights)
        lines.append(_line(lookup.found is not None, "Inception (FID/KID)", lookup.describe()))
        lines += reference_lines(cfg, settings, lookup.found)
    for enabled, name, model, pretrained, key in (
        (settings.clip.enabled, "CLIP score", settings.clip.model, settings.clip.pretrained, "eval.clip.pretrained"),
        (settings.aesthetic.enabled, "aesthetic CLIP", settings.aesthetic.clip_model,
         settings.aesthetic.clip_pretrained, "eval.aesthetic.clip_pretrained"),
    ):
        if enabled:
            found, where = describe_clip_weights(model, pretrained)
            lines.append(_line(found, f"{name} ({model})", f"{where}; set {key}=TAG_OR_PATH"))
    if settings.aesthetic.enabled:
        lookup = lookup_aesthetic_weights(settings.aesthetic.weights)
        lines.append(_line(lookup.found is not None, "aesthetic MLP", lookup.describe()))
    if settings.prompt_accuracy.enabled:
        path = Path(settings.prompt_accuracy.weights or SHIPPED_WEIGHTS)
        lines.append(_line(path.is_file(), "digit classifier", f"{path}; set eval.prompt_accuracy.weights=/path"))
    lines += prompt_lines(settings)
    return lines


def prompt_lines(settings):
    """The evaluation prompts: the COCO folder's captions under eval.coco_root, else the named prompt set."""
    if settings.coco_root:
        from fastgen.data.coco import coco_prompts

        try:
            return [_line(True, "prompt set", f"the first captions of the {len(coco_prompts(settings))} COCO images")]
        except DataError as e:
            return [_line(False, "prompt set", str(e), required=True)]
    if settings.prompts is None:
        return []
    from fastgen.data.prompts import load_prompt_set

    try:
        return [_line(True, "prompt set", f"{settings.prompts}: {len(load_prompt_set(settings.prompts))} prompts")]
    except Exception as e:  # DataError / FileNotFoundError: report, do not crash the doctor
        return [_line(False, "prompt set", f"{e}; set eval.prompts", required=True)]


def coco_line(settings, resolution):
    """Whether the COCO folder is complete: annotations valid, an image for every caption entry used."""
    from fastgen.data.coco import STANDARD_PROMPT_SET, CocoVal

    coco, n = CocoVal(settings.coco_root, resolution), settings.num_samples
    try:
        coco.used(n)
    except DataError as e:
        return _line(False, "COCO reference (eval.coco_root)", str(e), required=True)
    standard = (f"= the shipped {STANDARD_PROMPT_SET} list" if coco.standard_prompts_match(n) else
                f"differ from the shipped {STANDARD_PROMPT_SET} list: not the standard COCO-5k protocol")
    return _line(True, "COCO reference (eval.coco_root)",
                 f"{coco.root}: {coco.annotations.name} valid, {len(coco.entries())} captioned images, all {n} "
                 f"used present; their first captions {standard}")


def _data_resolution(cfg):
    """data.resolution from the config, else the data module class's own (MNIST: 32), else None."""
    from hydra.utils import get_class

    resolution = OmegaConf.select(cfg, "data.resolution", default=None, throw_on_resolution_failure=False)
    if resolution is None and cfg.get("data") and "_target_" in cfg.data:
        resolution = getattr(get_class(cfg.data._target_), "resolution", None)
    return resolution if isinstance(resolution, int) else None


def reference_lines(cfg, settings, inception_path):
    """The FID reference: an explicit file, else COCO (is the folder complete?) or the data module's split, and
    where its statistics are cached (or will be written on first use)."""
    from hydra.utils import instantiate

    from fastgen.eval.models.assets import sha256_file
    from fastgen.eval.metrics.reference import reference_path, reference_source, reference_spec

    if settings.fid.reference:
        path = Path(settings.fid.reference)
        return [_line(path.is_file(), "reference statistics", f"{path}; set eval.fid.reference=/path.npz")]
    lines = []
    try:
        if settings.coco_root:
            resolution = settings.resolution or _data_resolution(cfg)
            lines.append(coco_line(settings, resolution))
            if not lines[-1][0]:
                return lines
            settings.resolution = resolution
            datamodule = None
        else:
            datamodule = instantiate(cfg.data, _convert_="all")
        source, split = reference_source(settings, datamodule)
        if inception_path is None:
            return lines + [_line(True, "reference statistics", f"computed on first use under {settings.cache_dir}")]
        path = reference_path(settings.cache_dir, reference_spec(source, split, settings.num_samples)[0],
                              sha256_file(inception_path))
    except Exception as e:  # noqa: BLE001 - DataError, a data.root still ???, ...: report it, do not crash
        cause = e.__cause__ or e
        return lines + [_line(False, "reference statistics", str(cause).splitlines()[0], required=True)]
    state = "cached" if path.is_file() else "computed on first use (once) at"
    return lines + [_line(True, "reference statistics", f"{state} {path}")]


def reward_lines(cfg):
    """The reward models, loaded as a run would load them: training's feedback reward (`method.reward`: a run stops
    without it) and each reward column `eval.rewards` configures (a column left empty without it)."""
    from fastgen.eval.metrics.suite import reward_specs
    from fastgen.eval.models.rewards import COLUMNS, build_reward
    from fastgen.eval.evaluator.settings import eval_settings

    method_reward = OmegaConf.select(cfg, "method.reward", default=None)
    wanted = [("method.reward", OmegaConf.to_container(method_reward, resolve=True), True)] if method_reward else []
    settings = eval_settings(cfg.get("eval"))
    wanted += [(f"eval.rewards.{name}", spec, False) for name, spec in reward_specs(settings.rewards).items()]
    lines = []
    for key, spec, required in wanted:
        label = f"reward {spec.get('name')} ({key})" if required else f"reward column {COLUMNS.get(spec['name'])}"
        try:
            build_reward(spec, key_prefix=key)
            lines.append(_line(True, label, "loaded", required))
        except (ValueError, OSError) as e:
            lines.append(_line(False, label, str(e).splitlines()[0], required))
    return lines


def wandb_lines(cfg):
    from fastgen.eval.leaderboard.wandb_log import WandbNotReadyError, check_wandb_ready

    logger = cfg.get("logger") or {}
    if "WandbLogger" not in str(logger.get("_target_", "")):
        return []
    try:
        check_wandb_ready(offline=bool(logger.get("offline", False)))
        return [_line(True, "W&B credentials", "offline mode or API key found", required=True)]
    except WandbNotReadyError as e:
        return [_line(False, "W&B credentials", str(e), required=True)]


def report(cfg):
    """Print every asset line; 0 if nothing required is missing, else 1."""
    lines = backbone_lines(cfg) + metric_lines(cfg) + reward_lines(cfg) + wandb_lines(cfg)
    name = OmegaConf.select(cfg, "run_name", default=None, throw_on_resolution_failure=False)
    print(f"fastgen doctor: experiment {name or '?'}")
    for _, text in lines:
        print(text)
    ok = all(ok for ok, _ in lines)
    print("ready" if ok else "missing required assets: set the keys above before training")
    return 0 if ok else 1


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(report(cfg))


if __name__ == "__main__":
    main()
