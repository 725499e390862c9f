"""`FewStepMethod`: the small contract every fastgen method implements.

A method is a LightningModule that owns a `Backbone` and offers one sampling call,
`sample(noise, prompts, steps, generator) -> x0` in model space, which is all the evaluation uses. Besides it, a
method declares what the rest of fastgen reads about it (the evaluation's baseline, FSDP, the tests), each in one
place — class attributes, or `__init__` where they depend on the config:

    name, supported_steps, guidance_scale    its leaderboard name, the step counts it samples, its sampling CFG scale
    teacher_unet, teacher_guidance_scale     its frozen teacher (None: none; set both with `set_teacher`) and the
                                             CFG scale the DPM-Solver++ baseline samples that teacher at
    optimizer_steps_per_training_step        optimizer steps one training step makes (Lightning's `global_step`
                                             counts each: a D and a G update count two)
    sharded_networks                         the networks FSDP shards: attribute paths of what trains, and its EMA
    discriminator                            None, or `self.backbone.build_discriminator(joint)`: the backbone
                                             decides the architecture, so no method names a network class

The base class adds only what every method shares: training length in images seen (kimg, EDM-style — with
manual optimisation Lightning's `global_step` counts every optimizer step), frozen copies (`frozen_copy`: the
teacher, EMA copies), and checkpoints that hold tensors and primitives only, without the frozen parts (text
encoder, VAE, teacher).
"""

from __future__ import annotations

import abc
import contextlib
import copy
from typing import Callable, ContextManager, NamedTuple

import lightning as L
import torch
from torch import nn

from fastgen.core import ema_update_, strength_timestep

FROZEN_PREFIXES = ("backbone.text_encoder.", "backbone.vae.", "teacher_unet.")
FINAL_MODEL = "@final"  # label suffix of a method's final-weights rows where its own rows come from other weights


class RowSource(NamedTuple):
    """The weights some of the evaluation's rows at one step count sample with (`FewStepMethod.row_sources`)."""

    suffixes: tuple[str, ...]  # one row per suffix, labelled <method label><suffix> ("": the method's own rows)
    weights: Callable[[], ContextManager] = contextlib.nullcontext  # entered around the sampling
    note: str = ""  # which weights, when not the current ones: appended to the rows' `checkpoint` as " [note]"


