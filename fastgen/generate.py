"""`python -m fastgen.generate ckpt=PATH prompt="..." steps=N [seed=S] [num_images=K] [out=DIR]`: PNGs from a
trained model.

Images from a trained checkpoint (or, without `ckpt`, from the method the composed config names: e.g.
`experiment=dpm_solver_mnist` for the DPM-Solver++ baseline on the teacher), with the evaluation's sampler and
noises (image i of seed S is the evaluation's sample i at eval.seed=S for the same prompt). Writes
`<out>/<index>_<prompt>.png` and `<out>/grid.png` (one row per prompt).
  prompts_file=FILE               one prompt per line instead of `prompt`
  init_image=PNG strength=s       image-to-image (SDEdit): the method's sampler from the time `strength` selects
  controlnet=DIR control_image=PNG [controlnet_scale=c]   ControlNet residuals at every sampling step
  row=SUFFIX                      sample as the leaderboard's `<method><SUFFIX>` rows (method.row_sources), e.g.
                                  row=@unified for TSCD's unified model, row=@final, row="" for TSCD's k = steps stage
"""

import contextlib
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from fastgen.runtime.config import CONFIG_PATH, register_resolvers, user_errors, validate_config

register_resolvers()


def read_prompts(cfg) -> list[str]:
    """The prompt list: `prompt`, or the non-empty lines of `prompts_file` (exactly one of them)."""
    if (cfg.prompt is None) == (cfg.prompts_file is None):
        raise ValueError('give one of prompt="..." or prompts_file=FILE (one prompt per line)')
    if cfg.prompt is not None:
        return [str(cfg.prompt)]
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts_file={path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts_file={path} holds no prompts (one per line)")
    return prompts


def check_options(cfg) -> None:
    for key in ("steps", "num_images", "batch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{key}={cfg[key]!r} must be a positive integer")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed={cfg.seed!r} must be a non-negative integer")
    if not 0.0 <= float(cfg.strength) <= 1.0:
        raise ValueError(f"strength={cfg.strength} must be in [0, 1] (1: text-to-image, 0: the input image unchanged)")
    if (cfg.controlnet is None) != (cfg.control_image is None):
        raise ValueError("controlnet=DIR and control_image=PNG go together")


def check_steps(method, steps: int) -> None:
    """One line when the method cannot sample with `steps` steps (methods declare `supported_steps`)."""
    supported = getattr(method, "supported_steps", None)
    if supported is not None and steps not in supported:
        raise ValueError(f"steps={steps}: {method.name} samples with {list(supported)} steps only (set steps=...)")


def generate(cfg):
    """Sample every prompt `num_images` times; returns (uint8 images [N, C, H, W], prompts per image, paths)."""
    from tqdm import tqdm

    from fastgen.evaluate import build_method
    from fastgen.networks.controlnet import attach_controlnet, load_controlnet
    from fastgen.generation.images import read_image, save_outputs
    from fastgen.generation.sampling import encode_image, row_source, sample_pixels

    check_options(cfg)
    prompts = [p for p in read_prompts(cfg) for _ in range(cfg.num_images)]
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    method, _, _, run_dir = build_method(cfg, device)
    check_steps(method, cfg.steps)
    source = row_source(method, cfg.steps, cfg.get("row"))
    bb = method.backbone
    init_x0 = None
    if cfg.init_image is not None:
        init_x0 = encode_image(bb, read_image(cfg.init_image, bb.image_shape).to(device))
    control = None
    if cfg.controlnet is not None:
        controlnet = load_controlnet(cfg.controlnet, device)
        control = (read_image(cfg.control_image, (controlnet.config.conditioning_channels, *bb.image_shape[1:]),
                              "control_image").to(device) + 1) / 2
    out = Path(cfg.out) if cfg.out else (run_dir / "generate" if cfg.ckpt else Path(cfg.paths.runs_dir) / f"generate_{method.name}")
    batches = list(torch.arange(len(prompts)).split(cfg.batch_size))
    images = []
    with torch.no_grad(), source.weights(), (attach_controlnet(method, controlnet, control, cfg.controlnet_scale)
                                             if control is not None else contextlib.nullcontext()):
        for batch in tqdm(batches, desc=f"{method.name} {cfg.steps} step(s)", disable=not cfg.progress, unit="batch"):
            images.append(sample_pixels(method, prompts, batch, cfg.steps, cfg.seed, init_x0, float(cfg.strength)).cpu())
    images = torch.cat(images)
    paths = save_outputs(images, prompts, range(len(prompts)), out, per_row=cfg.num_images)
    print(f"[fastgen] {len(prompts)} images and {paths[-1].name} written to {out}")
    return images, prompts, paths


@hydra.main(config_path=CONFIG_PATH, config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        validate_config(cfg, train=False, built=not cfg.ckpt)
        generate(cfg)


if __name__ == "__main__":
    sys.exit(main())
