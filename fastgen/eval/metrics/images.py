"""Image conversions shared by the metrics: everything is scored from uint8 [N, C, H, W] tensors."""

import torch


class NonFiniteImages(ValueError):
    """Generated pixels hold NaN or infinity: scoring them would turn them into 0 and write a meaningless row."""


def pixels_to_uint8(pixels):
    """Float pixels in [-1, 1] -> uint8 0..255 (round to nearest, clamped), as if saved to PNG; uint8 passes through.
    NaN or infinite pixels raise NonFiniteImages (the cast would silently make them 0)."""
    if pixels.dtype == torch.uint8:
        return pixels
    finite = torch.isfinite(pixels)
    if not finite.all():
        bad = int((~finite).flatten(1).any(1).sum())
        raise NonFiniteImages(f"{bad} of {len(pixels)} generated images hold NaN/inf pixels: the weights or the "
                              "sampler diverged, so no leaderboard row is written (check the run's losses; evaluate an "
                              "earlier checkpoint with ckpt=PATH)")
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_rgb(images):
    """[N, 1, H, W] -> [N, 3, H, W] by repeating the channel; 3-channel images pass through."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1|3, H, W], got shape {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
