"""Reward feedback learning (ReFL) as one extra term of any student's loss: ImageReward's ReFL (Xu et al., NeurIPS
2023, arXiv 2304.05977, Sec. 4.1, Alg. 1) as Hyper-SD uses it on its consistency students (Ren et al., NeurIPS 2024,
arXiv 2404.13686, Sec. 3.3).

A reward model r(image, prompt) scores the student's one-step prediction x̂0 at a late (partly denoised) timestep,
where ImageReward finds the reward of x̂0 reliable; the student descends

    L_refl = weight · mean φ(r(decode(x̂0_θ(x_t, t, c)), c)),   t ~ U{t_min, ..., t_max},  x_t ~ q(x_t | x0),
    φ(r) = −r (`margin` null)  or  relu(margin − r) (ImageReward's ReFL hinge: margin 2 for ImageReward scores),

added to the method's own loss, which stays on: the consistency / diffusion / reconstruction term is the
regulariser against reward hacking (ImageReward's ReFL alternates with the pre-training loss for the same reason).

A method holds one `RewardFeedback` (built from its config by `RewardFeedback.from_config`) and adds the term with
one line in the phase that trains its generator, passing how its student predicts x̂0:

    loss = loss + self.feedback.add(losses, self.backbone, x0, cond, prompts, lambda x, t, c: <student x̂0>)

`add` writes the weighted term into `losses` as `refl` and returns it; with weight 0 it returns 0 and draws no
random numbers, so a method without feedback trains bit for bit as before. A stage that already holds the student's
x̂0 (TSCD's one-step DMD stage: its sample from pure noise) takes the term on it with `loss(backbone, x0_hat, prompts)`. The reward model is never a module of
the method (its frozen weights stay out of checkpoints): the entry point builds it from `method.reward` and passes
it in as `reward_fn` (fastgen.build.instantiate_method), since nothing under fastgen/methods imports fastgen/eval.

Config keys (every method that offers feedback): `reward` (the reward model's spec, {name: ..., weights: ...}),
`reward_weight`, `reward_t_range` ([t_min, t_max] timestep indices), `reward_margin` (null: −r).

Deviations / open choices:
- x_t is the batch's data noised to t (q(x_t | x0)), not reached by sampling from noise without gradient as in
  ImageReward's ReFL: the marginal at t is the same and no sampling steps are spent. A few-step student is scored
  where it samples: a range reaching T − 1 trains its one-step prediction from pure noise.
- Only the last prediction carries gradient (ReFL's single-step gradient), never a multi-step chain.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fastgen.core import q_sample


def decode_with_grad(backbone, x0: torch.Tensor) -> torch.Tensor:
    """Model space -> pixels in [-1, 1], differentiable (Backbone.decode runs under no_grad)."""
    if backbone.vae is None:
        return x0
    return backbone.vae.decode((x0 / backbone.vae_scaling_factor).to(backbone.vae.dtype)).sample.float()


class RewardFeedback:
    """The ReFL term of one method (see module doc); `weight` 0 switches it off."""

    def __init__(self, reward_fn=None, weight: float = 0.0, t_range=(0, 999), margin: float | None = None):
        self.reward_fn, self.weight, self.margin = reward_fn, float(weight), margin
        self.t_min, self.t_max = (int(t) for t in t_range)

    @classmethod
    def from_config(cls, reward, reward_fn, weight, t_range, margin, num_train_timesteps: int) -> "RewardFeedback":
        """The feedback a method config asks for, each inconsistency one line naming the key to set."""
        if reward is not None and reward_fn is None:
            raise ValueError(f"method.reward={reward} asks for a reward model that was not passed in: build the method "
                             "with fastgen.build.instantiate_method (as fastgen.fit and fastgen.evaluate do)")
        if weight and reward_fn is None:
            raise ValueError("method.reward_weight > 0 needs a reward model: set method.reward (e.g. {name: digit} "
                             "on MNIST, {name: imagereward, weights: /path/ImageReward.pt, ...}; fastgen/eval/rewards.py)")
        if weight < 0:
            raise ValueError(f"method.reward_weight={weight} must be >= 0 (the reward is maximised)")
        t_range = list(t_range)
        if len(t_range) != 2 or not 0 <= t_range[0] <= t_range[1] < num_train_timesteps:
            raise ValueError(f"method.reward_t_range={t_range} must be [t_min, t_max] with 0 <= t_min <= t_max <= "
                             f"{num_train_timesteps - 1} (timestep indices of the backbone's schedule)")
        return cls(reward_fn, weight, t_range, margin)

    def __bool__(self) -> bool:
        return self.weight > 0

    def scores(self, backbone, x0: torch.Tensor, cond: torch.Tensor, prompts,
               predict_x0: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """r(decode(x̂0_θ(x_t, t, c)), c) per sample [B], differentiable in the student: t ~ U{t_min..t_max},
        x_t ~ q(x_t | x0) with fresh noise."""
        t = torch.randint(self.t_min, self.t_max + 1, (x0.shape[0],), device=x0.device)
        x_t = q_sample(x0, t, torch.randn_like(x0), backbone.alphas_cumprod)
        x0_hat = predict_x0(x_t, t, cond)
        return self.reward_fn(decode_with_grad(backbone, x0_hat), prompts)

    def objective(self, r: torch.Tensor) -> torch.Tensor:
        """weight · mean φ(r) of reward scores [B]."""
        r = r.float()
        return self.weight * (-r if self.margin is None else F.relu(self.margin - r)).mean()

    def loss(self, backbone, x0_hat: torch.Tensor, prompts) -> torch.Tensor:
        """The term on a given student x̂0 (model space), decoded with its graph."""
        return self.objective(self.reward_fn(decode_with_grad(backbone, x0_hat), prompts))

    def add(self, losses: dict, backbone, x0, cond, prompts, predict_x0) -> torch.Tensor | float:
        """Write weight·mean φ(r) into `losses["refl"]` and return it; 0 (nothing drawn, nothing written) when off."""
        if not self:
            return 0.0
        losses["refl"] = self.objective(self.scores(backbone, x0, cond, prompts, predict_x0))
        return losses["refl"]
