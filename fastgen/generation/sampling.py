"""Text-to-image and image-to-image sampling for any method, on the evaluation's per-sample noises.

Sample i of seed S uses the noise and sampler generator the evaluation gives its sample i at `eval.seed=S`
(`fastgen.eval.evaluator.run_eval.eval_noise` / `sampler_generators`), so `fastgen.generate` reproduces the evaluation's
images. Image-to-image is SDEdit (Meng et al. 2022, arXiv 2108.01073): the encoded image x0 is noised with that
same noise to the start time t_s the method's `start_time(strength)` selects, x_{t_s} = α_{t_s}·x0 + σ_{t_s}·ε, and
the method's own sampler runs `steps` steps from t_s (`sample(..., t_start=t_s)`): one step for UFOGen at any
strength. At strength 1 (t_s = T − 1) the start is the noise alone, exactly text-to-image; at t_s = −1 (strength
below the method's first grid time) the input is returned unchanged.
"""

from __future__ import annotations

import torch

from fastgen.core import q_sample
from fastgen.eval.evaluator.run_eval import eval_noise, method_device, sampler_generators


@torch.no_grad()
def encode_image(backbone, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] [B, C, H, W] -> model space, deterministically (the VAE posterior's mean, scaled)."""
    if backbone.vae is None:
        return pixels.float()
    latents = backbone.vae.encode(pixels.to(backbone.vae.dtype)).latent_dist.mode()
    return (latents * backbone.vae_scaling_factor).float()


@torch.no_grad()
def img2img(method, x0: torch.Tensor, prompts, steps: int, strength: float, noise: torch.Tensor, generator=None):
    """x0 (model space) of the method's sampler started from `x0` noised to `method.start_time(strength)` with `noise`."""
    t_start = method.start_time(strength)
    if t_start < 0:
        return x0.float()
    bb = method.backbone
    x_t = noise.float() if t_start == bb.num_train_timesteps - 1 else q_sample(x0.float(), t_start, noise.float(), bb.alphas_cumprod)
    return method.sample(x_t, prompts, steps, generator=generator, t_start=t_start)


def row_source(method, steps: int, row: str | None):
    """The `RowSource` of `method`'s leaderboard rows labelled `<method><row>` at `steps` (`method.row_sources`): its
    `weights()` around the sampling reproduces those rows. None: the current weights and the method's own sampler."""
    from fastgen.eval.evaluator.run_eval import row_sources
    from fastgen.methods.base import RowSource

    if row is None:
        return RowSource(("",))
    sources = row_sources(method, steps)
    for source in sources:
        if row in source.suffixes:
            return source
    labels = [f"{method.name}{suffix}" for source in sources for suffix in source.suffixes]
    raise ValueError(f"row={row!r}: {method.name} has no {method.name}{row} rows at {steps} steps (it has {labels}; "
                     "an untrained method has its own only)")


@torch.no_grad()
def sample_pixels(method, prompts, indices: torch.Tensor, steps: int, seed: int, init_x0=None, strength: float = 1.0):
    """Decoded pixels in [-1, 1] of the samples `indices` (prompt i is `prompts[i]`), from the evaluation's noise and
    sampler generator of each index at `seed`; with `init_x0` (model space, [1 or B, C, H, W]) image-to-image."""
    device = method_device(method)
    noise = eval_noise(indices, tuple(method.backbone.sample_shape), seed).to(device)
    batch_prompts = [prompts[i] for i in indices.tolist()]
    generators = sampler_generators(indices, seed)
    if init_x0 is None:
        x0 = method.sample(noise, batch_prompts, steps, generator=generators)
    else:
        x0 = img2img(method, init_x0.to(device).expand_as(noise), batch_prompts, steps, strength, noise, generators)
    return method.backbone.decode(x0)
