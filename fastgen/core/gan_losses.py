"""Discriminator and generator losses; each term is a scalar mean over the batch."""
import torch
import torch.nn.functional as F


def d_loss_softplus(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    """Non-saturating GAN discriminator terms (Goodfellow et al. 2014; DDGAN eq. 6):
    (softplus(−D(real)).mean(), softplus(D(fake)).mean())."""
    return F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()


def g_loss_softplus(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(−D(fake)).mean() (DDGAN eq. 7)."""
    return F.softplus(-fake_logits).mean()


def d_loss_clamped_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor, margin: float = 0.5):
    """UFOGen author's discriminator loss (xuyanwu/SIDDMs-UFOGen, UFO_DiT/train_ufo.py):
    BCE-with-logits on real logits clamped to ≤ +margin (target 1) and fake logits clamped to
    ≥ −margin (target 0). Once D is confident past the margin the term has no gradient.
    Returns (loss_real, loss_fake)."""
    real = real_logits.clamp(max=margin)
    fake = fake_logits.clamp(min=-margin)
    loss_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
    loss_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return loss_real, loss_fake


def g_loss_clamped_bce(fake_logits: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """UFOGen author's generator loss: BCE-with-logits with target 1 on the fake logits, which ARE
    clamped to ≤ +margin as in the author's code (``fake_dis.clamp(max=0.5)``), so G gets no
    gradient from samples D already scores above the margin."""
    fake = fake_logits.clamp(max=margin)
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty (Mescheder et al. 2018, eq. 9) without the γ/2 factor:
    mean over the batch of ‖∂ΣD(real)/∂x_real‖² (squared norm per sample). Differentiable
    (create_graph=True) so it can be added to the discriminator loss."""
    if not real_inputs.requires_grad:
        raise ValueError(
            "r1_penalty needs real_inputs with requires_grad=True: call real.requires_grad_(True) "
            "before passing it through the discriminator"
        )
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(dim=1).mean()


def r1_penalty_finite_difference(real_logits: torch.Tensor, perturbed_logits: torch.Tensor, sigma: float) -> torch.Tensor:
    """R1 without a double backward: mean over the batch of ((ΣD(x + σε) − ΣD(x)) / σ)², ε ~ N(0, I).
    By first-order Taylor, ΣD(x + σε) − ΣD(x) ≈ σ ∇ΣD(x)·ε and E_ε[(∇ΣD·ε)²] = ‖∇ΣD‖², so this is an
    unbiased estimate of `r1_penalty` for a D linear in x and a first-order one otherwise (error O(σ)).
    The approximated R1 of adversarial post-training (Lin et al. 2025, arXiv 2501.08316, Sec. 3.3) penalises the
    same difference: it runs with fused attention kernels and gradient checkpointing, which have no double backward."""
    if sigma <= 0:
        raise ValueError(f"r1_penalty_finite_difference needs sigma > 0, got {sigma}")
    diff = (perturbed_logits.reshape(perturbed_logits.shape[0], -1).sum(dim=1)
            - real_logits.reshape(real_logits.shape[0], -1).sum(dim=1))
    return (diff / sigma).pow(2).mean()
