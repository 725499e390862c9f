"""Control images computed from a digit, deterministically: what a ControlNet is conditioned on and what its samples
are scored against (`control_iou`).

    mask   the coarse mask: the digit's ink (pixel > 0, i.e. above mid-grey in [-1, 1]) max-pooled over 4×4 cells and
           blown back up (nearest): where the digit is, at 8×8 resolution
    edges  the dilated edge map: the ink's morphological gradient (3×3 dilation minus 3×3 erosion), dilated once more
           (3×3): a band about 3 pixels wide along the digit's outline

Both return float maps in {0, 1} [B, 1, H, W] (ControlNet control pixels are in [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTROLS = ("mask", "edges")
MASK_CELL = 4


def ink(pixels: torch.Tensor) -> torch.Tensor:
    """{0, 1} map of the ink of pixels in [-1, 1] [B, 1, H, W] (white digit on black: pixel > 0)."""
    return (pixels > 0).float()


def dilate(binary: torch.Tensor, size: int = 3) -> torch.Tensor:
    return F.max_pool2d(binary, size, stride=1, padding=size // 2)


def erode(binary: torch.Tensor, size: int = 3) -> torch.Tensor:
    return 1.0 - dilate(1.0 - binary, size)


def control_map(pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """The `kind` control (module doc) of images in [-1, 1] [B, 1, H, W] (or [1, H, W]), a {0, 1} float map."""
    if kind not in CONTROLS:
        raise ValueError(f"control {kind!r} is not one of {CONTROLS} (data.control=...)")
    batched = pixels.dim() == 4
    x = ink(pixels if batched else pixels.unsqueeze(0))
    if kind == "mask":
        out = F.interpolate(F.max_pool2d(x, MASK_CELL), scale_factor=MASK_CELL, mode="nearest")
    else:
        out = dilate(dilate(x) - erode(x))
    return out if batched else out[0]


def control_iou(control: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image IoU [B] between {0, 1} controls [B, 1, H, W] and the same `kind` control of `images` in [-1, 1]
    (1: the sample's mask/edges are the control's; an empty union counts 1)."""
    ours = control_map(images, kind).bool()
    target = control.bool()
    inter = (ours & target).flatten(1).sum(1).float()
    union = (ours | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
