"""`python -m fastgen.evaluate ckpt=PATH eval=mnist [eval.steps=[1,2,4,8]] [eval.leaderboard=FILE.csv]`: leaderboard
rows for a checkpoint, a baseline or an untrained control.

Evaluate a trained checkpoint (method, model and data rebuilt from the config saved in it), or -- without
`ckpt` -- the method the composed config names, e.g. the DPM-Solver++ baseline on the teacher
(`method=dpm_solver`, evaluated at `eval.baseline_steps`). Evaluation settings come from the command line
(`eval=...`, `eval.*`), not from the checkpoint. Rows go to `eval.leaderboard` (default
`<run>/leaderboard.csv`), grids to `<run>/samples/`; the data-floor row too unless `real_data=false`.
`check=true` lists the assets (like `python -m fastgen.doctor`) and exits.

Without `ckpt`, a distillation method is evaluated as initialised (the teacher, sampled the method's way). With
`label=<method>@init` that is the like-for-like control that shows what training adds (`method.control()`): sampled
with the guidance the trained method's samples embody -- for LCM, LCM-LoRA and TSCD the teacher with CFG at
`teacher_guidance_scale` through the method's sampler (2 evaluations per step, in the rows' `nfe` and `guidance`);
UFOGen, DDGAN and SIDDM, trained on data without CFG, as they are. A TSCD checkpoint writes its N-step rows from
the k = N stage's snapshot beside the checkpoint and its final model's rows as `tscd@final` (TSCD.row_sources).
"""

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from fastgen.runtime.build import build_from_config
from fastgen.runtime.config import CONFIG_PATH, register_resolvers, user_errors, validate_config

register_resolvers()


def build_method(cfg, device):
    """(method, data module, experiment config, run dir) from `ckpt` or from the composed config."""
    from fastgen.eval.evaluator.checkpoint import method_from_checkpoint, run_dir_of

    if cfg.ckpt:
        method, datamodule, config = method_from_checkpoint(cfg.ckpt, device)
        return method, datamodule, config, run_dir_of(cfg.ckpt)
    config = OmegaConf.to_container(cfg, resolve=True)
    method, datamodule = build_from_config(cfg)
    return method.to(device).eval(), datamodule, config, Path(cfg.paths.runs_dir) / f"eval_{method.name}"


def as_control(method, label, ckpt):
    """`method.control()` for a control's label `<method>@init` (an untrained method only), else `method`."""
    from fastgen.eval.leaderboard.table import CONTROL

    if not (label or "").endswith(CONTROL):
        return method
    if label != f"{method.name}{CONTROL}":
        raise ValueError(f"label={label}: a control's label is its method's name + {CONTROL}, here "
                         f"label={method.name}{CONTROL}")
    if ckpt:
        raise ValueError(f"label={label} names the untrained control, but ckpt={ckpt} is a trained checkpoint: "
                         "drop ckpt, or give another label")
    return method.control()


def evaluate(cfg):
    from fastgen.eval.leaderboard.io import rows_frame
    from fastgen.eval.leaderboard.table import protocol_sections, summarise
    from fastgen.eval.metrics.suite import MetricSuite
    from fastgen.eval.evaluator.run_eval import real_data_row, run_eval
    from fastgen.eval.evaluator.settings import eval_settings

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    method, datamodule, config, run_dir = build_method(cfg, device)
    method = as_control(method, cfg.label, cfg.ckpt)
    settings = eval_settings(cfg.eval)
    settings.leaderboard = settings.leaderboard or str(run_dir / "leaderboard.csv")
    suite = MetricSuite.load(settings, datamodule, device)
    experiment = config.get("experiment_name") or config.get("run_name", "")
    if method.name == "dpm_solver":  # the same cached rows every distilled method's evaluation shows
        from fastgen.eval.evaluator.baseline import baseline_rows

        rows = baseline_rows(method, datamodule, settings, suite, out_dir=run_dir, experiment=experiment)
    else:
        rows = run_eval(method, datamodule, settings, out_dir=run_dir, experiment=experiment,
                        run_id=f"{experiment or method.name}-{Path(cfg.ckpt).stem if cfg.ckpt else 'eval'}",
                        checkpoint=str(cfg.ckpt or ""), train_seed=config.get("seed"), suite=suite,
                        label=cfg.label)
    floor = real_data_row(datamodule, settings, experiment=experiment, suite=suite) if cfg.real_data else None
    if floor:
        rows.append(floor)
    print("\n".join(protocol_sections(summarise(rows_frame(rows)), ("fid",))).rstrip())
    print(f"\n[fastgen] {len(rows)} rows appended to {settings.leaderboard}")
    return rows


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        if cfg.check:
            from fastgen.doctor import report

            sys.exit(report(cfg))
        validate_config(cfg, train=False, built=not cfg.ckpt)  # eval.* before any model is loaded
        evaluate(cfg)


if __name__ == "__main__":
    sys.exit(main())
