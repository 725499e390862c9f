"""LoRA on a diffusers-style UNet with peft, and the files a trained network is written as.

- `add_lora`: freeze the UNet and add a trainable adapter (B = 0 at init, so the network is unchanged) on the
  named modules: `LCM_LORA_TARGETS` (diffusers' LCM-LoRA script: attention, feed-forward, resnet convs and
  time-embedding projections; LCM-LoRA, TSCD) or `ATTENTION_TARGETS` (the attention projections; UFOGen).
- `save_lora`: the adapter in the file `StableDiffusionPipeline.load_lora_weights` reads.
- `export_unet`: a fully trained UNet as a diffusers folder.
Both writes land atomically (a temporary folder renamed into place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn

from fastgen.core.files import atomic_path

# diffusers examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py: attention projections,
# feed-forward, resnet convs and shortcuts, down/upsampler convs and the resnets' time-embedding projection.
LCM_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]
ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def add_lora(unet: nn.Module, rank: int, alpha: float | None, targets: list[str], init: bool | str = True) -> nn.Module:
    """Freeze `unet` and add a peft LoRA adapter of `rank` (alpha defaults to the rank) on the modules named
    `targets`; only it trains. `init`: peft's `init_lora_weights` (True: Kaiming A; "gaussian": N(0, 1/rank) A);
    B = 0 either way."""
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"method.lora_rank must be a positive integer (or null for full training), got {rank!r}")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=init))
    return unet


def save_lora(unet: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write the UNet's LoRA as `out_dir/pytorch_lora_weights.safetensors` for
    `StableDiffusionPipeline.load_lora_weights(out_dir)`, in peft's key format with its rank and alpha as metadata
    (diffusers 0.42 drops the attention layers of a `convert_state_dict_to_diffusers` file on loading); the file
    appears atomically."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    out = Path(out_dir)
    with atomic_path(out / LORA_WEIGHTS_FILE) as tmp:  # diffusers writes the file into a folder: take it from there
        folder = tmp.with_name(tmp.name + ".d")
        try:
            StableDiffusionPipeline.save_lora_weights(
                folder, unet_lora_layers=get_peft_model_state_dict(unet),
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(), safe_serialization=True,
            )
            os.replace(folder / LORA_WEIGHTS_FILE, tmp)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def export_unet(unet: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write a fully trained UNet as a diffusers folder (`UNet2DConditionModel.from_pretrained(out_dir)`),
    into a temporary folder first and then renamed into place."""
    with atomic_path(out_dir) as tmp:
        unet.save_pretrained(tmp)
    return Path(out_dir)
