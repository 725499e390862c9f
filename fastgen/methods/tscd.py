"""Trajectory Segmented Consistency Distillation — the consistency stage of Hyper-SD (Ren et al., NeurIPS 2024,
arXiv 2404.13686, Sec. 3.1), on top of TCD's DDIM-map parameterisation (Zheng et al. 2024, arXiv 2402.19159).

[0, T] is split into k equal segments and consistency distillation happens *inside* each one: every point is
mapped to the lower boundary t_b of its segment, not to t = 0. Per sample:
    t_n uniform on the DDIM solver grid {19, 39, ..., 999} (skip Δ = T/50 = 20),
    t_b = the lower boundary of t_n's segment,  t_{n−1} = max(t_n − Δ, t_b),
    x_{t_n} ~ q(x_t | x0),  x̂_{t_{n−1}} = DDIM_teacher^CFG(x_{t_n}, t_n → t_{n−1}),
    Φ(x, t → s) = α_s x̂0(x, t) + σ_s ε̂(x, t)                   (the DDIM map with the network's x̂0, ε̂),
    L_consistency = ‖Φ_θ(x_{t_n}, t_n → t_e) − Φ_θ⁻(x̂_{t_{n−1}}, t_{n−1} → t_e)‖²   (MSE),
with t_e = t_b, or t_e ~ U{t_b, ..., t_{n−1}} in the soft variant (`soft_end_time`). Φ(x, s → s) = x, so when the
teacher's step lands on the boundary the target is the teacher's x̂_{t_b} itself (and at t_e = −1 the map is x̂0).
θ⁻ is an EMA of the student (0.95), or the online student under no_grad (`target_ema_decay: null`).

Progressive stages: `segments: [8, 4, 2, 1]` with `stage_kimg` (thousands of images per stage) in one run; each
stage continues from the previous stage's weights; after the last listed stage ends the run stays in it. The
current stage and k are buffers (`stage`, `segments_now`, saved in checkpoints: a resumed run continues in its
stage) and k is logged as `train/segments`. When a stage ends, the sampling network's trained weights (the whole
UNet, or its LoRA) are written beside the checkpoints as `tscd_stage<i>_k<k>.pt` (atomically; a resumed run keeps
the files of the stages it finished, and one resumed from another folder's checkpoint copies them from there).

Evaluation rows (`row_sources`), as Hyper-SD evaluates: N steps with the model of the stage trained for k = N
segments — a finished stage's snapshot, or the current weights for the current stage and for an N no stage reached
— as `tscd`, sampled with `sample_eta`; and the final model (the current weights) at every N as `tscd@final` (its own
leaderboard series), sampled as Hyper-SD samples its unified one-step model at any N: TCD with γ = `final_sample_eta`
(1 by default, the model card's `eta=1.0`). A one-segment model maps every x_t to x̂0 only; a deterministic DDIM step
α_s x̂0 + σ_s ε̂ then re-noises x̂0 with noise tied to x̂0 (at t = T, ε̂ = x_T itself), which is not q(x_s | x̂0),
so its N-step DDIM samples drift off the data as N grows; γ = 1 re-noises with fresh noise.
Periodic evaluations during training do the same with what has finished so far. `python -m fastgen.evaluate
ckpt=...` reads the snapshots beside the checkpoint; a missing one leaves its row out with a warning. The
untrained control `tscd@init` (`control()`) is the teacher with CFG at `teacher_guidance_scale` through this sampler.

Timestep index convention (exact): a timestep index t ∈ [0, T−1] is the point τ = t + 1 ∈ [1, T] of the
trailing grid (whose N-step timesteps are round(T − i·T/N) − 1). Segment boundaries are τ_j = round(j·T/k),
j = 0..k; the segment of t is the j with τ_j < t + 1 ≤ τ_{j+1}, and its boundary timestep is t_b = τ_j − 1, with
t_b = −1 ("clean") for the lowest segment. For T/k an integer this is t_b = floor(t/(T/k))·(T/k) − 1: for k = 8,
t = 999 → 874, t = 874 → 749, t = 124 → −1. So the boundaries are exactly the N = k-step trailing sampling grid,
and a point on a boundary belongs to the segment below it (the sampler's next step starts there).

Optional terms (off by default):
- `adv_weights` (one weight per stage, e.g. rising as k falls): a non-saturating GAN term on Φ_θ(x_{t_n} → t_e)
  against real q(x_{t_e} | x0), judged by the backbone's D (`Backbone.build_discriminator`; for a UNet the teacher
  UNet's encoder, conditioned on t_e and the prompt), trained alongside with its own AdamW (the GAN phases of `gan_phases`); logged
  weighted as `adv` (and `d_real`, `d_fake`).
- `reward` (a reward model's spec, fastgen/eval/models/rewards.py) with `reward_weight`, `reward_t_range`, `reward_margin`:
  Hyper-SD's human-feedback term (Sec. 3.3), ReFL on the student's x̂0 at a timestep in the range
  (fastgen/methods/feedback.py), added to the consistency loss (which stays on); logged as `refl`. x_t is the online
  student's own chain (`reward_source: chain`): this sampler (DDIM, or TCD's γ-step at `sample_eta`) from noise on the
  trailing grid of the current stage's k (the segment boundaries; `reward_chain_steps` sets another N), no_grad, its
  last step from the upper boundary of t's segment landing on t. The DMD stage scores its one-step sample (below),
  which is the one-step chain.

Sampling: DDIM on the trailing grid with N steps (any N ≥ 1; N = k of a stage is what that stage was trained
for), the last step to the clean sample; guidance 0 (one evaluation per step). `sample_eta` = γ > 0 gives TCD's
stochastic step: DDIM to s = floor((1 − γ)·t_next), then forward-noise to t_next (γ = 1: the LCM-style sampler).

Deviations / open choices:
- The teacher's step is clamped at the boundary (t_{n−1} = max(t_n − Δ, t_b)) so it never leaves the segment;
  the 50-step solver grid does not contain the boundaries for k = 8 (multiples of 125).
- Sampling ends at the clean sample (t = −1); diffusers' DDIMScheduler for SD1.5 (`set_alpha_to_one=False`) and
  TCDScheduler end at t = 0 (σ_0 ≈ 0.03).
- Teacher CFG scale `teacher_guidance_scale` 7.5 (SD1.5's default; Hyper-SD does not state it); the
  unconditional branch is the empty prompt. Stage lengths and the adversarial/reward weights are config values.

Hyper-SD's other parts (both off by default):
- `final_stage: dmd` (Sec. 3.3): after the last segment stage, to the end of the run, the student's one-step sample
  x̂0 = G(z, T−1, c) is trained with DMD's distribution-matching loss (`DistributionMatching` of dmd.py: real score =
  the frozen teacher with CFG at `dmd_real_guidance_scale` (1.75, DMD2's SD1.5 value and dmd.py's default: the
  segment stages' 7.5 would over-saturate the matched distribution), fake score = a trained copy of the teacher updated every
  step, the student every `dmd_fake_updates_per_g`-th), + `dmd_mse_weight`·MSE to the teacher's DPM-Solver++ output
  from the same z (`dmd_mse_steps`; DMD's regression — the paper names an MSE term without its target: open choice),
  + the feedback term on that one-step sample when `reward_weight` > 0 (`refl`). Losses `dm`, `mse`, `refl`,
  `fake_denoise`; `segments_now` = 0 there. Its one-step rows are `tscd@dmd`, beside the k = 1 stage's `tscd` row.
  The fake score is a full copy even for a LoRA student.
- `unified_eta: γ`: rows `tscd@unified`, the final model at every N sampled as diffusers' TCDScheduler does with
  eta = γ (`unified_sampling`: its timesteps with the stock original_inference_steps 50, the γ-steps, the last one
  to t = 0), the sampler Hyper-SD ships its unified LoRA with.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from pathlib import Path

import torch

from fastgen.core import (
    append_dims, ddim_step, distribution_matching_loss, g_loss_softplus, lcm_timesteps, mse, q_sample,
    q_step, trailing_timesteps,
)
from fastgen.core.files import save_torch_atomic
from fastgen.methods.gan_phases import adversarial_phase, discriminator_losses
from fastgen.methods.base import FINAL_MODEL, RowSource
from fastgen.methods.feedback import DEFAULT_T_RANGE, RewardFeedback, Student
from fastgen.methods.consistency_distillation import (
    ConsistencyDistillation,
    empty_prompt_cond,
    sampling_noise,
    solver_grid_pairs,
    teacher_solver_step,
)
from fastgen.methods.dmd import DistributionMatching
from fastgen.methods.sharding import whole_network

FINAL_STAGES = ("dmd",)
DMD_STAGE = "@dmd"  # label suffix of the one-step rows of the model after the DMD stage
UNIFIED = "@unified"  # label suffix of the final model's rows sampled as diffusers' TCDScheduler does


def segment_boundary(t: torch.Tensor, k: int, T: int = 1000) -> torch.Tensor:
    """Lower-boundary timestep t_b of the segment of each t among k equal segments of [0, T] (see module doc):
    τ_j = round(j·T/k); t_b = τ_j − 1 for τ_j < t + 1 ≤ τ_{j+1}; −1 (clean) in the lowest segment."""
    tau = torch.tensor([round(j * T / k) for j in range(k + 1)], device=t.device)
    j = torch.bucketize(t + 1, tau, right=False) - 1
    return tau[j] - 1


def load_full_state(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole (unsharded) tensors into some of `network`'s weights, sharded by FSDP or not."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(network, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(network, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    result = network.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"weights not in the network: {result.unexpected_keys[:3]}")


class TSCD(DistributionMatching, ConsistencyDistillation):
    name = "tscd"
    _row_sampler: tuple[float, int, int | None] | None = None  # (γ, last step's end, TCD grid) inside `row_sampler`
    sharded_networks = ("backbone.unet", "target_unet", "discriminator", "fake_unet")

    @property
    def optimizer_steps_per_training_step(self) -> float:
        """The student's step, plus the discriminator's in a stage whose adversarial weight is not zero; in the DMD
        stage a fake-score step every training step and a student step every `dmd_fake_updates_per_g`-th."""
        if self.in_dmd_stage:
            return 1 + 1 / self.hparams.dmd_fake_updates_per_g
        return 2 if self.adv_weights and self.adv_weights[int(self.stage)] else 1

    def __init__(
        self,
        backbone,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        grad_clip: float = 1.0,
        segments: tuple[int, ...] = (8, 4, 2, 1),
        stage_kimg: tuple[float, ...] = (100.0, 100.0, 100.0, 100.0),
        soft_end_time: bool = False,
        teacher_guidance_scale: float = 7.5,
        num_ddim_timesteps: int = 50,
        target_ema_decay: float | None = 0.95,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        adv_weights: tuple[float, ...] | None = None,
        disc_lr: float = 1e-5,
        reward: dict | None = None,
        reward_fn=None,
        reward_weight: float = 0.0,
        reward_t_range: tuple[int, int] = DEFAULT_T_RANGE,
        reward_margin: float | None = None,
        reward_source: str = "chain",
        reward_chain_steps: int | None = None,
        sample_eta: float = 0.0,
        unified_eta: float | None = None,
        final_stage: str | None = None,
        dmd_real_guidance_scale: float = 1.75,
        dmd_fake_updates_per_g: int = 5,
        dmd_lr_fake: float | None = None,
        dmd_mse_weight: float = 0.25,
        dmd_mse_steps: int = 25,
        dmd_min_t_fraction: float = 0.02,
        dmd_max_t_fraction: float = 0.98,
        final_sample_eta: float = 1.0,
        teacher_dtype: str = "fp32",
        export_dir: str | None = None,
    ):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone", "reward_fn"])
        self.automatic_optimization = False
        self.segments, self.stage_ends = self._check_stages(segments, stage_kimg, adv_weights)
        for key, eta in (("sample_eta", sample_eta), ("final_sample_eta", final_sample_eta)):
            if not 0.0 <= eta <= 1.0:
                raise ValueError(f"method.{key} (TCD's gamma) must be in [0, 1], got {eta}")
        if unified_eta is not None and not 0.0 <= unified_eta <= 1.0:
            raise ValueError(f"method.unified_eta (TCD's gamma of the tscd@unified rows) must be null or in [0, 1], got {unified_eta}")
        self._check_final_stage()
        self.feedback = RewardFeedback.from_config(reward, reward_fn, reward_weight, reward_t_range, reward_margin,
                                                   backbone.num_train_timesteps, reward_source, reward_chain_steps,
                                                   "the current stage's k")
        self.adv_weights = list(adv_weights) if adv_weights else None
        if self.adv_weights:
            self.discriminator = backbone.build_discriminator()  # the teacher's encoder, fp32, trainable
        self.fake_unet = None
        if final_stage == "dmd":  # the fake score starts from the teacher (fp32 and without LoRA, whatever the student)
            self.init_fake_score(backbone.unet, dmd_real_guidance_scale, dmd_min_t_fraction, dmd_max_t_fraction)
            self.register_buffer("dmd_steps", torch.zeros((), dtype=torch.long))
        self.init_networks(teacher_guidance_scale, teacher_dtype, lora_rank, lora_alpha, target_ema_decay)
        self.guidance_scale = 0.0
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self.register_buffer("segments_now", torch.tensor(self.segments[0], dtype=torch.long))

    def _check_final_stage(self) -> None:
        hp = self.hparams
        if hp.final_stage not in (None, *FINAL_STAGES):
            raise ValueError(f"method.final_stage={hp.final_stage!r} is not one of {[None, *FINAL_STAGES]} (null: TSCD's "
                             "segment stages only; dmd: Hyper-SD's one-step DMD stage after them)")
        if hp.final_stage is None:
            return
        if hp.dmd_fake_updates_per_g < 1 or hp.dmd_mse_steps < 1:
            raise ValueError("method.dmd_fake_updates_per_g and method.dmd_mse_steps must be positive integers")
        if hp.dmd_mse_weight < 0:
            raise ValueError(f"method.dmd_mse_weight={hp.dmd_mse_weight} must be >= 0 (0 = off)")
        if hp.dmd_real_guidance_scale < 1:
            raise ValueError(f"method.dmd_real_guidance_scale={hp.dmd_real_guidance_scale} must be >= 1 (1 = no CFG)")
        if not 0.0 <= hp.dmd_min_t_fraction <= hp.dmd_max_t_fraction <= 1.0:
            raise ValueError("method.dmd_min_t_fraction and method.dmd_max_t_fraction must satisfy 0 <= min <= max <= 1")

    @staticmethod
    def _check_stages(segments, stage_kimg, adv_weights):
        segments, stage_kimg = [int(k) for k in segments], [float(s) for s in stage_kimg]
        if not segments or any(k < 1 for k in segments):
            raise ValueError(f"method.segments must be a non-empty list of positive integers, e.g. [8, 4, 2, 1]; got {segments}")
        if len(stage_kimg) != len(segments) or any(s <= 0 for s in stage_kimg):
            raise ValueError(f"method.stage_kimg needs one positive length (kimg) per stage of method.segments={segments}; got {stage_kimg}")
        if adv_weights and len(adv_weights) != len(segments):
            raise ValueError(f"method.adv_weights needs one weight per stage of method.segments={segments}; got {list(adv_weights)}")
        return segments, [sum(stage_kimg[: i + 1]) for i in range(len(stage_kimg))]

    # -- stages --------------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """The segment stages, plus the DMD stage after them with `final_stage: dmd`."""
        return len(self.segments) + (self.hparams.final_stage is not None)

    @property
    def in_dmd_stage(self) -> bool:
        return int(self.stage) == len(self.segments)

    def stage_segments(self, stage: int) -> int:
        """k of a segment stage; 0 for the DMD stage (what `segments_now` and `train/segments` hold there)."""
        return self.segments[stage] if stage < len(self.segments) else 0

    def advance_stage(self) -> int:
        """Move to the stage the images seen so far fall in (never back), keeping the weights of each stage that
        ends (`save_stage`); returns the current stage's number of segments k (0 in the DMD stage, which follows the
        last segment stage's end and lasts to the end of the run)."""
        stage = int(self.stage)
        while stage + 1 < self.num_stages and self.kimg >= self.stage_ends[stage]:
            self.save_stage(stage)
            stage += 1
            what = f"k = {self.segments[stage]} segments" if stage < len(self.segments) else "the one-step DMD stage"
            print(f"[fastgen] tscd: stage {stage + 1}/{self.num_stages} at {self.kimg:g} kimg, {what}")
        self.stage.fill_(stage)
        self.segments_now.fill_(self.stage_segments(stage))
        return self.stage_segments(stage)

    # -- stage snapshots: the weights each finished stage ended with --------------------------------------
    def stage_file(self, stage: int) -> str:
        return f"tscd_stage{stage + 1}_k{self.segments[stage]}.pt"

    @property
    def stage_dir(self) -> Path | None:
        """Where stage snapshots live: beside the checkpoint the method was loaded from, else the run's checkpoint
        folder (the trainer's ModelCheckpoint); None without either."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        return Path(callback.dirpath) if callback is not None and callback.dirpath else None

    def trained_names(self) -> set[str]:
        """State-dict names of the sampling network that training changes (the whole UNet, or its LoRA)."""
        return {name for name, p in self.backbone.unet.named_parameters() if p.requires_grad}

    def save_stage(self, stage: int) -> None:
        """Write the sampling network's trained weights as they are at the end of `stage` to
        `<stage_dir>/tscd_stage<i>_k<k>.pt` (atomically; collective under FSDP, rank 0 writes)."""
        network = whole_network(self.sampling_unet)
        if network is None or (self._trainer is not None and not self.trainer.is_global_zero):
            return
        if self.stage_dir is None:
            warnings.warn(f"tscd: no checkpoint folder (callbacks.checkpoint), so stage {stage + 1}'s weights "
                          f"(k = {self.segments[stage]}) are not kept: its rows will be left out", stacklevel=2)
            return
        trained = self.trained_names()
        state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k in trained}
        save_torch_atomic({"stage": stage, "segments": self.segments[stage], "kimg": self.kimg, "state_dict": state},
                          self.stage_dir / self.stage_file(stage))

    def read_stage(self, stage: int) -> dict[str, torch.Tensor]:
        """The state dict of a stage snapshot, read strictly: a ValueError in one line if it is not that stage's."""
        path = self.stage_dir / self.stage_file(stage)
        try:
            snapshot = torch.load(path, map_location="cpu", weights_only=True)
            ok = snapshot["segments"] == self.segments[stage] and set(snapshot["state_dict"]) == self.trained_names()
        except Exception as e:  # truncated file, not a snapshot
            raise ValueError(f"{path}: not a readable TSCD stage snapshot ({type(e).__name__}); delete it and "
                             "resume the run from a checkpoint before that stage ended") from None
        if not ok:
            raise ValueError(f"{path} holds other weights than stage {stage + 1} (k = {self.segments[stage]}) of this "
                             "TSCD configuration (method.segments or method.lora_rank changed?)")
        return snapshot["state_dict"]

    @contextlib.contextmanager
    def stage_weights(self, stage: int):
        """The sampling network holds `stage`'s snapshot inside the block, its own weights again after it."""
        network, snapshot = self.sampling_unet, self.read_stage(stage)
        current = {k: v.detach().clone() for k, v in network.state_dict().items() if k in snapshot}
        load_full_state(network, snapshot)
        try:
            yield
        finally:
            network.load_state_dict(current, strict=False)

    def on_fit_start(self) -> None:
        """A run resumed from a checkpoint outside its checkpoint folder copies the finished stages' snapshots
        from beside that checkpoint; a finished stage without one is named in a warning."""
        directory, ckpt = self.stage_dir, self.trainer.ckpt_path
        if directory is None or not self.trainer.is_global_zero:
            return
        for stage in range(int(self.stage)):
            target = directory / self.stage_file(stage)
            source = Path(ckpt).parent / target.name if ckpt else None
            if not target.is_file() and source is not None and source.is_file():
                save_torch_atomic(torch.load(source, map_location="cpu", weights_only=True), target)
            if not target.is_file():
                warnings.warn(f"tscd: stage {stage + 1} (k = {self.segments[stage]}) ended before this checkpoint "
                              f"but {target} is missing: its rows will be left out", stacklevel=2)

    def finished_stage(self, steps: int) -> int | None:
        """The last finished segment stage trained for `steps` (k = steps), unless the current stage is: None then."""
        if self.stage_segments(int(self.stage)) == steps:
            return None
        return max((i for i in range(int(self.stage)) if self.segments[i] == steps), default=None)

    def row_sources(self, steps: int) -> list[RowSource]:
        """Hyper-SD's protocol: N steps from the stage trained with k = N segments, and the final model (the
        current weights) at every N as `tscd@final`, sampled with TCD's γ = `final_sample_eta` (last step to the clean
        sample). A finished stage's rows come from its snapshot; the current
        stage's, and those of an N that no stage reached, from the current weights. So a periodic evaluation during
        training scores the finished stages' snapshots and the current model. In the DMD stage its one-step rows are
        `tscd@dmd` (the k = 1 stage's stay `tscd`). With `unified_eta` the final model at every N sampled as diffusers'
        TCDScheduler does (`unified_sampling`) is `tscd@unified`. An untrained method, or its control, has its own
        rows only; a one-stage configuration no `@final` rows (they would be its own)."""
        if self.control_guidance is not None or int(self.images_seen) == 0:
            return [RowSource(("",))]
        unified = [RowSource((UNIFIED,), self.unified_sampling, f"TCD eta={self.hparams.unified_eta:g}")] \
            if self.hparams.unified_eta is not None else []
        current = (FINAL_MODEL,) if self.num_stages > 1 else ()
        if self.in_dmd_stage and steps == 1:
            current = (DMD_STAGE, *current)
        stage = self.finished_stage(steps)
        final = [RowSource(current, self.final_model_sampler)] if current else []
        if stage is None:  # the current weights under both labels: one set of samples unless the samplers differ
            same = steps == 1 or self.hparams.final_sample_eta == self.hparams.sample_eta
            return [RowSource(("", *current)), *unified] if same else [RowSource(("",)), *final, *unified]
        name = self.stage_file(stage)
        if self.stage_dir is None or not (self.stage_dir / name).is_file():
            warnings.warn(f"tscd: the weights of stage {stage + 1} (k = {steps}, {name}) are missing from "
                          f"{self.stage_dir or 'the checkpoint folder'}: its {steps}-step row is left out "
                          f"(`tscd{FINAL_MODEL}` has the final model's)", stacklevel=2)
            return [*final, *unified]
        return [RowSource(("",), functools.partial(self.stage_weights, stage), name), *final, *unified]

    @contextlib.contextmanager
    def row_sampler(self, eta: float, end: int, original_steps: int | None = None):
        """Inside the block `sample` takes TCD's γ-steps with γ = `eta` and its last step to `end` (−1: the clean
        sample; 0: t = 0, as diffusers' TCDScheduler), on the trailing grid or, with `original_steps`, on
        TCDScheduler's: N of the `original_steps`-point solver grid (its `original_inference_steps`)."""
        self._row_sampler = (float(eta), end, original_steps)
        try:
            yield
        finally:
            self._row_sampler = None

    def unified_sampling(self):
        """diffusers' TCDScheduler with eta = `unified_eta` (the unified model's sampler, Hyper-SD): TCD's γ-steps on
        its timesteps (original_inference_steps = `num_ddim_timesteps`, 50: the stock scheduler Hyper-SD's card
        loads, and the solver grid TSCD trains on; 4 steps: [999, 759, 499, 259]), the last one to t = 0 (not to
        the clean sample)."""
        return self.row_sampler(self.hparams.unified_eta, 0, self.hparams.num_ddim_timesteps)

    def final_model_sampler(self):
        """TCD's γ = `final_sample_eta`, the last step to the clean sample (the final model's rows)."""
        return self.row_sampler(self.hparams.final_sample_eta, -1)

    # -- the DDIM map with a network's prediction ----------------------------------------------------
    def ddim_map(self, unet, x_t, t, s, cond):
        """Φ(x_t, t → s) = α_s x̂0 + σ_s ε̂ (and x̂0)."""
        x0_hat, eps_hat = self.backbone.denoise(unet, x_t, t, cond)
        return ddim_step(x0_hat, eps_hat, s, self.backbone.alphas_cumprod), x0_hat

    def consistency_pair(self, x0, noise, t_n, cond, uncond, k):
        """(student Φ_θ(x_{t_n}, t_n → t_e) with its x̂0, target Φ_θ⁻(x̂_{t_{n−1}}, t_{n−1} → t_e), t_e) for k segments."""
        bb, hp = self.backbone, self.hparams
        t_b = segment_boundary(t_n, k, bb.num_train_timesteps)
        t_prev = torch.maximum(t_n - bb.num_train_timesteps // hp.num_ddim_timesteps, t_b)
        t_end = t_b
        if hp.soft_end_time:  # uniform on {t_b, ..., t_{n−1}}
            t_end = t_b + (torch.rand(t_b.shape, device=t_b.device) * (t_prev - t_b + 1)).long().clamp(max=t_prev - t_b)
        x_t = q_sample(x0, t_n, noise, bb.alphas_cumprod)
        student, x0_hat = self.ddim_map(bb.unet, x_t, t_n, t_end, cond)
        with torch.no_grad():
            x_prev = teacher_solver_step(bb, self.teacher_unet, x_t, t_n, t_prev, cond, uncond, hp.teacher_guidance_scale)
            mapped, _ = self.ddim_map(self.sampling_unet, x_prev, t_prev.clamp(min=0), t_end, cond)
            at_end = append_dims(t_prev == t_end, x0.ndim)  # Φ(x, s → s) = x; also covers t_{n−1} = −1
            target = torch.where(at_end, x_prev, mapped)
        return student, x0_hat, target, t_end

    # -- training ------------------------------------------------------------------------------------
    def named_optimizers(self) -> dict:
        """The student's optimizer `g`, the discriminator's `d` (adversarial term) and the fake score's `fake` (DMD stage)."""
        opts = self.optimizers()
        opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
        names = ["g"] + (["d"] if self.adv_weights else []) + (["fake"] if self.fake_unet is not None else [])
        return dict(zip(names, opts))

    def training_step(self, batch, batch_idx):
        bb, hp = self.backbone, self.hparams
        opts = self.named_optimizers()
        opt_g, opt_d = opts["g"], opts.get("d")
        # 1. the current stage's k; data, prompt and empty-prompt embeddings
        k = self.advance_stage()
        x0 = bb.batch_to_x0(batch).float()
        cond = bb.batch_to_cond(batch)
        uncond = empty_prompt_cond(bb, cond)
        if self.in_dmd_stage:  # Hyper-SD's one-step stage instead of the consistency step
            losses = self.dmd_training_step(x0, cond, uncond, batch.get("prompt"), opts)
            self.count_images(x0.shape[0])
            self.log_losses(losses, x0.shape[0])
            self.log("train/segments", 0.0, on_step=True, on_epoch=False, batch_size=x0.shape[0])
            return
        # 2. generator phase: t_n on the solver grid, student and target mapped to its segment boundary (teacher's
        #    DDIM step between), the consistency loss, the optional adversarial and reward terms; then the EMA target
        adv_weight = self.adv_weights[int(self.stage)] if self.adv_weights else 0.0
        boundary = {}
        losses = adversarial_phase(self, opt_g, lambda: self.g_losses(x0, cond, uncond, batch.get("prompt"), k, adv_weight, boundary),
                                   hp.grad_clip)
        self.lr_schedulers().step()
        self.update_target()
        # 3. discriminator phase: real q(x_{t_e} | x0) against the (detached) student sample at the boundary t_e
        if adv_weight:
            real = q_sample(x0, boundary["t_end"], torch.randn_like(x0), bb.alphas_cumprod)
            t_d = boundary["t_end"].clamp(min=0)
            losses |= adversarial_phase(self, opt_d, lambda: discriminator_losses(self.discriminator, real, boundary["student"], t_d, cond))
        self.count_images(x0.shape[0])
        self.log_losses(losses, x0.shape[0])
        self.log("train/segments", float(k), on_step=True, on_epoch=False, batch_size=x0.shape[0])

    def g_losses(self, x0, cond, uncond, prompts, k: int, adv_weight: float, boundary: dict) -> dict[str, torch.Tensor]:
        """The student's named terms: `consistency` ‖Φ_θ(x_{t_n} → t_e) − Φ_target(x̂_{t_{n−1}} → t_e)‖², `adv`
        (weighted non-saturating GAN term on the student's boundary sample) and `refl`; the boundary sample and t_e
        are left in `boundary` for the discriminator phase."""
        bb = self.backbone
        t_n, _ = solver_grid_pairs(x0.shape[0], bb.num_train_timesteps, self.hparams.num_ddim_timesteps, x0.device)
        student, _, target, t_end = self.consistency_pair(x0, torch.randn_like(x0), t_n, cond, uncond, k)
        boundary.update(student=student.detach(), t_end=t_end)
        losses = {"consistency": mse(student, target)}
        if adv_weight:
            losses["adv"] = adv_weight * g_loss_softplus(self.discriminator(student, t_end.clamp(min=0), cond))
        self.feedback.add(losses, bb, x0, cond, prompts, self.reward_student(k))
        return losses

    def reward_student(self, k: int) -> Student:
        """The online student for feedback: its x̂0, its chain this sampler (DDIM, or TCD's γ-step at `sample_eta`) on
        the trailing grid of `reward_chain_steps` steps, or of the stage's k (null): the k segments' boundaries, so the
        chain's last step starts at the upper boundary of t's segment."""
        bb, eta = self.backbone, self.hparams.sample_eta
        grid = trailing_timesteps(self.feedback.chain_steps or k, bb.num_train_timesteps).tolist()

        def step(x, t, s, cond):  # as `sample`: DDIM to floor((1 − γ)·s), then forward noise to s
            x0_hat, eps_hat = bb.denoise(bb.unet, x, t, cond)
            inner = ((1 - eta) * s).floor().long() if eta > 0 else s
            x_inner = ddim_step(x0_hat, eps_hat, inner, bb.alphas_cumprod)
            return q_step(x_inner, inner, s, torch.randn_like(x_inner), bb.alphas_cumprod) if eta > 0 else x_inner

        return Student(lambda x, t, c: bb.denoise(bb.unet, x, t, c)[0], grid, step)

    # -- the DMD stage (Hyper-SD Sec. 3.3): DMD on the one-step student, + MSE to the teacher, + feedback ----------
    def dmd_generator_losses(self, x0_gen, z, cond, uncond, prompts) -> dict[str, torch.Tensor]:
        """`dm` (the distribution-matching loss, DMD eqs. 7–8), `mse` (dmd_mse_weight·‖x̂0 − the teacher's ODE output
        from z‖², DMD's regression) and `refl` (the feedback term on the one-step sample), each weighted."""
        hp = self.hparams
        losses = {"dm": distribution_matching_loss(x0_gen, self.dm_gradient(x0_gen.detach(), cond, uncond))}
        if hp.dmd_mse_weight:
            losses["mse"] = hp.dmd_mse_weight * mse(x0_gen, self.regression_target(z, prompts, hp.dmd_mse_steps))
        if self.feedback:
            losses["refl"] = self.feedback.loss(self.backbone, x0_gen, prompts)
        return losses

    def dmd_training_step(self, x0, cond, uncond, prompts, opts) -> dict[str, torch.Tensor]:
        """One DMD-stage step, DMD2's two time scales: the student's one-step samples x̂0 = G(z, T−1, c); every
        `dmd_fake_updates_per_g`-th step a student update on them (fake score frozen; then the EMA target), and every
        step a fake-score update (`fake_denoise`) on the same samples, detached (student frozen)."""
        bb, hp = self.backbone, self.hparams
        generator_turn = int(self.dmd_steps) % hp.dmd_fake_updates_per_g == 0
        z = torch.randn_like(x0)
        t = torch.full((x0.shape[0],), bb.num_train_timesteps - 1, dtype=torch.long, device=x0.device)
        with torch.set_grad_enabled(generator_turn):
            x0_gen = bb.denoise(bb.unet, z, t, cond)[0]  # the one-step sample (DDIM from T − 1 to the clean sample)
        losses = {}
        if generator_turn:
            losses.update(adversarial_phase(self, opts["g"], lambda: self.dmd_generator_losses(x0_gen, z, cond, uncond, prompts),
                                            hp.grad_clip))
            self.lr_schedulers().step()
            self.update_target()
        losses.update(adversarial_phase(self, opts["fake"], lambda: {"fake_denoise": self.fake_denoise_loss(x0_gen, cond)},
                                        hp.grad_clip))
        self.dmd_steps += 1
        return losses

    def configure_optimizers(self):
        """The student's AdamW with warm-up; the discriminator's (adversarial term) and the fake score's (DMD stage)."""
        hp = self.hparams
        student = super().configure_optimizers()
        if not self.adv_weights and self.fake_unet is None:
            return student
        opts = [student["optimizer"]]
        if self.adv_weights:
            opts.append(torch.optim.AdamW(self.discriminator.parameters(), lr=hp.disc_lr, betas=tuple(hp.betas)))
        if self.fake_unet is not None:
            opts.append(torch.optim.AdamW(self.fake_unet.parameters(), lr=hp.dmd_lr_fake or hp.lr, betas=tuple(hp.betas),
                                          weight_decay=hp.weight_decay))
        return opts, [student["lr_scheduler"]]

    def on_train_end(self):
        if self.hparams.final_stage is not None and not self.in_dmd_stage:
            warnings.warn(f"tscd: the run ended at {self.kimg:g} kimg, before the {self.hparams.final_stage} stage "
                          f"(it starts after sum(method.stage_kimg) = {self.stage_ends[-1]:g} kimg): raise "
                          "trainer.max_kimg", stacklevel=2)
        super().on_train_end()  # the sampling network to export_dir (a LoRA: diffusers' load_lora_weights format)
        export_dir = self.hparams.export_dir
        if export_dir and self.lora and self.hparams.unified_eta is not None and self.trainer.is_global_zero:
            from fastgen.generation.export import write_unified_recipe

            write_unified_recipe(self, Path(export_dir))  # + the TCDScheduler and call of the tscd@unified rows

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None, t_start=None):
        """DDIM on the trailing grid (last step to the clean sample); TCD's γ-step when γ > 0 (`sample_eta`, or
        another γ and end inside `row_sampler`: `final_model_sampler`, `unified_sampling`); from
        `t_start` for image-to-image. Under `control()` the same steps with the teacher's CFG x̂0, ε̂ at
        `teacher_guidance_scale`."""
        bb = self.backbone
        eta, end, original_steps = (self.hparams.sample_eta, -1, None) if self._row_sampler is None else self._row_sampler
        start = bb.num_train_timesteps - 1 if t_start is None else t_start
        timesteps = (trailing_timesteps(steps, start + 1) if original_steps is None else
                     lcm_timesteps(steps, bb.num_train_timesteps, original_steps, start=t_start)).tolist()
        cond = bb.encode_prompts(prompts)
        x = noise.float()
        for i, (t, t_next) in enumerate(zip(timesteps, timesteps[1:] + [end])):
            stochastic = eta > 0 and i + 1 < len(timesteps)
            s = math.floor((1 - eta) * t_next) if stochastic else t_next
            x0_hat, eps_hat = self.sampling_denoise(x, torch.full((x.shape[0],), t, device=x.device), cond)
            x = ddim_step(x0_hat, eps_hat, s, bb.alphas_cumprod)
            if stochastic:
                x = q_step(x, s, t_next, sampling_noise(x, generator), bb.alphas_cumprod)
        return x
