"""Trainer pieces fastgen adds to Lightning: atomic checkpoint writes and a stop at a number of kimg."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then `os.replace` it into place,
    so an interrupted save never leaves a truncated `last.ckpt`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class StopAtKimg(L.Callback):
    """Stop training once the method has seen `max_kimg` thousand images (summed over devices)."""

    def __init__(self, max_kimg: float | None):
        self.max_kimg = max_kimg

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.max_kimg is not None and pl_module.kimg >= self.max_kimg:
            trainer.should_stop = True


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """`last` -> this run's `checkpoints/last.ckpt` (None, with a message, when there is none yet)."""
    if ckpt_path != "last":
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
        return ckpt_path
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        print(f"[fastgen] resuming from {last}")
        return str(last)
    print(f"[fastgen] ckpt_path=last but {last} does not exist yet: starting a fresh run")
    return None
