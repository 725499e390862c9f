"""Distribution matching distillation (DMD, Yin et al., CVPR 2024, arXiv 2311.18828; DMD2, NeurIPS 2024,
arXiv 2405.14867): the generator's gradient from a real and a fake score, in x0 space."""
import torch


def distribution_matching_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """Per-sample normalised KL gradient (DMD eqs. 7–8): (x̂0_fake − x̂0_real) / mean_{C,H,W} |x − x̂0_real|.

    `x` is the generator's sample, `real_x0`/`fake_x0` the real and fake denoisers' x̂0 at its noised copy x_t.
    With s = −(x_t − α_t x̂0)/σ_t², the score difference s_fake − s_real = (α_t/σ_t²)(x̂0_fake − x̂0_real) times
    DMD's weight w_t = (σ_t²/α_t)·CS/‖x − x̂0_real‖₁ gives this; a 0/0 (a sample the real denoiser reproduces exactly) is 0."""
    dims = tuple(range(1, x.ndim))
    grad = (fake_x0 - real_x0) / (x - real_x0).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num(grad)


def distribution_matching_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5·mean((x − sg(x − grad))²): a loss whose gradient with respect to x is grad / x.numel() (DMD2's form)."""
    target = (x - grad).detach()
    return 0.5 * torch.mean((x.float() - target.float()) ** 2)
