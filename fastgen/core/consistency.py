"""Consistency-model parameterisation and guidance conditioning used by LCM (Luo et al. 2023)."""
import torch

from fastgen.core.diffusion import alpha_sigma, append_dims


def lcm_boundary_scalings(t, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """(c_skip, c_out) of the consistency boundary condition (Song et al. 2023, eq. 7; LCM, Sec. 4.1):
    c_skip = σ_d²/((s·t)² + σ_d²), c_out = s·t/sqrt((s·t)² + σ_d²), so c_skip(0) = 1, c_out(0) = 0.
    As diffusers' ``scalings_for_boundary_conditions``. Returned as float32 tensors shaped like t."""
    scaled = torch.as_tensor(t).to(torch.float32) * timestep_scaling
    denom = scaled**2 + sigma_data**2
    return sigma_data**2 / denom, scaled / denom.sqrt()


def consistency_output(
    x_t: torch.Tensor, x0_hat: torch.Tensor, t, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> torch.Tensor:
    """f_θ(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂_0(x_t, t) (LCM, eq. 9)."""
    c_skip, c_out = lcm_boundary_scalings(t, sigma_data, timestep_scaling)
    c_skip = append_dims(c_skip.to(x_t.device, x_t.dtype), x_t.ndim)
    c_out = append_dims(c_out.to(x_t.device, x_t.dtype), x_t.ndim)
    return c_skip * x_t + c_out * x0_hat


def guidance_scale_embedding(w: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of 1000·w, [B] -> [B, dim] float32 (LCM's ω-conditioning; VDM's
    timestep embedding), identical to diffusers' ``get_guidance_scale_embedding``."""
    w = torch.as_tensor(w)
    if w.ndim != 1:
        raise ValueError(f"guidance scales must be a 1-D tensor [B], got shape {tuple(w.shape)}")
    half = dim // 2
    step = torch.log(torch.tensor(10000.0, device=w.device)) / (half - 1)  # float32, bit-identical to diffusers
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -step)
    args = (w * 1000.0).to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def prediction_unit_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, grid: torch.Tensor,
                            prediction_type: str) -> torch.Tensor:
    """λ(t) = (dx̂0/d output)⁻² / its mean over `grid`, float32 [B]: an x0-space residual weighted by it is measured in
    units of the network's own output. x̂0 moves by σ_t per unit of v̂ (x̂0 = α_t x_t − σ_t v̂: λ ∝ σ_t⁻²), by σ_t/α_t
    per unit of ε̂ (x̂0 = (x_t − σ_t ε̂)/α_t: λ ∝ α_t²/σ_t², the SNR) and by 1 per unit of a sample prediction (λ = 1),
    so it undoes the factor by which an unweighted x0-space loss discounts small t; normalised to mean 1 over `grid`
    (the start times drawn uniformly). Cf. iCT's λ(σ_i) = 1/(σ_{i+1} − σ_i) (Song & Dhariwal 2023, arXiv 2310.14189,
    Sec. 3.4), also heavier at low noise."""
    def inverse_gain(times):
        alpha, sigma = alpha_sigma(alphas_cumprod, times, 1)
        alpha, sigma = alpha.reshape(-1).float(), sigma.reshape(-1).float()
        if prediction_type == "v_prediction":
            return sigma ** -2
        if prediction_type == "epsilon":
            return alpha ** 2 / sigma ** 2
        if prediction_type == "sample":
            return torch.ones_like(sigma)
        raise ValueError(f"prediction_unit_weights: unknown prediction_type {prediction_type!r}")

    if (alpha_sigma(alphas_cumprod, grid.to(alphas_cumprod.device), 1)[1] == 0).any():
        raise ValueError("prediction_unit_weights: the grid holds a time with σ = 0 (the clean sample)")
    return (inverse_gain(t) / inverse_gain(grid.to(alphas_cumprod.device)).mean()).to(t.device)