def frozen_copy(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A deep copy of `module` with gradients off and in eval mode (cast to `dtype` when given): a frozen teacher, or
    an EMA copy (which `FewStepMethod.update_ema` moves in place)."""
    copied = copy.deepcopy(module).requires_grad_(False).eval()
    if dtype is not None and any(p.dtype != dtype for p in copied.parameters()):
        copied = copied.to(dtype)
    return copied


class TrainingDiverged(ValueError):
    """A loss became NaN or infinite: the run stops with the step, the losses and what to change."""


class FewStepMethod(L.LightningModule):
    # -- the declared contract (see the module docstring); a method overrides what differs ---------------------------
    name: str = "method"
    supported_steps: tuple[int, ...] | None = None  # None: any number of steps
    guidance_scale: float = 0.0  # the CFG scale `sample` uses (`nfe` counts a guided step twice)
    teacher_guidance_scale: float | None = None  # the CFG scale of the baseline on `teacher_unet` (set_teacher)
    optimizer_steps_per_training_step: float = 1  # a property where it depends on the config or the stage
    sharded_networks: tuple[str, ...] = ()  # attribute paths, e.g. ("backbone.unet", "ema_unet", "discriminator")

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.teacher_unet: nn.Module | None = None  # frozen, never checkpointed; the baseline's teacher
        self.discriminator: nn.Module | None = None  # self.backbone.build_discriminator(joint), for adversarial methods
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.long))
        self.run_config: dict | None = None  # the resolved experiment config, set by fastgen.fit
        self._sharded = False

    def set_teacher(self, unet: nn.Module, guidance_scale: float, dtype: torch.dtype | None = None) -> None:
        """Keep a frozen copy of `unet` as the teacher (training reads it as `teacher_unet`; the evaluation puts the
        DPM-Solver++ baseline on it, with CFG at `guidance_scale`)."""
        self.teacher_unet = frozen_copy(unet, dtype)
        self.teacher_guidance_scale = guidance_scale

    # -- the contract the evaluation uses -------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, noise: torch.Tensor, prompts: list[str], steps: int,
               generator: list[torch.Generator] | torch.Generator | None = None):
        """Generate x0 (model space) from Gaussian `noise` [B, C, H, W] conditioned on `prompts` in `steps` steps.

        Every further random draw of a stochastic sampler (re-noising, latent z, posterior or SDE noise) comes
        from `generator` through `fastgen.core.randn_per_sample`: with a list of B generators, one per sample,
        sample b depends on `noise[b]`, `prompts[b]` and `generator[b]` only, not on the batch it is in (the
        evaluation passes one per sample, seeded from its index); one generator draws for the whole batch;
        None draws from the global RNG."""

    def control(self) -> "FewStepMethod":
        """The like-for-like untrained control (rows `<method>@init`): the untrained method, sampled its own way
        with the guidance its trained samples embody. Here the method itself, for methods trained on data without
        CFG (their samples embody the conditional model, guidance 1: no CFG); a method that distils a guided
        teacher returns a view that samples with that guidance (ConsistencyDistillation.control)."""
        return self

    def row_sources(self, steps: int) -> list[RowSource]:
        """The weights the evaluation's `steps`-step rows sample with: by default the current weights, for the
        method's own rows. A method whose protocol evaluates a step count with other weights (TSCD: the stage
        trained for it) returns those, and its final weights under `FINAL_MODEL`."""
        return [RowSource(("",))]

    checkpoint_dir = None  # the folder of the checkpoint the method was loaded from (method_from_checkpoint)

    def start_time(self, strength: float) -> int:
        """Image-to-image: the grid time `strength` selects, where `sample(..., t_start=)` begins (−1: none, the input is
        returned). Default round(strength·T) − 1; a sampler with a coarser time grid snaps down onto it. Every
        `sample` takes `t_start` (None: T − 1, text-to-image) and spaces its `steps` steps from there."""
        return strength_timestep(strength, self.backbone.num_train_timesteps)

    def nfe(self, steps: int) -> int:
        """Network evaluations for `steps` steps (classifier-free guidance counts twice)."""
        return steps * (2 if self.guidance_scale > 1.0 else 1)

    def check_steps(self, steps: int) -> None:
        if self.supported_steps is not None and steps not in self.supported_steps:
            raise ValueError(f"{self.name} samples with {self.supported_steps} steps only (trained for them), got {steps}")

    # -- training length in images -------------------------------------------------------------------
    @property
    def kimg(self) -> float:
        return self.images_seen.item() / 1000.0

    def count_images(self, batch_size: int) -> None:
        """Add this step's global batch (all ranks) to the images seen; log kimg on the progress bar."""
        world = self.trainer.world_size if self._trainer is not None else 1
        self.images_seen += batch_size * world
        self.log("kimg", self.kimg, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)

    def log_losses(self, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log a named loss dict as `train/<key>` (current values on the progress bar); a non-finite loss stops the
        run (check_finite) before this step's checkpoint or evaluation can keep its weights."""
        values = {k: v.detach().float() for k, v in losses.items()}
        self.check_finite(values)
        self.log_dict({f"train/{k}": v for k, v in values.items()}, prog_bar=True, batch_size=batch_size)

    def check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Raise TrainingDiverged naming the step, the non-finite losses and the learning rates to lower."""
        if torch.isfinite(torch.stack([v.reshape(()) for v in losses.values()])).all():
            return
        bad = ", ".join(f"train/{k}={v.item()}" for k, v in losses.items() if not torch.isfinite(v))
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped if self._trainer is not None else "?"
        rates = " / ".join(f"method.{k}={v}" for k, v in self.hparams.items() if k == "lr" or k.startswith("lr_"))
        raise TrainingDiverged(
            f"training diverged at step {step} ({self.kimg:g} kimg): {bad}. Lower the learning rate"
            f"{f' ({rates})' if rates else ''}; no checkpoint or evaluation of this step is written"
        )

    # -- EMA of the generator only -------------------------------------------------------------------
    @staticmethod
    def make_ema(module: nn.Module) -> nn.Module:
        return frozen_copy(module)

    @staticmethod
    def update_ema(ema: nn.Module, online: nn.Module, decay: float) -> None:
        """ema ← decay·ema + (1 − decay)·online over the parameters `online` trains (all of them, or its LoRA
        adapters); `ema` is a deep copy of `online` (sharded the same way under FSDP)."""
        pairs = [(e, o) for e, o in zip(ema.parameters(), online.parameters()) if o.requires_grad]
        ema_update_([e for e, _ in pairs], [o for _, o in pairs], decay)

    # -- FSDP: shard the networks that train, and their EMA copies ------------------------------------------
    def networks_to_shard(self) -> list[nn.Module]:
        """The modules `sharded_networks` names; a declared network the configuration left out is None and skipped
        (e.g. `target_unet` of LCM-LoRA, TSCD's `discriminator` without the adversarial term). A path that names
        no attribute is an error in the method's declaration."""
        networks = []
        for path in self.sharded_networks:
            network = self
            for part in path.split("."):
                try:
                    network = getattr(network, part)
                except AttributeError:
                    raise AttributeError(f"{type(self).__name__}.sharded_networks names {path!r}, which it does not "
                                         "have") from None
                if network is None:
                    break
            if network is not None:
                networks.append(network)
        return networks

    def configure_model(self) -> None:
        """Under `trainer.strategy=fsdp` (fastgen.runtime.lightning_plugins.FSDP2Strategy, which sets `device_mesh`), shard every
        network in `sharded_networks` across the data-parallel ranks (`fastgen.methods.sharding`); frozen parts
        (teacher, text encoder, VAE) stay whole on every rank. A no-op under every other strategy."""
        if self.device_mesh is None or self._sharded:
            return
        from torch.distributed.tensor import DTensor

        from fastgen.methods.sharding import check_shardable, shard_network

        check_shardable(self.hparams)
        for network in self.networks_to_shard():
            shard_network(network, self.device_mesh["data_parallel"])
        self._sharded = True
        unsharded = [name for name, p in self.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
        if unsharded:  # its gradients would not be averaged across ranks
            raise RuntimeError(f"{type(self).__name__} trains parameters outside its sharded_networks "
                               f"{self.sharded_networks}: {unsharded[:3]}")

    # -- checkpoints: tensors and primitives, no frozen parts -----------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        for key in [k for k in sd if k.startswith(FROZEN_PREFIXES)]:
            del sd[key]
        if self.run_config is not None:
            checkpoint["fastgen_config"] = self.run_config

    def check_checkpoint_keys(self, keys: set[str]) -> None:
        """Raise when a checkpoint's state_dict keys do not match this method's (frozen parts are never saved)."""
        expected = set(self.state_dict())
        missing = sorted(k for k in expected - keys if not k.startswith(FROZEN_PREFIXES))
        unexpected = sorted(keys - expected)
        if missing or unexpected:
            raise RuntimeError(f"Checkpoint does not match {type(self).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if strict:
            self.check_checkpoint_keys(set(state_dict))
        return super().load_state_dict(state_dict, strict=False, assign=assign)
