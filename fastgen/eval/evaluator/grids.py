"""Sample grids: the same prompts and noises for every method and step count, so grids compare side by side.

With few distinct prompts (MNIST's ten digit prompts) the grid has one row per prompt, ordered by `order_key`
(the digit), holding that prompt's first samples; otherwise it shows the first samples in reading order.
"""

from pathlib import Path

from torchvision.utils import make_grid, save_image

from fastgen.core.files import atomic_path

MAX_PROMPT_ROWS = 16


def grid_indices(prompts, per_row=10, rows=8, order_key=None):
    """(sample indices, images per row) of the grid for this prompt list."""
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) > MAX_PROMPT_ROWS:
        return list(range(min(len(prompts), per_row * rows))), per_row
    if order_key is not None:
        distinct.sort(key=order_key)
    by_prompt = {p: [i for i, q in enumerate(prompts) if q == p][:per_row] for p in distinct}
    width = min(len(v) for v in by_prompt.values())
    return [i for p in distinct for i in by_prompt[p][:width]], width


def save_grid(images, path, per_row):
    """Write uint8 images [N, C, H, W] as one PNG grid (atomically)."""
    grid = make_grid(images.float() / 255, nrow=per_row, padding=2, pad_value=0.5)
    with atomic_path(path, suffix=".png") as tmp:
        save_image(grid, tmp)
    return Path(path)
