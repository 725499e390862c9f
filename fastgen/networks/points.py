"""The points backbone: a `PointsMLP` denoiser in R^D with the same `Backbone` contract as the UNets.

`PointsBackbone` differs from `Backbone` only where points are not images: the model space is R^D itself
(`encode`/`decode` are the identity — no VAE and no clamp to [-1, 1]), `sample_shape` is (D,), batches carry
the points as `x0`, the discriminator is the MLP's (`MLPDiscriminator`), and prompt embeddings are cached per
prompt (a points data set has a handful of captions; the text encoder is frozen, so the cache is exact).
Everything else — schedule, prediction type, `denoise` — is `Backbone`'s, so every method and sampler runs on it
unchanged.

Text encoder: the small frozen CLIP text encoder of the committed MNIST teacher (fastgen/assets/mnist_teacher,
random-init and frozen there too) with the real CLIP tokenizer; a saved points backbone holds its own copy
under `text_encoder/`, and a directory without one (the committed points teachers) uses that default.
Schedule: DDPM's linear betas (1e-4 to 0.02) rescaled to zero terminal SNR with v-prediction (Lin et al. 2024,
arXiv 2305.08891), so x_T ~ N(0, I) is exactly what every sampler starts from. Linear, not SD1.5's scaled_linear:
25 linspace DPM-Solver++ steps end with one jump from t = 40 to the clean sample, and there scaled_linear's noise
(std 0.19) is twice the grid's mode width, so the jump's x̂0 (a posterior mean) narrows every mode; linear's is
0.14 (the recall this costs: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastgen.networks.backbone import Backbone
from fastgen.networks.builders import SCHEDULE_KEYS, MissingWeightsError, _default_cache_dir, _dtype, resolve_pretrained
from fastgen.networks.clip_tokenizer import build_clip_tokenizer
from fastgen.networks.discriminators import MLPDiscriminator
from fastgen.networks.mlp import PointsMLP

DEFAULT_TEXT_ENCODER = Path(__file__).resolve().parents[1] / "assets" / "mnist_teacher"
POINTS_SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000,
                   "rescale_betas_zero_snr": True}
MAX_PROMPT_LENGTH = 16
MAX_CACHED_PROMPTS = 4096


class PointsBackbone(Backbone):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prompt_cache: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def sample_shape(self) -> tuple[int]:
        return (self.unet.config.in_channels,)

    @property
    def image_shape(self) -> tuple[int]:
        return self.sample_shape

    def build_discriminator(self, joint: bool = False) -> MLPDiscriminator:
        """The MLP's discriminator (`MLPDiscriminator`: a copy of its trunk plus a logit head); `joint` adds x_cond."""
        return MLPDiscriminator(self.unet, self.sample_shape[0] if joint else 0)

    @torch.no_grad()
    def encode(self, points: torch.Tensor) -> torch.Tensor:
        return points.float()

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The points themselves (float32, unclamped)."""
        return x0.float()

    def batch_to_x0(self, batch: dict) -> torch.Tensor:
        return batch["x0"].float()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """`Backbone.encode_prompts`, each distinct prompt encoded once per device and cached."""
        device = str(self.alphas_cumprod.device)
        new = [p for p in dict.fromkeys(prompts) if (device, p) not in self._prompt_cache]
        if new:
            if len(self._prompt_cache) + len(new) > MAX_CACHED_PROMPTS:
                self._prompt_cache.clear()
            for prompt, emb in zip(new, super().encode_prompts(new)):
                self._prompt_cache[(device, prompt)] = emb
        return torch.stack([self._prompt_cache[(device, p)] for p in prompts])


def _text_encoder(root: Path):
    from transformers import CLIPTextModel

    if not (root / "text_encoder" / "config.json").is_file():
        raise MissingWeightsError(f"{root} has no text_encoder/ (a diffusers-layout model directory); "
                                  "set model.text_encoder=DIR to a directory that has one")
    return CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True)


def _assemble(mlp: PointsMLP, text_root: Path, schedule: dict, prediction_type: str, name: str, dtype: str,
              cache_dir: str | None) -> PointsBackbone:
    text_encoder = _text_encoder(text_root)
    if text_encoder.config.hidden_size != mlp.config.cross_attention_dim:
        raise ValueError(f"the text encoder in {text_root} has width {text_encoder.config.hidden_size}, the points "
                         f"MLP's cross_attention_dim is {mlp.config.cross_attention_dim}")
    backbone = PointsBackbone(
        unet=mlp, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(cache_dir or _default_cache_dir()),
        schedule=schedule, prediction_type=prediction_type,
        max_prompt_length=min(MAX_PROMPT_LENGTH, text_encoder.config.max_position_embeddings), name=name,
    )
    backbone.text_encoder.to(_dtype(dtype))
    return backbone


def build_points_random(dim: int, seed: int = 0, hidden_dim: int = 64, num_layers: int = 3,
                        ff_mult: int = 2, prediction_type: str = "v_prediction",
                        schedule: dict | None = None, text_encoder: str | None = None, dtype: str = "fp32",
                        cache_dir: str | None = None) -> PointsBackbone:
    """A randomly initialised points backbone for D = `dim` (what `teacher_points` trains)."""
    text_root = Path(text_encoder) if text_encoder else DEFAULT_TEXT_ENCODER
    torch.manual_seed(seed)
    mlp = PointsMLP(in_channels=int(dim), hidden_dim=hidden_dim, num_layers=num_layers, ff_mult=ff_mult,
                    cross_attention_dim=json.loads((text_root / "text_encoder" / "config.json").read_text())["hidden_size"])
    return _assemble(mlp, text_root, dict(schedule or POINTS_SCHEDULE), prediction_type, "points_mlp", dtype, cache_dir)


def build_points_pretrained(pretrained: str, dim: int | None = None, text_encoder: str | None = None,
                            dtype: str = "fp32", cache_dir: str | None = None,
                            config_key: str = "model.pretrained") -> PointsBackbone:
    """Load a points backbone that `teacher_points` exported (`<run>/teacher/`: unet/, scheduler/, text_encoder/).

    `dim` (the data's D) is checked against the network's input size: a teacher of other data is an error."""
    if pretrained and not Path(str(pretrained)).expanduser().is_dir():
        raise MissingWeightsError(
            f"{config_key}={pretrained} does not exist. Train a points teacher on this data first (python -m fastgen.fit "
            "experiment=teacher_points data.path=FILE.npz: it exports to runs/teacher_points_<file stem>/teacher, "
            f"where the points experiments look), or set {config_key}=DIR (a teacher_points run's teacher/ folder)")
    root = resolve_pretrained(pretrained, config_key)
    config_file = root / "unet" / "config.json"
    if not config_file.is_file():
        raise MissingWeightsError(f"{config_key}={root} has no unet/config.json: set it to the teacher/ folder a "
                                  "`python -m fastgen.fit experiment=teacher_points` run exported")
    kind = json.loads(config_file.read_text()).get("_class_name")
    if kind != PointsMLP.__name__:
        raise ValueError(f"{config_key}={root} holds a {kind}, not a {PointsMLP.__name__}: "
                         "set it to a teacher_points run's teacher/ folder")
    mlp = PointsMLP.from_pretrained(root, subfolder="unet")
    if dim is not None and mlp.config.in_channels != int(dim):
        raise ValueError(f"{config_key}={root} is a teacher of {mlp.config.in_channels}-D points but the data is "
                         f"{dim}-D: set {config_key} to a teacher trained on this data (experiment=teacher_points)")
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {**POINTS_SCHEDULE, "prediction_type": "v_prediction"}
    text_root = Path(text_encoder) if text_encoder else (
        root if (root / "text_encoder" / "config.json").is_file() else DEFAULT_TEXT_ENCODER)
    return _assemble(mlp, text_root, {k: sched[k] for k in SCHEDULE_KEYS if k in sched},
                     sched.get("prediction_type", "epsilon"), root.name, dtype, cache_dir)
