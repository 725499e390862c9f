"""Reward feedback learning (ReFL) as one extra term of any student's loss: ImageReward's ReFL (Xu et al., NeurIPS
2023, arXiv 2304.05977, Sec. 4.1, Alg. 1) as Hyper-SD uses it on its consistency students (Ren et al., NeurIPS 2024,
arXiv 2404.13686, Sec. 3.3).

A reward model r(image, prompt) scores the student's x̂0 predicted at a late timestep t of its own sampling chain,
where ImageReward finds the reward of x̂0 reliable (ReFL, Alg. 1: sample x_T → x_t without gradient, then one
gradient step predicting x̂0 from x_t); the student descends

    L_refl = weight · mean φ(r(decode(x̂0_θ(x_t, t, c)), c)),   t ~ U{t_min, ..., t_max},
    x_t = the student's sampler from x_{T−1} ~ N(0, I) stopped at t (no_grad),
    φ(r) = −r (`margin` null)  or  relu(margin − r) (ImageReward's ReFL hinge: margin 2 for ImageReward scores),

added to the method's own loss, which stays on: the consistency / diffusion / reconstruction term is the
regulariser against reward hacking (ImageReward's ReFL alternates with the pre-training loss for the same reason).

The chain. A few-step student samples on its own N-step grid τ_0 = T−1 > τ_1 > ... > τ_{N−1} (`Student.grid`, the
method's `sample()` grid) with its own step rule (`Student.step`: UFOGen and LCM re-noise x̂0 to the next time with
fresh noise, TSCD takes its DDIM / TCD γ-step). x_t is that chain stopped at t: the grid's steps down to the last grid
point above t, whose step lands on t instead of the next grid point (a t on the grid is the sampler's own state there).
It starts from x_{T−1} ~ N(0, I), as every fastgen sampler does: exactly q(x_{T−1}) on a zero-terminal-SNR schedule,
the usual approximation on SD's `scaled_linear`. The chain runs the online student (the network the gradient step
trains), every step under no_grad; only the last prediction carries gradient.

Default t range: [1, 226]. ImageReward's ReFL (THUDM/ImageReward, ImageReward/ReFL.py and ReFL_SDXL.py) samples 40
DDPM steps on SD1.5's scheduler (`leading` spacing, steps_offset 1: timesteps 976, 951, ..., 26, 1) and predicts x̂0
at step `random.randint(30, 39)`, i.e. t ∈ {226, 201, ..., 1}: the last quarter of the schedule, near the clean end.
(ReFL.py passes that step's index itself to the UNet as its timestep; ReFL_SDXL.py passes timesteps[index]: the
latter is the intent mirrored here.) Timesteps are indices of the backbone's schedule, as diffusers'.

`source: data` (`reward_source`) is the cheaper variant kept as an option: x_t ~ q(x_t | x0) noises the batch's real
data to t, so no sampling steps are spent (one prediction instead of up to N + 1 evaluations), and at t = T − 1 on a
zero-terminal-SNR schedule it is the chain. It is not ReFL: at small t the student mostly denoises training images,
so the reward sees the data, not the student's samples. It is useful as the ablation that shows what scoring the
student's own chain buys, and where the chain's extra evaluations are too costly.

A method holds one `RewardFeedback` (built from its config by `RewardFeedback.from_config`) and adds the term with
one line in the phase that trains its generator, passing how its student predicts x̂0 and samples (`Student`):

    loss = loss + self.feedback.add(losses, self.backbone, x0, cond, prompts, Student(<x̂0 fn>, <grid>, <step>))

`add` writes the weighted term into `losses` as `refl` and returns it; with weight 0 it returns 0 and draws no
random numbers, so a method without feedback trains bit for bit as before. A stage that already holds the student's
x̂0 (TSCD's one-step DMD stage: its sample from pure noise, the one-step chain) takes the term on it with
`loss(backbone, x0_hat, prompts)`. The reward model is never a module of the method (its frozen weights stay out of
checkpoints): the entry point builds it from `method.reward` and passes it in as `reward_fn`
(fastgen.runtime.build.instantiate_method), since nothing under fastgen/methods imports fastgen/eval.

Config keys (every method that offers feedback): `reward` (the reward model's spec, {name: ..., weights: ...}),
`reward_weight`, `reward_t_range` ([t_min, t_max] timestep indices), `reward_margin` (null: −r), `reward_source`
(chain | data), `reward_chain_steps` (N of the chain's grid; each method's doc says its default).

Deviations / open choices:
- t is drawn per sample, uniformly over the integers of the range (ImageReward: one of 10 grid steps per batch).
- A few-step student's chain is its N-step grid, not a 40-step one; its last step lands on t off the grid.
- Only the last prediction carries gradient (ReFL's single-step gradient), never a multi-step chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fastgen.core import q_sample

SOURCES = ("chain", "data")
DEFAULT_T_RANGE = (1, 226)  # ImageReward's ReFL: the last 10 of 40 DDPM steps on SD1.5's schedule (module doc)

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decode_with_grad(backbone, x0: torch.Tensor) -> torch.Tensor:
    """Model space -> pixels in [-1, 1], differentiable (Backbone.decode runs under no_grad)."""
    if backbone.vae is None:
        return x0
    return backbone.vae.decode((x0 / backbone.vae_scaling_factor).to(backbone.vae.dtype)).sample.float()


@dataclass
class Student:
    """How a method's student predicts and samples: `predict_x0(x, t, c)` its x̂0 (with grad when enabled), `grid`
    its sampler's descending timesteps (grid[0] = T − 1), `step(x, t, s, c)` its sampler's step from t to s (tensors
    [B]); None: re-noise the prediction, x_s ~ q(x_s | x̂0(x, t)) with fresh noise (UFOGen's and LCM's sampler).
    `times`: the only timesteps its x̂0 is defined at (a generator trained on a few levels, DDGAN's), or None (any)."""

    predict_x0: Predict
    grid: list[int] | torch.Tensor
    step: Callable | None = None
    times: list[int] | None = None

    def step_to(self, x, t, s, cond, acp):
        if self.step is not None:
            return self.step(x, t, s, cond)
        return q_sample(self.predict_x0(x, t, cond), s, torch.randn_like(x), acp)


@torch.no_grad()
def sample_chain(student: Student, x_start: torch.Tensor, t: torch.Tensor, cond, acp) -> torch.Tensor:
    """x_t of the student's sampling chain from `x_start` at grid[0], stopped at t (per sample): the grid's steps
    τ_i → max(τ_{i+1}, t) while τ_i > t (τ_N = −1), so the last one lands on t; samples already at t keep their x."""
    grid = [int(g) for g in student.grid]
    x = x_start
    for i, tau in enumerate(grid):
        moving = t < tau
        if not moving.any():
            break
        nxt = grid[i + 1] if i + 1 < len(grid) else -1
        s = t.clamp(min=nxt)
        stepped = student.step_to(x, torch.full_like(t, tau), s, cond, acp)
        x = torch.where(moving.view(-1, *[1] * (x.ndim - 1)), stepped.to(x.dtype), x)
    return x


class RewardFeedback:
    """The ReFL term of one method (see module doc); `weight` 0 switches it off."""

    def __init__(self, reward_fn=None, weight: float = 0.0, t_range=DEFAULT_T_RANGE, margin: float | None = None,
                 source: str = "chain", chain_steps: int | None = None):
        self.reward_fn, self.weight, self.margin, self.source = reward_fn, float(weight), margin, source
        self.t_min, self.t_max = (int(t) for t in t_range)
        self.chain_steps = chain_steps

    @classmethod
    def from_config(cls, reward, reward_fn, weight, t_range, margin, num_train_timesteps: int, source: str = "chain",
                    chain_steps: int | None = None, chain_steps_default: str | None = None) -> "RewardFeedback":
        """The feedback a method config asks for, each inconsistency one line naming the key to set;
        `chain_steps_default` names what a null `reward_chain_steps` means for the method (None: it must be set)."""
        if reward is not None and reward_fn is None:
            raise ValueError(f"method.reward={reward} asks for a reward model that was not passed in: build the method "
                             "with fastgen.runtime.build.instantiate_method (as fastgen.fit and fastgen.evaluate do)")
        if weight and reward_fn is None:
            raise ValueError("method.reward_weight > 0 needs a reward model: set method.reward (e.g. {name: digit} "
                             "on MNIST, {name: imagereward, weights: /path/ImageReward.pt, ...}; fastgen/eval/models/rewards.py)")
        if weight < 0:
            raise ValueError(f"method.reward_weight={weight} must be >= 0 (the reward is maximised)")
        t_range = list(t_range)
        if len(t_range) != 2 or not 0 <= t_range[0] <= t_range[1] < num_train_timesteps:
            raise ValueError(f"method.reward_t_range={t_range} must be [t_min, t_max] with 0 <= t_min <= t_max <= "
                             f"{num_train_timesteps - 1} (timestep indices of the backbone's schedule)")
        if source not in SOURCES:
            raise ValueError(f"method.reward_source={source!r} is not one of {list(SOURCES)} (chain: x_t from the "
                             "student's own sampler, ImageReward's ReFL; data: the batch noised to t)")
        if chain_steps is None and chain_steps_default is None or chain_steps is not None and not (
                isinstance(chain_steps, int) and 1 <= chain_steps <= num_train_timesteps):
            null = f" or null ({chain_steps_default})" if chain_steps_default else ""
            raise ValueError(f"method.reward_chain_steps={chain_steps} must be a step count in [1, {num_train_timesteps}]"
                             f"{null}: the N-step sampler grid whose chain reaches the scored x_t")
        return cls(reward_fn, weight, t_range, margin, source, chain_steps)

    def __bool__(self) -> bool:
        return self.weight > 0

    def x_t(self, backbone, x0: torch.Tensor, t: torch.Tensor, cond, student: Student) -> torch.Tensor:
        """The x_t that is scored: the student's chain stopped at t (`chain`), or q(x_t | x0) of the batch (`data`)."""
        if self.source == "data":
            return q_sample(x0, t, torch.randn_like(x0), backbone.alphas_cumprod)
        x_start = torch.randn(x0.shape, device=x0.device)  # x_{T−1} ~ N(0, I), as the samplers start
        return sample_chain(student, x_start, t, cond, backbone.alphas_cumprod)

    def scored_times(self, student: Student) -> torch.Tensor | None:
        """The student's `times` inside [t_min, t_max] (None: every integer of the range)."""
        if student.times is None:
            return None
        return torch.tensor([t for t in student.times if self.t_min <= t <= self.t_max], dtype=torch.long)

    def scores(self, backbone, x0: torch.Tensor, cond: torch.Tensor, prompts, student: Student) -> torch.Tensor:
        """r(decode(x̂0_θ(x_t, t, c)), c) per sample [B], differentiable in the student through its last prediction
        only: t ~ U{t_min..t_max} (or over the student's `times` in that range), x_t from `x_t` (x0 gives the
        batch's shape and device; `data` also noises it)."""
        times = self.scored_times(student)
        if times is None:
            t = torch.randint(self.t_min, self.t_max + 1, (x0.shape[0],), device=x0.device)
        else:
            t = times.to(x0.device)[torch.randint(0, len(times), (x0.shape[0],), device=x0.device)]
        x0_hat = student.predict_x0(self.x_t(backbone, x0, t, cond, student), t, cond)
        return self.reward_fn(decode_with_grad(backbone, x0_hat), prompts)

    def objective(self, r: torch.Tensor) -> torch.Tensor:
        """weight · mean φ(r) of reward scores [B]."""
        r = r.float()
        return self.weight * (-r if self.margin is None else F.relu(self.margin - r)).mean()

    def loss(self, backbone, x0_hat: torch.Tensor, prompts) -> torch.Tensor:
        """The term on a given student x̂0 (model space), decoded with its graph."""
        return self.objective(self.reward_fn(decode_with_grad(backbone, x0_hat), prompts))

    def add(self, losses: dict, backbone, x0, cond, prompts, student: Student) -> torch.Tensor | float:
        """Write weight·mean φ(r) into `losses["refl"]` and return it; 0 (nothing drawn, nothing written) when off."""
        if not self:
            return 0.0
        losses["refl"] = self.objective(self.scores(backbone, x0, cond, prompts, student))
        return losses["refl"]
