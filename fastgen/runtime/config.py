"""Hydra plumbing shared by the entry points: config location, resolvers, one validation pass over the composed
config, clean user-facing errors."""

from __future__ import annotations

import contextlib
import numbers
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "configs")
ASSETS = Path(__file__).resolve().parents[1] / "assets"


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


class ConfigError(ValueError):
    """A config value a run cannot start with; the message names every such key and what to set."""


def _number(value, positive=True):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and (value > 0 or not positive)


def _integer(value, low):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _step_list(value):
    return isinstance(value, (list, tuple)) and all(_integer(v, 1) for v in value)


# (key, check, what it must be); checked when the key is present
_TRAIN_CHECKS = (
    ("seed", lambda v: _integer(v, 0), "a non-negative integer"),
    ("run_name", lambda v: isinstance(v, str) and v.strip() != "" and ".." not in Path(v).parts,
     "a folder name under paths.runs_dir (no '..')"),
    ("ckpt_path", lambda v: v is None or isinstance(v, str), "null, last, or a checkpoint path"),
    ("trainer.max_kimg", lambda v: v is None or _number(v), "a positive number of thousands of training images "
                                                            "(e.g. trainer.max_kimg=30) or null"),
    ("trainer.max_steps", lambda v: v == -1 or _integer(v, 1), "a positive integer, or -1 (no limit)"),
    ("trainer.max_epochs", lambda v: v is None or v == -1 or _integer(v, 1), "a positive integer, -1 or null"),
    ("trainer.max_time", lambda v: v is None or isinstance(v, dict) or (isinstance(v, str) and re.fullmatch(
        r"\d+:\d{2}:\d{2}:\d{2}", v)), 'null or "DD:HH:MM:SS" (e.g. trainer.max_time="00:12:00:00")'),
    ("trainer.log_every_n_steps", lambda v: _integer(v, 0), "a non-negative integer"),
    ("data.batch_size", lambda v: _integer(v, 1), "a positive integer"),
    ("data.num_workers", lambda v: _integer(v, 0), "a non-negative integer"),
    ("callbacks.checkpoint.every_n_train_steps", lambda v: v is None or _integer(v, 0), "a non-negative integer"),
)
_EVAL_CHECKS = (
    ("eval.steps", _step_list, "a list of step counts >= 1 (e.g. eval.steps=[1,2,4])"),
    ("eval.baseline_steps", _step_list, "a list of step counts >= 1, or [] (no baseline rows)"),
    ("eval.num_samples", lambda v: _integer(v, 1), "a positive integer"),
    ("eval.batch_size", lambda v: _integer(v, 1), "a positive integer"),
    ("eval.seed", lambda v: _integer(v, 0), "a non-negative integer"),
    ("eval.every_kimg", lambda v: v is None or _number(v), "a positive number of kimg, or null"),
    ("eval.leaderboard", lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a CSV path, or null"),
)


def _missing_keys(cfg: DictConfig, prefix: str) -> list[str]:
    node = OmegaConf.select(cfg, prefix)
    if not isinstance(node, DictConfig):
        return []
    missing = []
    for key in node:
        full = f"{prefix}.{key}"
        if OmegaConf.is_missing(node, key):
            missing.append(full)
        elif isinstance(node._get_node(key), DictConfig):
            missing += _missing_keys(cfg, full)
    return missing


def validate_config(cfg: DictConfig, train: bool = True, built: bool = True) -> None:
    """One pass over the composed config before anything is built: every value a run would otherwise trip over
    minutes later (after model loading, or after the first training step) is reported at once, in one line.

    `train`: the training keys (fastgen.fit); the evaluation keys are checked when an evaluation runs.
    `built`: model, method and data are built from this config (not from a checkpoint's), so none may be `???`."""
    problems = [f"{key} is not set ({key}=...)" for group in (("model", "method", "data") if built else ())
                for key in _missing_keys(cfg, group)]
    checks = (_TRAIN_CHECKS if train else ()) + (_EVAL_CHECKS if not train or cfg.eval.get("enabled", False) else ())
    for key, ok, what in checks:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        try:
            value = node[leaf]
        except Exception as e:  # `???` or an interpolation that does not resolve
            problems.append(f"{key}: {str(e).splitlines()[0]}")
            continue
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if not ok(value):
            problems.append(f"{key}={value!r} must be {what}")
    if problems:
        raise ConfigError("; ".join(problems))


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
