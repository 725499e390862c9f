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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mnist_teacher"):
        OmegaConf.register_new_resolver("mnist_teacher", mnist_teacher_path)


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
