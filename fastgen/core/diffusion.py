"""The discrete VP forward process and its closed-form conditionals (DDPM vocabulary).

Timesteps ``t``/``s`` are python ints or LongTensors of shape [B] indexing ``acp`` (ᾱ, 1-D);
the value −1 means "clean" (ᾱ = 1, α = 1, σ = 0). Coefficients come back shaped [B, 1, ...]
(or [1, ...] for an int) so they broadcast against x of shape [B, ...].
"""
import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a [B] (or scalar) tensor to [B, 1, ..., 1] with ``ndim`` dims in total."""
    if v.ndim == 0:
        return v.reshape([1] * ndim)
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


def _acp_at(acp: torch.Tensor, t, ndim: int) -> torch.Tensor:
    """ᾱ_t broadcast to ``ndim`` dims, with ᾱ_{−1} = 1."""
    t = torch.as_tensor(t, device=acp.device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be integers in [-1, {len(acp) - 1}], got dtype {t.dtype}")
    if t.device.type == "cpu" and t.numel() and (t.min() < -1 or t.max() >= len(acp)):
        raise ValueError(f"timesteps must be in [-1, {len(acp) - 1}] (-1 = clean), got {t.tolist()}")
    padded = torch.cat([acp.new_ones(1), acp])
    return append_dims(padded[t.long() + 1], ndim)


def alpha_sigma(acp: torch.Tensor, t, ndim: int, dtype: torch.dtype | None = None):
    """(α_t, σ_t) = (sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) shaped [B, 1, ...]; t = −1 gives (1, 0)."""
    a = _acp_at(acp, t, ndim)
    alpha, sigma = a.sqrt(), (1.0 - a).sqrt()
    if dtype is not None:
        alpha, sigma = alpha.to(dtype), sigma.to(dtype)
    return alpha, sigma


def q_sample(x0: torch.Tensor, t, noise: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) = N(α_t x_0, σ_t² I) (Ho et al. 2020, eq. 4)."""
    alpha, sigma = alpha_sigma(acp, t, x0.ndim, x0.dtype)
    return alpha * x0 + sigma * noise


def q_step(x_s: torch.Tensor, s, t, noise: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_s) for s < t: N(sqrt(ᾱ_t/ᾱ_s) x_s, (1 − ᾱ_t/ᾱ_s) I) (Ho et al. 2020, eq. 2 composed)."""
    a_ts = _acp_at(acp, t, x_s.ndim) / _acp_at(acp, s, x_s.ndim)
    return a_ts.sqrt().to(x_s.dtype) * x_s + (1.0 - a_ts).sqrt().to(x_s.dtype) * noise


def q_posterior_mean_var(x0: torch.Tensor, x_t: torch.Tensor, t, s, acp: torch.Tensor):
    """Mean and variance of q(x_s | x_t, x_0) for s < t (Ho et al. 2020, eqs. 6–7, generalised to a gap).

    With ᾱ_{t|s} = ᾱ_t/ᾱ_s: mean = sqrt(ᾱ_s)(1 − ᾱ_{t|s})/(1 − ᾱ_t)·x_0 + sqrt(ᾱ_{t|s})(1 − ᾱ_s)/(1 − ᾱ_t)·x_t,
    var = (1 − ᾱ_s)(1 − ᾱ_{t|s})/(1 − ᾱ_t). For s = −1 this is (x_0, 0). var is shaped [B, 1, ...].
    """
    a_t, a_s = _acp_at(acp, t, x_t.ndim), _acp_at(acp, s, x_t.ndim)
    a_ts = a_t / a_s
    c0 = a_s.sqrt() * (1.0 - a_ts) / (1.0 - a_t)
    ct = a_ts.sqrt() * (1.0 - a_s) / (1.0 - a_t)
    var = (1.0 - a_s) * (1.0 - a_ts) / (1.0 - a_t)
    return c0.to(x0.dtype) * x0 + ct.to(x_t.dtype) * x_t, var.to(x_t.dtype)


def q_posterior_sample(x0: torch.Tensor, x_t: torch.Tensor, t, s, noise: torch.Tensor, acp: torch.Tensor):
    """Sample x_s ~ q(x_s | x_t, x_0) (the DDPM / DDGAN posterior, any gap s < t)."""
    mean, var = q_posterior_mean_var(x0, x_t, t, s, acp)
    return mean + var.sqrt() * noise


def eps_to_x0(eps: torch.Tensor, x_t: torch.Tensor, t, acp: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − σ_t ε̂)/α_t (Ho et al. 2020, eq. 15)."""
    alpha, sigma = alpha_sigma(acp, t, x_t.ndim, x_t.dtype)
    return (x_t - sigma * eps) / alpha


def x0_to_eps(x0: torch.Tensor, x_t: torch.Tensor, t, acp: torch.Tensor) -> torch.Tensor:
    """ε̂ = (x_t − α_t x̂_0)/σ_t (inverse of eq. 4; undefined at t = −1)."""
    alpha, sigma = alpha_sigma(acp, t, x_t.ndim, x_t.dtype)
    return (x_t - alpha * x0) / sigma


def v_to_x0(v: torch.Tensor, x_t: torch.Tensor, t, acp: torch.Tensor) -> torch.Tensor:
    """x̂_0 = α_t x_t − σ_t v̂, with v = α_t ε − σ_t x_0 (Salimans & Ho 2022, App. D)."""
    alpha, sigma = alpha_sigma(acp, t, x_t.ndim, x_t.dtype)
    return alpha * x_t - sigma * v


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, t, acp: torch.Tensor) -> torch.Tensor:
    """ε̂ = σ_t x_t + α_t v̂ (Salimans & Ho 2022, App. D)."""
    alpha, sigma = alpha_sigma(acp, t, x_t.ndim, x_t.dtype)
    return sigma * x_t + alpha * v


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_to_x0_eps(output: torch.Tensor, x_t: torch.Tensor, t, acp: torch.Tensor, prediction_type: str):
    """Convert a network output of the given parameterisation to (x̂_0, ε̂)."""
    if prediction_type == "epsilon":
        return eps_to_x0(output, x_t, t, acp), output
    if prediction_type == "v_prediction":
        return v_to_x0(output, x_t, t, acp), v_to_eps(output, x_t, t, acp)
    if prediction_type == "sample":
        return output, x0_to_eps(output, x_t, t, acp)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")


def prediction_target(x0: torch.Tensor, noise: torch.Tensor, t, acp: torch.Tensor, prediction_type: str):
    """What a network of `prediction_type` regresses at x_t = α_t x0 + σ_t ε: ε, v = α_t ε − σ_t x0
    (Salimans & Ho 2022, App. D) or x0 (the DDPM loss, Ho et al. 2020, eq. 14, in each parameterisation)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha, sigma = alpha_sigma(acp, t, x0.ndim, x0.dtype)
        return alpha * noise - sigma * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")


def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, s, acp: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update to time s: x_s = α_s x̂_0 + σ_s ε̂ (Song et al. 2021, eq. 12, η = 0);
    s = −1 returns x̂_0."""
    alpha, sigma = alpha_sigma(acp, s, x0_hat.ndim, x0_hat.dtype)
    return alpha * x0_hat + sigma * eps_hat
