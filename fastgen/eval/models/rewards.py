"""Reward models: differentiable scores of generated pixels, shared by training (reward feedback, ReFL:
fastgen/methods/feedback.py) and the evaluation (one leaderboard column each, `eval.rewards.<name>`).

    name         column          files (config keys under method.reward / eval.rewards.<name>)
    aesthetic    aesthetic_score weights (sac+logos+ava1-l14-linearMSE.pth), clip_pretrained (OpenAI ViT-L/14)
    digit        digit_reward    weights (null: the shipped MNIST digit classifier): log p(prompted digit | image)
    imagereward  imagereward     weights (ImageReward.pt), med_config (med_config.json), tokenizer (bert-base-uncased)
    hpsv2        hpsv2           weights (HPS_v2.1_compressed.pt, or HPS_v2_compressed.pt with version: v2.0)
    pickscore    pickscore       model (PickScore_v1), processor (CLIP-ViT-H-14-laion2B-s32B-b79K)

Each file is a path or, where the model has a hub id, found in the local Hugging Face cache (no downloads); a missing
one is one line naming the file and the key. A method never builds a reward (nothing under fastgen/methods imports
fastgen/eval): the entry point that builds the method (`fastgen.runtime.build.instantiate_method`) reads the method config's
`reward` spec, builds the reward here and passes it in as `reward_fn`.

A reward is a plain callable, pixels [B, C, H, W] in [-1, 1] and the prompts -> scores [B] (differentiable in the
pixels); not a module, so its frozen weights stay out of the method's checkpoints. `weights_sha256` fingerprints it.

    method.reward: {name: imagereward, weights: /path/ImageReward.pt, med_config: /path/med_config.json, tokenizer: /path/bert-base-uncased}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgen.eval.models.assets import sha256_file


class AestheticReward:
    """Differentiable LAION aesthetic score (fastgen.eval.models.aesthetic's predictor, the evaluation's aesthetic column).

    `weights`: sac+logos+ava1-l14-linearMSE.pth; `clip_pretrained`: OpenAI ViT-L/14 weights (tag or file)."""

    def __init__(self, weights: str, clip_model: str = "ViT-L-14", clip_pretrained: str | None = None):
        from fastgen.eval.models.aesthetic import load_aesthetic_scorer

        scorer = load_aesthetic_scorer(weights, clip_model, clip_pretrained)
        if scorer is None:
            raise ValueError(
                "the aesthetic reward needs the LAION predictor and its CLIP: set method.reward.weights="
                "/path/to/sac+logos+ava1-l14-linearMSE.pth and method.reward.clip_pretrained=openai (or a file)"
            )
        self.mlp, self.clip = scorer.mlp.requires_grad_(False), scorer.clip_model
        self.weights_sha256 = scorer.weights_sha256

    def __call__(self, pixels: torch.Tensor, prompts=None) -> torch.Tensor:
        from fastgen.eval.models.open_clip import clip_preprocess

        self.mlp.to(pixels.device), self.clip.to(pixels.device)
        x = clip_preprocess((pixels.float().clamp(-1, 1) + 1) * 127.5, self.clip)
        return self.mlp(F.normalize(self.clip.encode_image(x).float(), dim=-1)).squeeze(-1)


class DigitReward:
    """MNIST's prompt-faithfulness reward: log p(prompted digit | image) under the shipped digit classifier
    (fastgen.eval.models.digit_classifier, the evaluation's prompt-accuracy network), differentiable in the pixels.

    `weights`: a classifier safetensors file (null: the shipped one). Pixels are made grayscale and resized to the
    classifier's 32x32 as `uint8_to_classifier_input` does, without the uint8 rounding."""

    column = "digit_reward"

    def __init__(self, weights: str | None = None):
        from fastgen.eval.models.digit_classifier import load_classifier

        try:
            self.model = load_classifier(weights).requires_grad_(False)
        except FileNotFoundError:
            raise ValueError(f"the digit reward's classifier weights {weights} do not exist: set method.reward.weights "
                             "(or eval.rewards.digit.weights) to a file, or null for the shipped classifier") from None
        self.weights_sha256 = sha256_file(self.model.weights_path)

    def __call__(self, pixels: torch.Tensor, prompts) -> torch.Tensor:
        from fastgen.data.mnist import label_from_prompt
        from fastgen.eval.models.digit_classifier import INPUT_SIZE

        if prompts is None:
            raise ValueError("the digit reward scores each image against the digit its prompt names: the batch has no prompts")
        self.model.to(pixels.device)
        x = pixels.float().clamp(-1, 1).mean(dim=1, keepdim=True)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        labels = torch.tensor([label_from_prompt(p) for p in prompts], device=pixels.device)
        return self.model(x).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)


def _imagereward(**kw):
    from fastgen.eval.models.imagereward import ImageRewardScorer

    return ImageRewardScorer(**kw)


def _hpsv2(**kw):
    from fastgen.eval.models.clip_preference import HPSv2Reward

    return HPSv2Reward(**kw)


def _pickscore(**kw):
    from fastgen.eval.models.clip_preference import PickScoreReward

    return PickScoreReward(**kw)


REWARDS = {"aesthetic": AestheticReward, "digit": DigitReward, "imagereward": _imagereward, "hpsv2": _hpsv2,
           "pickscore": _pickscore}
COLUMNS = {"aesthetic": "aesthetic_score", "digit": "digit_reward", "imagereward": "imagereward", "hpsv2": "hpsv2",
           "pickscore": "pickscore"}
TAKES_KEY_PREFIX = ("imagereward", "hpsv2", "pickscore")


def build_reward(spec: dict, key_prefix: str = "method.reward"):
    """The reward model a spec names: {name: <one of REWARDS>, **its arguments}; errors name keys under `key_prefix`."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"{key_prefix}.name={name!r} is not one of {sorted(REWARDS)}")
    if name in TAKES_KEY_PREFIX:
        spec["key_prefix"] = key_prefix
    try:
        return REWARDS[name](**spec)
    except TypeError as e:  # an argument the reward does not take
        raise ValueError(f"{key_prefix} ({name}): {str(e).replace('__init__() ', '')}") from None
