"""Image files in and out of `fastgen.generate`: an init or control image read to the model's resolution, sample PNGs
and a grid written atomically."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fastgen.core.files import atomic_path
from fastgen.eval.evaluator.grids import save_grid
from fastgen.eval.metrics.images import pixels_to_uint8


def read_image(path, shape, key: str = "init_image") -> torch.Tensor:
    """The image at `path` as float pixels in [-1, 1], [1, C, H, W] for `shape` = (C, H, W): converted to grey (C = 1)
    or RGB (C = 3) and resized (bicubic) to H x W. A missing or unreadable file is one line naming `key`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path} does not exist")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if shape[0] == 1 else "RGB")
            if image.size != (shape[2], shape[1]):
                image = image.resize((shape[2], shape[1]), Image.BICUBIC)
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{key}={path} is not a readable image ({e})") from None
    pixels = data.view(shape[1], shape[2], shape[0]).permute(2, 0, 1).float()
    return (pixels / 127.5 - 1.0).unsqueeze(0)


def slug(text: str, length: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:length] or "empty"


def save_png(pixels: torch.Tensor, path) -> Path:
    """Write one image (float pixels in [-1, 1] or uint8, [C, H, W]) as a PNG, atomically."""
    from torchvision.utils import save_image

    with atomic_path(path, suffix=".png") as tmp:
        save_image(pixels_to_uint8(pixels.unsqueeze(0)).float() / 255, tmp)
    return Path(path)


def save_outputs(images: torch.Tensor, prompts, indices, out_dir, per_row: int) -> list[Path]:
    """`<out>/<index>_<prompt>.png` for each image and `<out>/grid.png`; returns the PNG paths (grid last)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_png(img, out / f"{i:04d}_{slug(prompts[i])}.png") for img, i in zip(images, indices)]
    paths.append(save_grid(pixels_to_uint8(images), out / "grid.png", per_row=per_row))
    return paths
