"""Exponential moving average of parameters (Polyak averaging), in place."""
import torch


def _as_lists(target_params, source_params):
    targets, sources = list(target_params), list(source_params)
    if len(targets) != len(sources):
        raise ValueError(f"EMA target has {len(targets)} tensors but source has {len(sources)}")
    return targets, sources


@torch.no_grad()
def ema_update_(target_params, source_params, decay: float) -> None:
    """target ← decay·target + (1 − decay)·source, for matching iterables of tensors."""
    targets, sources = _as_lists(target_params, source_params)
    if targets:
        torch._foreach_lerp_(targets, sources, 1.0 - decay)


@torch.no_grad()
def copy_params_(target_params, source_params) -> None:
    """target ← source, for matching iterables of tensors."""
    targets, sources = _as_lists(target_params, source_params)
    if targets:
        torch._foreach_copy_(targets, sources)
