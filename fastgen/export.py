"""`python -m fastgen.export ckpt=PATH out=DIR [format=pipeline|unet|lora|controlnet]`: a trained model as
diffusers loads it.

Write a trained method's sampling network for diffusers: a StableDiffusionPipeline folder whose scheduler
reproduces the method's sampler (fastgen/generation/export.py says which, and `fastgen_export.json` the call
arguments), the UNet alone (`UNet2DConditionModel.from_pretrained(DIR)`), or its LoRA
(`pipe.load_lora_weights(DIR)`); `row=@unified`: a pipeline of TSCD's unified model (TCDScheduler); for a
`method.controlnet` run, its ControlNet (`ControlNetModel.from_pretrained(DIR)`).
"""

import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from fastgen.runtime.config import CONFIG_PATH, register_resolvers, user_errors, validate_config

register_resolvers()


def export(cfg):
    from fastgen.evaluate import build_method
    from fastgen.generation.export import FORMATS, export_method

    if OmegaConf.is_missing(cfg, "out"):
        raise ValueError("out is not set (out=DIR)")
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} is not one of {list(FORMATS)}")
    method = build_method(cfg, torch.device(cfg.device))[0]
    path = export_method(method, cfg.out, cfg.format, cfg.get("row"))
    print(f"[fastgen] {method.name} exported as {cfg.format} to {path}")
    return path


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        validate_config(cfg, train=False, built=not cfg.ckpt)
        export(cfg)


if __name__ == "__main__":
    sys.exit(main())
