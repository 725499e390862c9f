"""Build a `Backbone` from random init (an architecture name) or from pretrained weights on disk.

Pretrained weights are read with diffusers/transformers `from_pretrained` from a diffusers-layout
directory (`unet/`, `text_encoder/`, optional `vae/`, `tokenizer/`, `scheduler/`) — the layout of
Stable Diffusion v1.5 on the hub, and the one `save_backbone` writes (the committed MNIST teacher).
A hub id is resolved from the local Hugging Face cache only (no downloads; offline flags honoured).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastgen.networks.architectures import ARCHITECTURES, SD15_SCHEDULE
from fastgen.networks.backbone import Backbone
from fastgen.networks.clip_tokenizer import build_clip_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights were asked for and are not on this machine."""


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def _default_cache_dir() -> str:
    return os.environ.get("FASTGEN_CACHE", str(Path.home() / ".cache" / "fastgen"))


SCHEDULE_KEYS = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "rescale_betas_zero_snr")


def _finish(backbone: Backbone, dtype: str, gradient_checkpointing: bool) -> Backbone:
    frozen = _dtype(dtype)
    backbone.text_encoder.to(frozen)
    if backbone.vae is not None:
        backbone.vae.to(frozen)
    if gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    return backbone


def build_random(
    arch: str,
    seed: int = 0,
    dtype: str = "fp32",
    gradient_checkpointing: bool = False,
    cache_dir: str | None = None,
) -> Backbone:
    """A randomly initialised backbone of a named architecture (`sd15`, `tiny_latent`, `mnist_pixel`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ARCHITECTURES:
        raise ValueError(f"model.arch={arch!r} is not one of {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec["unet"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text_encoder"]))
    vae = AutoencoderKL(**spec["vae"]) if spec["vae"] else None
    backbone = Backbone(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(cache_dir or _default_cache_dir()),
        schedule=spec["schedule"],
        prediction_type=spec["prediction_type"],
        vae=vae,
        max_prompt_length=spec["max_prompt_length"],
        name=arch,
    )
    return _finish(backbone, dtype, gradient_checkpointing)


def resolve_pretrained(pretrained: str | os.PathLike | None, config_key: str = "model.pretrained") -> Path:
    """A local directory for `pretrained`: the path itself, or a hub id's snapshot in the local HF cache."""
    if pretrained is None or str(pretrained) in ("", "???"):
        raise MissingWeightsError(f"No pretrained weights configured. Set {config_key}=/path/to/stable-diffusion-v1-5")
    path = Path(os.path.expanduser(str(pretrained)))
    if path.is_dir():
        return path
    looked = [f"local directory {path.resolve()} (does not exist)"]
    if "/" in str(pretrained) and not path.is_absolute() and not str(pretrained).startswith("."):
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE

        try:
            return Path(snapshot_download(str(pretrained), local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            looked.append(f"hub id {pretrained!r} in the local Hugging Face cache {HF_HUB_CACHE} (not found; downloads are off)")
    raise MissingWeightsError(
        "Pretrained weights not found. Looked for:\n  - "
        + "\n  - ".join(looked)
        + f"\nDownload the weights once on a machine with internet access and set {config_key}=/path/to/stable-diffusion-v1-5 "
        "(a diffusers directory with unet/, text_encoder/, vae/ and scheduler/ subfolders)."
    )


def _check_layout(root: Path, require_vae: bool, config_key: str) -> None:
    needed = ["unet/config.json", "text_encoder/config.json"] + (["vae/config.json"] if require_vae else [])
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise MissingWeightsError(
            f"{root} is not a diffusers model directory: missing {', '.join(missing)}. "
            f"Set {config_key} to a directory laid out like stable-diffusion-v1-5 (unet/, text_encoder/, vae/, scheduler/)."
        )


def build_pretrained(
    pretrained: str,
    dtype: str = "fp32",
    gradient_checkpointing: bool = False,
    require_vae: bool = True,
    max_prompt_length: int | None = None,
    cache_dir: str | None = None,
    config_key: str = "model.pretrained",
) -> Backbone:
    """Load a backbone from a diffusers-layout directory or a cached hub id (no network access)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = resolve_pretrained(pretrained, config_key)
    _check_layout(root, require_vae, config_key)
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True) if (root / "vae").is_dir() else None
    if (root / "tokenizer" / "vocab.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
    else:
        tokenizer = build_clip_tokenizer(cache_dir or _default_cache_dir())
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else dict(SD15_SCHEDULE)
    backbone = Backbone(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        schedule={k: sched[k] for k in SCHEDULE_KEYS if k in sched},
        prediction_type=sched.get("prediction_type", "epsilon"),
        vae=vae,
        vae_scaling_factor=vae.config.scaling_factor if vae is not None else 1.0,
        max_prompt_length=max_prompt_length or min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings),
        name=root.name,
    )
    return _finish(backbone, dtype, gradient_checkpointing)


def save_backbone(backbone: Backbone, out_dir: str | os.PathLike, unet: torch.nn.Module | None = None) -> Path:
    """Write `backbone` (optionally with another `unet`, e.g. an EMA copy) in the diffusers layout."""
    from diffusers import DDPMScheduler

    out = Path(out_dir)
    (unet or backbone.unet).save_pretrained(out / "unet")
    backbone.text_encoder.save_pretrained(out / "text_encoder")
    backbone.tokenizer.save_pretrained(out / "tokenizer")
    if backbone.vae is not None:
        backbone.vae.save_pretrained(out / "vae")
    DDPMScheduler(**backbone.schedule, prediction_type=backbone.prediction_type).save_pretrained(out / "scheduler")
    return out
