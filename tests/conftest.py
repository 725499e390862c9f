"""Shared test fixtures: offline flags, and composing an experiment config as `python -m fastgen.fit` would."""

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fastgen.runtime.config import CONFIG_PATH, register_resolvers  # noqa: E402


def compose_experiment(name: str, tmp_path, overrides=()) -> DictConfig:
    """The config `python -m fastgen.fit experiment=NAME debug=fast *overrides` runs (debug=tiny among the overrides
    replaces debug=fast: it is fast's few steps on the tiny latent backbone), with outputs in tmp_path."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(
            "config",
            overrides=[
                f"experiment={name}",
                *(["debug=fast"] if "debug=tiny" not in overrides else []),
                f"experiment_name={name}",
                f"run_name=test_{name}",
                f"paths.runs_dir={tmp_path}/runs",
                f"paths.output_dir={tmp_path}/runs/test_{name}",
                "logger=csv",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core CPU: one intra-op thread is several times faster than two spin-waiting ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def experiment_cfg(tmp_path):
    return lambda name, *overrides: compose_experiment(name, tmp_path, overrides)


def free_port() -> int:
    """A TCP port no process listens on now (the OS picks it: bind to port 0), for a test's torch.distributed group."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
