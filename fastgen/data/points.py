"""Points with prompts: the exact-metric testbed's data, from a user's `.npz` or one of two shipped generators.

File (`data.path=FILE.npz`): arrays `x` (float [N, D]), `label` (int [N], 0..K-1) and `prompts` (str [K], the
caption of label k). Every label needs at least two points (one for each split).

Shipped shapes (no path; seeded by `data_seed`, `num_points` in all, spread evenly over the modes):
- `grid`: Gaussians (std `sigma`) centred on a 4x4 grid with spacing 1, centres at -1.5, -0.5, 0.5, 1.5 on each
  axis; one prompt per ROW, so each prompt has four modes and its conditional mean (x = 0) lies *between* modes:
  a sampler that returns the conditional mean lands where no data is. Prompt k: GRID_PROMPTS[k], row k from the
  bottom (y = -1.5 + k).
- `patterns`: `dim`-dimensional (32 by default) points, four random ±1 patterns per prompt (drawn once from
  `data_seed`; PATTERN_PROMPTS), each the centre of a Gaussian of std `sigma` in a random plane through it plus a
  thin isotropic `noise` in every coordinate: as in images, the evidence of a mode is spread over many coordinates
  while each mode is nearly low-dimensional (with isotropic 32-D modes even real-vs-real kNN precision and recall
  are ~0.75 at k = 3; here ~0.95), and each prompt's conditional mean is no pattern.
`sigma` null takes the shape's default (SIGMAS: grid 0.1 — ten standard deviations between neighbouring modes —
and patterns 0.5).

Split: stratified by label and seeded (`split_seed`): per label its points are permuted and the last
round(heldout_fraction · n) (at least one) are held out. Held-out points are the evaluation's reference; the
training points are what the model sees (and the real-vs-real floor).

Batches: {"x0": float [B, D] (model space: points are not images, nothing is encoded or clamped), "prompt":
list[str], "label": long [B]}.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from fastgen.data.errors import DataError
from fastgen.data.loading import shuffled_loader

SHAPES = ("grid", "patterns")
SPLITS = ("train", "heldout")
GRID_SIZE = 4
GRID_PROMPTS = ("a point in the bottom row", "a point in the second row", "a point in the third row",
                "a point in the top row")
PATTERN_PROMPTS = ("a pattern of family one", "a pattern of family two", "a pattern of family three",
                   "a pattern of family four")
PATTERNS_DIM = 32
PATTERN_RANK = 2
SIGMAS = {"grid": 0.1, "patterns": 0.5}


def grid_points(num_points: int, sigma: float, seed: int):
    """(x [N, 2], labels [N], prompts): N = num_points rounded down to a multiple of 16, equal counts per mode."""
    per_mode = num_points // GRID_SIZE**2
    if per_mode < 2:
        raise DataError(f"data.num_points={num_points} gives fewer than 2 points per mode of the 4x4 grid: use >= 32")
    g = torch.Generator().manual_seed(seed)
    centres = torch.arange(GRID_SIZE, dtype=torch.float64) - (GRID_SIZE - 1) / 2  # -1.5 .. 1.5
    cx, cy = torch.meshgrid(centres, centres, indexing="xy")  # mode m = row * 4 + column
    modes = torch.stack([cx.flatten(), cy.flatten()], dim=1)
    mode = torch.arange(GRID_SIZE**2).repeat_interleave(per_mode)
    x = modes[mode] + sigma * torch.randn(len(mode), 2, generator=g, dtype=torch.float64)
    return x.float(), mode // GRID_SIZE, list(GRID_PROMPTS)


def pattern_points(num_points: int, sigma: float, seed: int, dim: int = PATTERNS_DIM, patterns_per_prompt: int = 4,
                   noise: float = 0.03):
    """(x [N, dim], labels [N], prompts): ±1 patterns (patterns_per_prompt per prompt), each spread by N(0, sigma²)
    in a random plane through it (PATTERN_RANK dimensions: a low-dimensional mode, as images are), plus isotropic
    N(0, noise²) per coordinate."""
    k = len(PATTERN_PROMPTS)
    per_mode = num_points // (k * patterns_per_prompt)
    if per_mode < 2:
        raise DataError(f"data.num_points={num_points} gives fewer than 2 points per pattern: use >= {2 * k * patterns_per_prompt}")
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randint(0, 2, (k * patterns_per_prompt, dim), generator=g, dtype=torch.float64) * 2 - 1
    planes = torch.linalg.qr(torch.randn(k * patterns_per_prompt, dim, PATTERN_RANK, generator=g, dtype=torch.float64)).Q
    mode = torch.arange(k * patterns_per_prompt).repeat_interleave(per_mode)
    z = sigma * torch.randn(len(mode), PATTERN_RANK, 1, generator=g, dtype=torch.float64)
    x = patterns[mode] + (planes[mode] @ z).squeeze(-1) + noise * torch.randn(len(mode), dim, generator=g, dtype=torch.float64)
    return x.float(), mode // patterns_per_prompt, list(PATTERN_PROMPTS)


@functools.lru_cache(maxsize=4)
def _read_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"data.path={path}: not a readable .npz file ({e})") from None
    missing = [k for k in ("x", "label", "prompts") if k not in arrays]
    if missing:
        raise DataError(f"data.path={path}: missing array(s) {missing} (needs x [N, D], label [N], prompts [K])")
    x, label, prompts = arrays["x"], arrays["label"], arrays["prompts"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise DataError(f"data.path={path}: x must be finite floats of shape [N, D], got {x.dtype} {x.shape}")
    if label.shape != (len(x),) or not np.issubdtype(label.dtype, np.integer):
        raise DataError(f"data.path={path}: label must be integers of shape [{len(x)}], got {label.dtype} {label.shape}")
    if prompts.ndim != 1 or prompts.dtype.kind != "U" or len(prompts) == 0:
        raise DataError(f"data.path={path}: prompts must be a 1-D array of strings [K], got {prompts.dtype} {prompts.shape}")
    if label.min() < 0 or label.max() >= len(prompts):
        raise DataError(f"data.path={path}: labels must be in 0..{len(prompts) - 1} (one per prompt), "
                        f"got {label.min()}..{label.max()}")
    counts = np.bincount(label, minlength=len(prompts))
    if counts.min() < 2:
        raise DataError(f"data.path={path}: label {int(counts.argmin())} has {int(counts.min())} point(s); "
                        "every label needs at least 2 (train and held out)")
    if len(set(prompts.tolist())) != len(prompts):
        raise DataError(f"data.path={path}: prompts must be distinct (each names one label)")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(label.astype(np.int64)), [str(p) for p in prompts]


def load_points(path: str | None = None, shape: str = "grid", num_points: int = 8000, sigma: float | None = None,
                seed: int = 0, dim: int | None = None, noise: float = 0.03):
    """(x float [N, D], labels long [N], prompts list[str]) from `path`, else the shipped generator `shape`."""
    if path:
        x, labels, prompts = _read_npz(str(Path(path).expanduser()))
        return x.clone(), labels.clone(), list(prompts)
    if shape == "grid":
        if dim not in (None, 2):
            raise DataError(f"data.dim={dim}: the grid shape is 2-D (set data.dim=null)")
        return grid_points(num_points, SIGMAS[shape] if sigma is None else sigma, seed)
    if shape == "patterns":
        return pattern_points(num_points, SIGMAS[shape] if sigma is None else sigma, seed, dim or PATTERNS_DIM,
                              noise=noise)
    raise DataError(f"data.shape={shape!r} is not one of {SHAPES} (or set data.path=FILE.npz)")


def data_dim(path: str | None = None, shape: str = "grid", dim: int | None = None) -> int:
    """D of the points a data config describes (what the points model's input size must be)."""
    if path:
        return int(_read_npz(str(Path(path).expanduser()))[0].shape[1])
    if shape not in SHAPES:
        raise DataError(f"data.shape={shape!r} is not one of {SHAPES} (or set data.path=FILE.npz)")
    return 2 if shape == "grid" else int(dim or PATTERNS_DIM)


def data_name(path: str | None = None, shape: str = "grid") -> str:
    """`points_grid`, `points_patterns`, or `points_<file stem>`: the leaderboard's dataset and run names."""
    return f"points_{Path(path).stem if path else shape}"


def stratified_split(labels: torch.Tensor, heldout_fraction: float, seed: int):
    """(train, heldout) indices: per label a seeded permutation, the last max(1, round(f·n)) held out."""
    if not 0 < heldout_fraction < 1:
        raise DataError(f"data.heldout_fraction={heldout_fraction} must be in (0, 1)")
    g = torch.Generator().manual_seed(seed)
    train, heldout = [], []
    for label in range(int(labels.max()) + 1):
        rows = torch.nonzero(labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        n_out = min(len(rows) - 1, max(1, round(heldout_fraction * len(rows))))
        train.append(rows[:-n_out])
        heldout.append(rows[-n_out:])
    return torch.cat(train), torch.cat(heldout)


class PointsDataset(Dataset):
    def __init__(self, x, labels, prompts):
        self.x, self.labels, self.prompts = x, labels, prompts

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        label = int(self.labels[i])
        return {"x0": self.x[i], "prompt": self.prompts[label], "label": self.labels[i]}


class PointsDataModule(L.LightningDataModule):
    """Points and their prompts: training batches plus the evaluation's accessors (prompts, held-out reference)."""

    def __init__(self, path=None, shape="grid", num_points=8000, sigma=None, dim=None, noise=0.03,
                 heldout_fraction=0.2, data_seed=0, split_seed=0, batch_size=256, num_workers=0):
        super().__init__()
        self.save_hyperparameters()
        self.path, self.shape, self.batch_size, self.num_workers = path, shape, batch_size, num_workers
        self.name = data_name(path, shape)
        self._x = self._labels = self._indices = self._prompts = None

    def setup(self, stage=None):
        """Load (or generate) the points and split them, once; every accessor calls it."""
        if self._x is None:
            hp = self.hparams
            self._x, self._labels, self._prompts = load_points(hp.path, hp.shape, hp.num_points, hp.sigma,
                                                               hp.data_seed, hp.dim, hp.noise)
            self._indices = dict(zip(SPLITS, stratified_split(self._labels, hp.heldout_fraction, hp.split_seed)))

    @property
    def prompts(self) -> list[str]:
        """The caption of each label."""
        self.setup()
        return list(self._prompts)

    @property
    def dim(self) -> int:
        self.setup()
        return self._x.shape[1]

    def points(self, split="heldout"):
        """(x float [N, D], labels long [N]) of a split, in its fixed order."""
        if split not in SPLITS:
            raise DataError(f"split={split!r} is not one of {SPLITS}")
        self.setup()
        rows = self._indices[split]
        return self._x[rows].clone(), self._labels[rows].clone()

    def train_dataloader(self):
        x, labels = self.points("train")
        return shuffled_loader(PointsDataset(x, labels, self.prompts), self.batch_size, self.num_workers)

    def labels_of(self, prompts) -> torch.Tensor:
        """The label of each prompt (a DataError for a prompt this data set does not have)."""
        index = {p: k for k, p in enumerate(self.prompts)}
        unknown = sorted({p for p in prompts if p not in index})
        if unknown:
            raise DataError(f"prompt(s) {unknown[:3]} are not among the data's prompts {self.prompts}")
        return torch.tensor([index[p] for p in prompts], dtype=torch.long)

    def eval_prompts(self, n, seed=0):
        """`n` prompts, every label equally often (counts differ by at most one), in an order fixed by `seed`."""
        prompts = self.prompts
        labels = torch.arange(n) % len(prompts)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return [prompts[int(k)] for k in labels[order]]
