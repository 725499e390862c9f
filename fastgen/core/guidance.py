"""Classifier-free guidance (Ho & Salimans 2022)."""
import torch


def classifier_free_guidance(cond_out: torch.Tensor, uncond_out: torch.Tensor, scale) -> torch.Tensor:
    """Guided prediction uncond + scale·(cond − uncond) (Ho & Salimans 2022, eq. 6, with w = scale − 1).

    LCM writes the guided teacher as x_c + ω(x_c − x_u) (Luo et al. 2023, eq. 8); that equals this
    with scale = 1 + ω. ``scale`` may be a float or a tensor broadcastable against the outputs.
    """
    return uncond_out + scale * (cond_out - uncond_out)
