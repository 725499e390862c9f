"""Noise schedules (cumulative products ᾱ_t) and inference timestep grids.

All schedules are returned as float64 1-D tensors; callers cast to their working dtype.
"""
import math

import torch


def _cumprod_one_minus(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas, dim=0)


def scaled_linear_alphas_cumprod(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion 1.x schedule: β linear in sqrt-space (diffusers ``scaled_linear``)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return _cumprod_one_minus(betas)


def linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM linear schedule (Ho et al. 2020, Sec. 4): β_t linear from beta_start to beta_end."""
    return _cumprod_one_minus(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_alphas_cumprod(T: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), β capped at max_beta
    (diffusers ``squaredcos_cap_v2``)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return _cumprod_one_minus(torch.tensor(betas, dtype=torch.float64))


_SCHEDULES = {
    "scaled_linear": scaled_linear_alphas_cumprod,
    "linear": linear_alphas_cumprod,
    "cosine": cosine_alphas_cumprod,
}


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Zero terminal SNR (Lin et al. 2024, arXiv 2305.08891, Algorithm 1): shift sqrt(ᾱ_t) so that its last value is
    0 and scale it so that its first value is kept; returns the new ᾱ (ᾱ_T = 0 exactly, so x_T ~ N(0, I) holds).

    Equals diffusers' `rescale_betas_zero_snr=True` schedules (there ᾱ_T is then clipped to 2^-24 inside
    DPM-Solver for a finite log-SNR).
    """
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def make_alphas_cumprod(kind: str, T: int = 1000, rescale_betas_zero_snr: bool = False, **kw) -> torch.Tensor:
    """Build ᾱ for a named schedule ("scaled_linear", "linear", "cosine"), optionally rescaled to zero terminal SNR
    (the diffusers scheduler key `rescale_betas_zero_snr`)."""
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {kind!r}; choose one of {sorted(_SCHEDULES)}")
    acp = _SCHEDULES[kind](T, **kw)
    return rescale_zero_terminal_snr(acp) if rescale_betas_zero_snr else acp


def ddgan_vp_alphas_cumprod(
    num_levels: int = 4, beta_min: float = 0.1, beta_max: float = 20.0, eps_small: float = 1e-3
) -> torch.Tensor:
    """DDGAN's continuous VP SDE discretised to ``num_levels`` large steps (Xiao et al. 2022, App. B),
    following NVlabs/denoising-diffusion-gan ``get_sigma_schedule``.

    Times t_i = i/N·(1 − eps_small) + eps_small, i = 0..N; continuous ᾱ(t) = exp(−½t²(β_max − β_min) − tβ_min);
    β_i = 1 − ᾱ(t_i)/ᾱ(t_{i−1}) for i ≥ 1 and β_0 = 1e−8, and the returned ᾱ_i = ∏_{j≤i}(1 − β_j).
    Index 0 is the (practically clean) data level, ᾱ_0 = 1 − 1e−8; index N the noisiest.
    For N = 4: ≈ [1.0, 0.52, 0.079, 0.0034, 4.3e−5].
    """
    t = torch.arange(num_levels + 1, dtype=torch.float64) / num_levels * (1.0 - eps_small) + eps_small
    alpha_bar = torch.exp(-0.5 * t**2 * (beta_max - beta_min) - t * beta_min)
    betas = torch.cat([torch.tensor([1e-8], dtype=torch.float64), 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
    return _cumprod_one_minus(betas)


def trailing_timesteps(num_steps: int, T: int = 1000) -> torch.Tensor:
    """Descending "trailing" grid (Lin et al. 2024, Table 2): round(T − i·T/n) − 1, i = 0..n−1.

    Equals diffusers ``DDIMScheduler(timestep_spacing="trailing").set_timesteps(n).timesteps``.
    """
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    ratio = T / num_steps
    return torch.tensor([round(T - i * ratio) - 1 for i in range(num_steps)], dtype=torch.long)


def lcm_solver_grid(T: int = 1000, num_ddim_steps: int = 50) -> torch.Tensor:
    """Ascending DDIM solver grid used in LCM/TSCD training: k·j − 1 for j = 1..N, k = T // N
    (Luo et al. 2023, Sec. 4.3; T=1000, N=50 gives [19, 39, ..., 999])."""
    if not 1 <= num_ddim_steps <= T:
        raise ValueError(f"num_ddim_steps must be in [1, {T}], got {num_ddim_steps}")
    k = T // num_ddim_steps
    return torch.arange(1, num_ddim_steps + 1, dtype=torch.long) * k - 1


def lcm_timesteps(num_steps: int, T: int = 1000, original_steps: int = 50, start: int | None = None) -> torch.Tensor:
    """LCM inference timesteps: ``num_steps`` evenly spaced indices into the reversed solver grid.

    Equals diffusers ``LCMScheduler.set_timesteps(num_steps).timesteps``. `start` (image-to-image) keeps only the
    solver-grid points <= start and spaces the steps over those, as if the grid ended there.
    """
    grid = lcm_solver_grid(T, original_steps).flip(0)
    if start is not None:
        grid = grid[grid <= start]
    available = len(grid)
    if not 1 <= num_steps <= available:
        raise ValueError(f"num_steps must be in [1, {available}] (original_steps={original_steps} solver-grid points, "
                         f"{available} of them at or below the start), got {num_steps}")
    step = available / num_steps  # numpy.linspace(0, N, n, endpoint=False) as in diffusers
    idx = [math.floor(i * step) for i in range(num_steps)]
    return grid[idx]


def strength_timestep(strength: float, T: int = 1000) -> int:
    """The start time of image-to-image (SDEdit, Meng et al. 2022, arXiv 2108.01073) at `strength` in [0, 1], on the
    trailing convention: round(strength·T) − 1, so strength 1 is the first time of every text-to-image grid (T − 1)
    and strength 0 is −1 (no noise: the input is returned)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1] (1: text-to-image, 0: the input image unchanged)")
    return round(strength * T) - 1
