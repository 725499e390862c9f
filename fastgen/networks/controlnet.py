"""ControlNet (Zhang, Rao, Agrawala, ICCV 2023, arXiv 2302.05543) for every fastgen method's UNet.

`attach_controlnet(method, controlnet, control)` registers a forward pre-hook on every diffusers
`UNet2DConditionModel` inside the method: each UNet call (every sampling step, every method, CFG batches
included) first runs the ControlNet on the same (x_t, t, text) and the control image, and the UNet adds its
residuals (`down_block_additional_residuals`, `mid_block_additional_residual`), exactly as diffusers'
`StableDiffusionControlNetPipeline` feeds them. The method files are untouched. A generator with its own
`timestep_cond` input (LCM's ω, DDGAN's z) passes it to the ControlNet only when the ControlNet has that input too
(a ControlNet trained on the teacher has none, as ControlNets used with LCM-LoRA).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn


def unets_of(module: nn.Module) -> list[nn.Module]:
    """Every diffusers UNet2DConditionModel inside `module` (the sampling network is one of them)."""
    from diffusers import UNet2DConditionModel

    return [m for m in module.modules() if isinstance(m, UNet2DConditionModel)]


def controlnet_for(unet: nn.Module, conditioning_channels: int = 3, downsample: int | None = None, from_unet: bool = True):
    """A diffusers ControlNetModel for `unet` (its encoder's weights when `from_unet`, zero convolutions out), whose
    control image comes at `downsample` times the UNet's resolution (the VAE factor: 8 for SD, 1 in pixel space)."""
    from diffusers import ControlNetModel

    factor = downsample or 1
    levels = factor.bit_length() - 1
    if 2**levels != factor:
        raise ValueError(f"the control image's downsampling factor must be a power of 2, got {factor}")
    channels = tuple(16 * 2**i for i in range(levels + 1))
    kwargs = dict(conditioning_channels=conditioning_channels, conditioning_embedding_out_channels=channels)
    controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False, **kwargs)
    if from_unet:  # as diffusers' from_unet, but a UNet with a `timestep_cond` input (LCM's ω) leaves it out
        weights = {k: v for k, v in unet.state_dict().items() if not k.startswith("time_embedding.cond_proj.")}
        missing = controlnet.load_state_dict(weights, strict=False).missing_keys
        if any(not k.startswith("controlnet_") for k in missing):  # only its own cond embedding and zero convs are new
            raise RuntimeError(f"the ControlNet's encoder does not match the UNet's: missing {missing[:5]}")
    return controlnet


def load_controlnet(path, device=None):
    """A diffusers ControlNetModel folder (`ControlNetModel.from_pretrained(path)`), or one line naming `controlnet`."""
    from diffusers import ControlNetModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"controlnet={path} is not a diffusers ControlNetModel folder (no config.json)")
    model = ControlNetModel.from_pretrained(path, local_files_only=True)
    return model.to(device).eval().requires_grad_(False) if device is not None else model.eval().requires_grad_(False)


def control_residuals(controlnet, control: torch.Tensor, sample, timestep, encoder_hidden_states, scale=1.0,
                      timestep_cond=None):
    """(down residuals, mid residual) of `controlnet` at (sample, timestep, text) for control pixels in [0, 1]; the
    control image [1 or B', C, H, W] is repeated to the sample's batch (CFG doubles it)."""
    n = sample.shape[0]
    if control.shape[0] != n:
        if n % control.shape[0]:
            raise ValueError(f"control images: {control.shape[0]} for a batch of {n}")
        control = control.repeat(n // control.shape[0], 1, 1, 1)
    dtype = next(controlnet.parameters()).dtype
    kwargs = {}
    if timestep_cond is not None and getattr(controlnet.time_embedding, "cond_proj", None) is not None:
        kwargs["timestep_cond"] = timestep_cond.to(dtype)
    down, mid = controlnet(sample.to(dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(dtype),
                           controlnet_cond=control.to(sample.device, dtype), conditioning_scale=scale,
                           return_dict=False, **kwargs)
    return down, mid


@contextlib.contextmanager
def attach_controlnet(method: nn.Module, controlnet, control: torch.Tensor, scale: float = 1.0):
    """Within the block, every UNet2DConditionModel of `method` adds `controlnet`'s residuals for `control` (pixels in
    [0, 1], [1 or B, C, H, W] at the image resolution the ControlNet expects) at `scale`."""
    unets = unets_of(method)
    if not unets:
        raise ValueError(f"controlnet= needs a UNet2DConditionModel generator; {type(method).__name__}'s backbone has none")

    def add_residuals(unet, args, kwargs):
        if kwargs.get("down_block_additional_residuals") is not None:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        down, mid = control_residuals(controlnet, control, sample, timestep, kwargs["encoder_hidden_states"], scale,
                                      kwargs.get("timestep_cond"))
        unet_dtype = next(unet.parameters()).dtype
        kwargs = dict(kwargs, down_block_additional_residuals=[d.to(unet_dtype) for d in down],
                      mid_block_additional_residual=mid.to(unet_dtype))
        return args, kwargs

    handles = [unet.register_forward_pre_hook(add_residuals, with_kwargs=True) for unet in unets]
    try:
        yield method
    finally:
        for handle in handles:
            handle.remove()
