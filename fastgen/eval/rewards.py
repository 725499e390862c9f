"""Reward models: differentiable scores of generated pixels that a method may train on (TSCD's reward hinge, Hyper-SD
Sec. 3.3). They live with the evaluation's scorers they reuse; a method never builds one (nothing under
fastgen/methods imports fastgen/eval): the entry point that builds the method (`fastgen.build.instantiate_method`) reads
the method config's `reward` spec, builds the reward here and passes it in as `reward_fn`.

A reward is a plain callable, pixels [B, C, H, W] in [-1, 1] and the prompts -> scores [B] (differentiable in the
pixels); not a module, so its frozen weights stay out of the method's checkpoints.

    method.reward: {name: aesthetic, weights: /path/sac+logos+ava1-l14-linearMSE.pth, clip_pretrained: openai}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AestheticReward:
    """Differentiable LAION aesthetic score (fastgen.eval.aesthetic's predictor, the evaluation's aesthetic column).

    `weights`: sac+logos+ava1-l14-linearMSE.pth; `clip_pretrained`: OpenAI ViT-L/14 weights (tag or file)."""

    def __init__(self, weights: str, clip_model: str = "ViT-L-14", clip_pretrained: str | None = None):
        from fastgen.eval.aesthetic import load_aesthetic_scorer

        scorer = load_aesthetic_scorer(weights, clip_model, clip_pretrained)
        if scorer is None:
            raise ValueError(
                "the aesthetic reward needs the LAION predictor and its CLIP: set method.reward.weights="
                "/path/to/sac+logos+ava1-l14-linearMSE.pth and method.reward.clip_pretrained=openai (or a file)"
            )
        self.mlp, self.clip = scorer.mlp.requires_grad_(False), scorer.clip_model

    def __call__(self, pixels: torch.Tensor, prompts=None) -> torch.Tensor:
        from fastgen.eval.open_clip_models import clip_preprocess

        self.mlp.to(pixels.device), self.clip.to(pixels.device)
        x = clip_preprocess((pixels.float().clamp(-1, 1) + 1) * 127.5, self.clip)
        return self.mlp(F.normalize(self.clip.encode_image(x).float(), dim=-1)).squeeze(-1)


REWARDS = {"aesthetic": AestheticReward}


def build_reward(spec: dict):
    """The reward model a method config's `reward` spec names: {name: <one of REWARDS>, **its arguments}."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"method.reward.name={name!r} is not one of {sorted(REWARDS)}")
    try:
        return REWARDS[name](**spec)
    except TypeError as e:  # an argument the reward does not take
        raise ValueError(f"method.reward ({name}): {e}") from None
