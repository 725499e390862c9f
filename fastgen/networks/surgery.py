"""UNet surgery: a copy of a network with an extra input, its other weights unchanged."""

from __future__ import annotations

import torch
from torch import nn


def add_time_cond_input(unet: nn.Module, dim: int, init_std: float) -> nn.Module:
    """A copy of diffusers-style `unet` (a UNet, or any network with its `time_cond_proj_dim` config key, e.g. the
    points MLP) with `time_cond_proj_dim=dim`: a vector [B, dim] passed as `timestep_cond` adds
    `time_embedding.cond_proj(·)` (a bias-free linear map) to the sinusoidal time features before the time MLP.
    Every other weight is `unet`'s, in its dtype; cond_proj starts at N(0, init_std²/dim) — 0 gives the unchanged
    network for every input (LCM's ω embedding), > 0 an input that matters from the first step (DDGAN's latent z:
    cond_proj(z) then has standard deviation init_std per feature; the sinusoidal features have RMS 0.71)."""
    out = type(unet).from_config(unet.config, time_cond_proj_dim=dim)
    result = out.load_state_dict(unet.state_dict(), strict=False)
    if result.unexpected_keys or set(result.missing_keys) != {"time_embedding.cond_proj.weight"}:
        raise RuntimeError(f"copying the network with a {dim}-d time-conditioning input: missing "
                           f"{result.missing_keys}, unexpected {result.unexpected_keys}")
    if init_std > 0:
        nn.init.normal_(out.time_embedding.cond_proj.weight, std=init_std / dim**0.5)
    else:
        nn.init.zeros_(out.time_embedding.cond_proj.weight)
    if getattr(unet, "is_gradient_checkpointing", False):
        out.enable_gradient_checkpointing()
    dtype = next(unet.parameters()).dtype
    return out if dtype == torch.float32 else out.to(dtype)
