"""Training a ControlNet (Zhang, Rao, Agrawala, ICCV 2023, arXiv 2302.05543) with a method's own objective.

`method.controlnet: {...}` (built by `fastgen.runtime.build.instantiate_method`) turns any method into "its objective, with
the generator frozen and a ControlNet trained": every generator network the method declares (`sharded_networks`
without its critics: the online UNet and its EMA / target copy) becomes a `ControlledUNet` — the frozen UNet plus a
ControlNet whose residuals it adds at every call, for the batch's control image. The method's code is unchanged: its
optimiser over the generator's trainable parameters now holds the ControlNet's only, its EMA update moves the
copy's ControlNet, and its critics (a discriminator) train as before, against the controlled generator.

    teacher (experiment=diffusion + controlnet)   the usual way: the diffusion loss on the frozen teacher
    UFOGen (generator_ckpt=its trained weights)   UFOGen's "with fine-tuning" case (arXiv 2311.09257, Sec. 5.3):
                                                  the diffusion-GAN loss, D trained, the one-step generator frozen
    LCM (teacher_controlnet=DIR)                  consistency distillation from the teacher + its ControlNet (a
                                                  controlled teacher: an uncontrolled one's ODE ignores the control)

Spec keys: `generator_ckpt` (a trained checkpoint of this method, loaded before freezing; null: the backbone's
weights), `init` (null: the generator's encoder, `ControlNetModel.from_unet`; or a ControlNetModel folder to start
from), `conditioning_channels`, `teacher_controlnet` (a ControlNetModel folder, frozen, on `teacher_unet`).
The control image comes from the batch (`batch["control"]`, e.g. `data.control=mask`) through `ControlFromBatch`,
which also writes the sampling copy's ControlNet to `<run>/controlnet` at the end (`controlnet=DIR` in
`fastgen.generate`, diffusers' `StableDiffusionControlNetPipeline`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch import nn

from fastgen.core.files import atomic_path
from fastgen.networks.controlnet import control_residuals, controlnet_for, load_controlnet

SPEC_KEYS = ("generator_ckpt", "init", "conditioning_channels", "teacher_controlnet")
CRITICS = ("discriminator",)


class ControlledUNet(nn.Module):
    """A frozen diffusers UNet and a ControlNet: each call adds the ControlNet's residuals for `self.control` (pixels in
    [0, 1], [1 or B, C, H, W]), as `StableDiffusionControlNetPipeline` does. `unet` first: its dtype is the network's."""

    def __init__(self, unet: nn.Module, controlnet: nn.Module):
        super().__init__()
        self.unet = unet.requires_grad_(False)
        self.controlnet = controlnet
        self.control: torch.Tensor | None = None

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, **kwargs):
        if self.control is None:
            raise RuntimeError("a ControlNet-trained method needs a control image for this call: training takes it from "
                               "the batch (data.control=mask|edges); to sample, use <run>/controlnet with controlnet=DIR")
        down, mid = control_residuals(self.controlnet, self.control, sample, timestep, encoder_hidden_states,
                                      timestep_cond=timestep_cond)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid, **kwargs)


def generator_paths(method) -> list[str]:
    """The attribute paths of the method's generator networks: its `sharded_networks` without critics or absent ones
    (UFOGen: backbone.unet, ema_unet; LCM: backbone.unet, target_unet). The last one is the copy it samples with."""
    paths = [p for p in method.sharded_networks if p.split(".")[-1] not in CRITICS]
    return [p for p in paths if _get(method, p) is not None]


def _get(module, path):
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def _set(module, path, value):
    *parents, leaf = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, leaf, value)


def load_generator(method, ckpt) -> None:
    """Load a trained checkpoint of this method (its state dict, strictly) into `method`: the generator to freeze;
    its training counters start again at 0 (`trainer.max_kimg` budgets the ControlNet's own images)."""
    from fastgen.core.files import read_checkpoint_header

    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"method.controlnet.generator_ckpt={ckpt} does not exist")
    state = read_checkpoint_header(ckpt, "method.controlnet.generator_ckpt")["state_dict"]
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"method.controlnet.generator_ckpt={ckpt} is not a checkpoint of this method and model: "
                         f"{str(e).splitlines()[0]}") from None
    for counter in ("images_seen", "train_steps"):  # the generator's history: the ControlNet's run counts its own
        if hasattr(method, counter):
            getattr(method, counter).zero_()


def add_controlnet(method, generator_ckpt=None, init=None, conditioning_channels: int = 1, teacher_controlnet=None,
                   load_weights: bool = True):
    """Freeze the method's generator networks and wrap each in a `ControlledUNet` (module doc); returns the method.
    `load_weights=False` (a rebuild whose checkpoint holds every weight) skips `generator_ckpt`, `init` and
    `teacher_controlnet` files, building the ControlNet's architecture only."""
    if method.hparams.get("export_dir"):
        raise ValueError("method.controlnet trains a ControlNet, written to <run>/controlnet: set method.export_dir=null")
    if method.hparams.get("lora_rank"):
        raise ValueError("method.controlnet freezes the whole generator: set method.lora_rank to its no-LoRA value")
    if load_weights and generator_ckpt is not None:
        load_generator(method, generator_ckpt)
    paths = generator_paths(method)
    if not paths:
        raise ValueError(f"method.controlnet: {type(method).__name__} declares no generator network (sharded_networks)")
    bb = method.backbone
    sampling = _get(method, paths[-1])
    if load_weights and init is not None:
        controlnet = load_controlnet(init).train().requires_grad_(True)
    else:
        controlnet = controlnet_for(sampling, conditioning_channels, bb.image_shape[1] // bb.sample_shape[1],
                                    from_unet=load_weights)
    for i, path in enumerate(paths):  # the online network's ControlNet trains; its copies' follow (EMA) or are frozen
        net = controlnet if i == 0 else copy.deepcopy(controlnet).requires_grad_(False).eval()
        _set(method, path, ControlledUNet(_get(method, path), net))
    if load_weights and teacher_controlnet is not None:
        if method.teacher_unet is None:
            raise ValueError(f"method.controlnet.teacher_controlnet: {type(method).__name__} has no teacher")
        method.teacher_unet = ControlledUNet(method.teacher_unet, load_controlnet(teacher_controlnet))
    return method


def controlled_networks(module: nn.Module) -> list[ControlledUNet]:
    return [m for m in module.modules() if isinstance(m, ControlledUNet)]


def sampling_controlnet(method) -> nn.Module:
    """The ControlNet of the copy the method samples with (its EMA / target, else the online one)."""
    return _get(method, generator_paths(method)[-1]).controlnet


def save_controlnet(controlnet: nn.Module, out_dir) -> Path:
    """`ControlNetModel.save_pretrained` into a temporary folder, then renamed onto `out_dir` (never half-written)."""
    with atomic_path(out_dir) as tmp:
        controlnet.save_pretrained(tmp)
    return Path(out_dir)


class ControlFromBatch(L.Callback):
    """Hands each training batch's `control` to the method's ControlledUNets (cleared after the batch), and writes the
    sampling copy's ControlNet to `out_dir` when training ends."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)

    def _set(self, pl_module, control):
        for net in controlled_networks(pl_module):
            net.control = control

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch.get("control") is None:
            raise ValueError("method.controlnet trains on control images, but the batches hold none: set data.control "
                             "(mask or edges on MNIST)")
        self._set(pl_module, batch["control"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._set(pl_module, None)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            path = save_controlnet(sampling_controlnet(pl_module), self.out_dir)
            print(f"[fastgen] ControlNet written to {path} (controlnet={path} in fastgen.generate)")
