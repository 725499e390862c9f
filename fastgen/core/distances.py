"""Distances used as regression / consistency losses (computed in at least float32)."""
import torch


def _upcast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype) - b.to(dtype)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = 0.001, reduce: bool = True) -> torch.Tensor:
    """Pseudo-Huber distance mean(sqrt((a − b)² + c²) − c), elementwise then averaged (unless `reduce` is False)
    (Song & Dhariwal 2023, Sec. 3.3), as in diffusers' train_lcm_distill_sd_wds.py."""
    d = torch.sqrt(_upcast(a, b) ** 2 + c**2) - c
    return torch.mean(d) if reduce else d


def mse(a: torch.Tensor, b: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Mean squared error mean((a − b)²) (elementwise when `reduce` is False)."""
    d = _upcast(a, b) ** 2
    return torch.mean(d) if reduce else d
