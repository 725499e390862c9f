"""Hydra plumbing shared by the entry points: config location, resolvers, clean user-facing errors."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_PATH = str(Path(__file__).parent / "configs")
ASSETS = Path(__file__).parent / "assets"


def mnist_teacher_path(cached: str) -> str:
    """The MNIST teacher: one trained here (exported to the cache path) if present, else the committed one."""
    return cached if (Path(cached) / "unet" / "config.json").is_file() else str(ASSETS / "mnist_teacher")


def points_teacher_path(runs_dir: str, path: str | None, shape: str) -> str:
    """The points teacher for a data config: runs/teacher_<data name>/teacher when `teacher_points` trained one here
    (always, for a user's file), else the one committed for the shipped shape."""
    from fastgen.data.points import data_name

    trained = Path(runs_dir) / f"teacher_{data_name(path, shape)}" / "teacher"
    if path or (trained / "unet" / "config.json").is_file():
        return str(trained)
    return str(ASSETS / "points_teacher" / str(shape))


def _points_name(path: str | None, shape: str) -> str:
    from fastgen.data.points import data_name

    return data_name(path, shape)


def _points_dim(path: str | None, shape: str, dim: int | None) -> int:
    from fastgen.data.points import data_dim

    return data_dim(path, shape, dim)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mnist_teacher"):
        OmegaConf.register_new_resolver("mnist_teacher", mnist_teacher_path)
    for name, resolver in (("points_teacher", points_teacher_path), ("points_name", _points_name),
                           ("points_dim", _points_dim)):  # the points testbed's data-dependent config values
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


@contextlib.contextmanager
def user_errors():
    """Turn the errors a user can fix (missing weights, bad data, bad config values) into one clear line."""
    from hydra.errors import InstantiationException

    from fastgen.data.errors import DataError
    from fastgen.networks import MissingWeightsError

    fixable = (MissingWeightsError, DataError, FileNotFoundError, ValueError)
    try:
        yield
    except (InstantiationException, *fixable) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) else e
        if not isinstance(cause, fixable):
            raise
        print(f"\nfastgen: error: {cause}", file=sys.stderr)
        sys.exit(2)
