"""`MetricSuite`: the metrics one evaluation computes, loaded once, scored per sample, summarised per step count.

Each metric is loaded only if enabled and its weights are found; otherwise its column stays empty (None) and one
warning names the key to set. Per-sample outputs (Inception features, CLIP / aesthetic scores, digit
correctness, reward-model scores) are what ranks exchange under DDP, so a sharded run summarises exactly the same
numbers. Reward models (`eval.rewards.<name>`, fastgen/eval/models/rewards.py) are the ones training's feedback uses, each a
column of its mean score, loaded only where its files are set (a missing file: one warning, the column empty).
"""

import functools
from dataclasses import dataclass

import torch

from fastgen.eval.metrics import clip_score
from fastgen.eval.models import aesthetic, digit_classifier, inception, rewards
from fastgen.eval.metrics.fid import fid_from_features, kid_from_features
from fastgen.eval.metrics.reference import evaluation_reference

METRIC_COLUMNS = ("fid", "kid", "clip_score", "aesthetic_score", "prompt_accuracy", "digit_reward", "imagereward",
                  "hpsv2", "pickscore")
REWARD_FILES = {"digit": None, "imagereward": "weights", "hpsv2": "weights", "pickscore": "model"}  # the key that enables it


@functools.lru_cache(maxsize=2)
def _cached_inception(weights, device):
    return inception.load_inception(weights, device)


@dataclass
class MetricSuite:
    settings: object
    inception: object = None
    reference: object = None
    clip: object = None
    aesthetic: object = None
    digits: object = None
    rewards: dict = None

    @classmethod
    def load(cls, settings, datamodule, device="cpu"):
        """Load every enabled metric whose weights are available (reference statistics included). The suite is the
        one `eval.metrics` names: `images` (this class) or `points` (fastgen.eval.evaluator.points.PointsMetricSuite)."""
        if settings.metrics == "points":
            from fastgen.eval.evaluator.points import PointsMetricSuite

            return PointsMetricSuite.load(settings, datamodule, device)
        if settings.metrics != "images":
            raise ValueError(f"eval.metrics={settings.metrics!r} is not one of ['images', 'points']")
        if hasattr(datamodule, "points"):  # the points testbed's data (fastgen.data.points): no images to score
            raise ValueError(f"data {datamodule.name!r} holds points, not images: evaluate it with eval=points "
                             "(eval.metrics: points)")
        suite = cls(settings)
        if settings.fid.enabled:
            suite.inception = _cached_inception(settings.fid.weights, str(device))
        if suite.inception is not None:
            suite.reference = evaluation_reference(settings, datamodule, suite.inception)
        if settings.clip.enabled:
            suite.clip = clip_score.load_clip_scorer(settings.clip.model, settings.clip.pretrained, device,
                                                     settings.clip.quick_gelu)
        if settings.aesthetic.enabled:
            suite.aesthetic = aesthetic.load_aesthetic_scorer(
                settings.aesthetic.weights, settings.aesthetic.clip_model, settings.aesthetic.clip_pretrained, device,
                settings.aesthetic.clip_quick_gelu)
        if settings.prompt_accuracy.enabled:
            model = digit_classifier.load_classifier(settings.prompt_accuracy.weights).to(device)
            suite.digits = digit_classifier.PromptAccuracy(model)
        suite.rewards = load_rewards(settings.rewards)
        return suite

    @property
    def available(self):
        """Names of the per-sample outputs this suite computes."""
        loaded = {"inception": self.inception, "clip": self.clip, "aesthetic": self.aesthetic, "digits": self.digits}
        return [name for name, value in loaded.items() if value is not None] + list(self.rewards or {})

    @torch.no_grad()
    def score(self, images, prompts, names=None):
        """Per-sample outputs of uint8 images [n, C, H, W]: {"inception": [n, 2048], "clip": [n], ...} on CPU."""
        out = {}
        for name in names or self.available:
            if name == "inception":
                out[name] = self.inception(images.to(next(self.inception.parameters()).device)).cpu()
            elif name in (self.rewards or {}):
                out[name] = self.rewards[name](images.float() / 127.5 - 1.0, prompts).float().cpu()
            else:
                out[name] = getattr(self, name)(images, prompts).cpu()
        return out

    def summarise(self, per_sample):
        """Metric columns from per-sample outputs of the whole sample set (None where not computed)."""
        row = dict.fromkeys(METRIC_COLUMNS)
        if "inception" in per_sample:
            features = per_sample["inception"]
            row["fid"] = fid_from_features(features, self.reference.features)
            generator = torch.Generator().manual_seed(int(self.settings.seed))
            row["kid"], row["kid_std"] = kid_from_features(
                self.reference.features, features, self.settings.fid.kid_subsets, self.settings.fid.kid_subset_size,
                generator)
        named = (("clip", "clip_score"), ("aesthetic", "aesthetic_score"), ("digits", "prompt_accuracy"),
                 *((name, rewards.COLUMNS[name]) for name in self.rewards or {}))
        for name, column in named:
            if name in per_sample:
                row[column] = float(per_sample[name].float().mean())
        return row

    def fingerprint(self):
        """The columns that identify the metrics' networks and reference (empty where not computed)."""
        return {
            "extractor": self.inception.name if self.inception else "",
            "extractor_sha256": self.inception.sha256 if self.inception else "",
            "reference": self.reference.id if self.reference else "",
            "reference_sha256": self.reference.sha256 if self.reference else "",
            "clip_model": self.clip.model_id if self.clip else "",
            "aesthetic_sha256": self.aesthetic.weights_sha256 if self.aesthetic else "",
            "aesthetic_clip": self.aesthetic.clip_id if self.aesthetic else "",
            "classifier_sha256": self.digits.weights_sha256 if self.digits else "",
            "reward_models": ";".join(f"{n}={r.weights_sha256[:12]}" for n, r in sorted((self.rewards or {}).items())),
        }


def reward_specs(settings) -> dict:
    """{name: `rewards.build_reward` spec} of the reward models `eval.rewards` configures: those whose files are set
    (digit: when enabled)."""
    specs = {}
    for name, enabling_key in REWARD_FILES.items():
        options = dict(settings[name])
        if name == "digit" and not options.pop("enabled"):
            continue
        if enabling_key is None or options.get(enabling_key) is not None:
            specs[name] = {"name": name, **options}
    return specs


def load_rewards(settings) -> dict:
    """{name: reward} of the reward models `eval.rewards` configures (`reward_specs`); one that cannot be loaded is
    left out after one warning naming the key to set (its column stays empty: never random weights)."""
    import warnings

    from fastgen.eval.models.assets import MissingAssetWarning

    loaded = {}
    for name, spec in reward_specs(settings).items():
        try:
            loaded[name] = rewards.build_reward(spec, key_prefix=f"eval.rewards.{name}")
        except ValueError as e:
            warnings.warn(f"{rewards.COLUMNS[name]} not computed: {e}", MissingAssetWarning, stacklevel=2)
    return loaded
