"""The GAN phases every adversarial method shares (UFOGen, DDGAN, SIDDM; DMD2's optional GAN head; TSCD's DMD stage).

- `adversarial_phase`: one manual-optimisation phase — only one optimizer's parameters trainable, named
  losses computed, their sum descended (optionally with gradient-norm clipping).
- `lazy_r1_weight`: StyleGAN2's lazy R1 schedule as the weight of this D update's penalty term.
- `discriminator_losses`: D's named terms `d_real`, `d_fake` (and `d_r1`) on one real and one fake batch,
  with D's optional `x_cond` input (DDGAN's joint discriminator) passed to both.
- `check_r1_options`, `prepare_discriminator_for_r1`: the R1 settings every adversarial method shares (exact R1
  is a double backward through D, which then runs without gradient checkpointing).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastgen.core import d_loss_softplus, r1_penalty, r1_penalty_finite_difference
from fastgen.methods.base import FewStepMethod


def adversarial_phase(method: FewStepMethod, opt, compute_losses: Callable[[], dict], max_grad_norm: float | None = None):
    """With only `opt`'s parameters trainable, compute the named losses and take one step on their sum."""
    with method.toggled_optimizer(opt):
        losses = compute_losses()
        opt.zero_grad(set_to_none=True)
        method.manual_backward(sum(losses.values()))
        if max_grad_norm:
            method.clip_gradients(opt, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
    return losses


def lazy_r1_weight(r1_gamma: float, r1_every: int, d_update: int, scale_by_interval: bool = False) -> float:
    """Weight of the R1 term at this D update: γ/2 every `r1_every` updates, else 0 (NVlabs/denoising-diffusion-gan
    applies γ/2 unscaled on its lazy steps). `scale_by_interval` multiplies it by r1_every, StyleGAN2's lazy
    regularisation (Karras et al. 2020, Sec. 3.1), which keeps the average strength of an every-step penalty."""
    if r1_gamma <= 0 or d_update % r1_every:
        return 0.0
    return 0.5 * r1_gamma * (r1_every if scale_by_interval else 1)


def discriminator_losses(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    x_cond: torch.Tensor | None = None,
    r1_weight: float = 0.0,
    loss_fn=d_loss_softplus,
    r1_sigma: float = 0.0,
) -> dict[str, torch.Tensor]:
    """`d_real`, `d_fake` from one D call on [real; fake] (fake detached), and `d_r1` = r1_weight·‖∇_real D‖²
    when r1_weight > 0: exact (double backward; that call then uses the math attention kernel, the only one with
    a double backward) when r1_sigma = 0, else its finite-difference estimate from a third batch, real + r1_sigma·ε,
    in the same D call (`r1_penalty_finite_difference`). `x_cond` (the same for every part) goes to D's joint input."""
    exact_r1 = r1_weight > 0 and r1_sigma == 0
    real = real.detach().requires_grad_(exact_r1)
    parts = [real, fake.detach()]
    if r1_weight > 0 and r1_sigma > 0:
        parts.append(real + r1_sigma * torch.randn_like(real))
    repeat = lambda a: None if a is None else torch.cat([a] * len(parts))  # noqa: E731
    with sdpa_kernel(SDPBackend.MATH) if exact_r1 else contextlib.nullcontext():
        logits = discriminator(torch.cat(parts), repeat(t), repeat(cond), x_cond=repeat(x_cond))
    real_logits, fake_logits, *perturbed = logits.chunk(len(parts))
    d_real, d_fake = loss_fn(real_logits, fake_logits)
    losses = {"d_real": d_real, "d_fake": d_fake}
    if exact_r1:
        losses["d_r1"] = r1_weight * r1_penalty(real_logits, real)
    elif perturbed:
        losses["d_r1"] = r1_weight * r1_penalty_finite_difference(real_logits, perturbed[0], r1_sigma)
    return losses


def check_r1_options(r1_gamma: float, r1_sigma: float) -> None:
    """Bad R1 values name their config key."""
    if r1_gamma < 0:
        raise ValueError(f"method.r1_gamma={r1_gamma} must be >= 0 (0 = no R1)")
    if r1_sigma < 0:
        raise ValueError(f"method.r1_sigma={r1_sigma} must be >= 0 (0 = exact R1, > 0 = finite-difference R1)")


def prepare_discriminator_for_r1(discriminator: nn.Module, r1_gamma: float, r1_sigma: float) -> None:
    """Exact R1 (r1_gamma > 0, r1_sigma = 0) switches off diffusers' gradient checkpointing in every block of D.
    It differentiates D's input gradient again, with the math attention kernel; checkpointed blocks would
    recompute their attention in the final backward with the default kernel, whose saved tensors differ (torch
    CheckpointError). The finite-difference R1 has no double backward and keeps D checkpointed."""
    if r1_gamma > 0 and r1_sigma == 0:
        for block in discriminator.modules():
            if getattr(block, "gradient_checkpointing", False):
                block.gradient_checkpointing = False
