"""Trainer pieces fastgen adds to Lightning: atomic checkpoint writes, a stop at a number of kimg, FSDP as
fully sharded data parallelism (FSDP2), and a CSV log that a resumed run continues."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then `os.replace` it into place,
    so an interrupted save never leaves a truncated `last.ckpt`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class FSDP2Strategy(ModelParallelStrategy):
    """`trainer.strategy=fsdp`: PyTorch's FSDP2 (`fully_shard`) over every device of every node, no tensor
    parallelism, through Lightning's ModelParallelStrategy; the method shards its own networks in
    `configure_model` (`fastgen.methods.sharding`). Checkpoints are gathered into one file (the format every
    other strategy and `fastgen.evaluate` read). Unlike Lightning's FSDPStrategy (FSDP1) it trains the two-phase
    GAN methods and clips gradients by norm, on GPUs and on CPUs (gloo) alike."""

    def __init__(self, **kwargs):
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        """fastgen checkpoints leave out the frozen parts (text encoder, VAE, teacher): the keys are checked by the
        method's own rule (`FewStepMethod.check_checkpoint_keys`), then loaded without Lightning's every-key check."""
        module = self.lightning_module
        keys = torch.load(checkpoint_path, mmap=True, map_location="cpu", weights_only=True)["state_dict"].keys()
        module.check_checkpoint_keys(set(keys))
        strict, module.strict_loading = module.strict_loading, False
        try:
            return super().load_checkpoint(checkpoint_path, weights_only)
        finally:
            module.strict_loading = strict


class _AppendingWriter(ExperimentWriter):
    """Continues an existing metrics.csv: its columns are the starting header (new ones are added to it)."""

    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:  # Lightning deletes an existing metrics.csv here
        pass


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that with `append` set (`fastgen.fit` sets it when it resumes a run) the
    run's metrics.csv is continued, not deleted and started over."""

    append = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.append:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return super().experiment


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
