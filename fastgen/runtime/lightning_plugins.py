"""Trainer pieces fastgen adds to Lightning: atomic checkpoint writes, a checkpoint at every stop, a stop at a
number of kimg, FSDP as fully sharded data parallelism (FSDP2), and a CSV log and RNG state that a resumed run
continues exactly where its checkpoint left them."""

from __future__ import annotations

import csv
import io
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from fastgen.core.files import save_torch_atomic, write_text_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then `os.replace` it into place, so an
    interrupted save never leaves a truncated `last.ckpt`; a save that fails removes its temporary file (one killed
    outright leaves it behind, and `fastgen.runtime.run_folder` removes it when the run starts again)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_torch_atomic(checkpoint, path)


class CheckpointOnStop(L.Callback):
    """Save `last.ckpt` when training ends (max_steps, trainer.max_kimg, max_time or the data): Lightning's
    ModelCheckpoint saves only every `every_n_train_steps`, so the last steps of a run were lost. Listed before the
    evaluation callback, so the weights the end-of-training leaderboard rows come from are on disk before they are
    scored. Saved even when the step's periodic checkpoint exists, as the final one (ResumeState keeps the whole
    log when a run is extended from it)."""

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step == getattr(self, "start_step", None) or trainer.fast_dev_run:
            return  # nothing trained in this process: the checkpoint it resumed from holds these weights
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


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


def _read_csv_rows(path) -> tuple[list[str], list[dict]]:
    """(header, complete rows) of a CSV file; a last line cut short by a kill (no line end) is left out."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _write_csv_rows(path, header, rows) -> None:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())


class _Writer(ExperimentWriter):
    """Lightning's CSV writer, plus: `append` continues an existing metrics.csv (Lightning deletes it), a header
    change rewrites the file atomically (Lightning rewrites it in place, which a kill truncates), and `rows` counts
    the rows on disk, which every checkpoint records (ResumeState) so a resumed run can drop the rows past it."""

    def __init__(self, log_dir: str, append: bool):
        self.append = append
        super().__init__(log_dir)
        self.metrics_keys, self.rows = [], 0
        if append and os.path.isfile(self.metrics_file_path):
            self.keep_rows(None)  # its header and rows; a line a kill cut short goes (rows are appended after it)

    def _check_log_dir_exists(self) -> None:
        if not self.append:
            super()._check_log_dir_exists()

    def save(self) -> None:
        written = len(self.metrics)
        super().save()
        self.rows += written

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _write_csv_rows(self.metrics_file_path, fieldnames, _read_csv_rows(self.metrics_file_path)[1])

    def keep_rows(self, n: int | None) -> int:
        """Keep the first `n` rows of metrics.csv (all if None, less a line cut short); the number dropped."""
        header, rows = _read_csv_rows(self.metrics_file_path)
        kept = rows if n is None else rows[:n]
        if header:
            _write_csv_rows(self.metrics_file_path, header, kept)
        self.metrics_keys, self.rows = header, len(kept)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that with `append` set (`fastgen.fit` sets it when it resumes a run) the
    run's metrics.csv is continued, not deleted and started over (ResumeState then drops the rows past the
    checkpoint), and that every write is atomic or append-only."""

    append = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _Writer(log_dir=self.log_dir, append=self.append)
        return self._experiment


def _rng_states() -> dict:
    """The global RNG states (torch CPU and CUDA, numpy, Python), as tensors and primitives (weights_only loads)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                          gauss], "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(L.Callback):
    """What a checkpoint holds besides weights, optimizers and the data position (fastgen.data.loading.
    ResumableLoader) so that a resumed run continues as if it had never stopped: the global RNG states, and the
    CSV log's position -- the rows on disk, plus the row of the checkpoint's own step, which Lightning logs only
    after the checkpoint callback has saved. Restored when training starts (the last hook before the first batch
    is fetched). `log=False` (resuming another run's checkpoint) leaves this run's log alone."""

    def __init__(self, log: bool = True):
        self.log, self.loaded, self.at_batch_end, self.trainer = log, None, False, None

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_batch_end = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.at_batch_end = True  # the checkpoint callback saves after every other callback's hook

    def on_train_end(self, trainer, pl_module):
        self.at_batch_end = False

    def state_dict(self) -> dict:
        state = {"rng": _rng_states(), "log_rows": None, "log_pending": None}
        logger = _csv_logger(self.trainer)
        if logger is not None and self.trainer.is_global_zero and self.at_batch_end:
            logger.save()
            state["log_rows"] = logger.experiment.rows
            state["log_pending"] = _pending_row(self.trainer)
        # saved when training ended (CheckpointOnStop): every row stays, the end-of-training evaluation's included
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.loaded = state_dict

    def on_train_start(self, trainer, pl_module):
        if self.loaded is None:
            return
        _set_rng_states(self.loaded["rng"])
        logger = _csv_logger(trainer)
        if self.log and logger is not None and trainer.is_global_zero:
            dropped = logger.experiment.keep_rows(self.loaded["log_rows"])
            pending = self.loaded.get("log_pending")
            if pending:
                logger.log_metrics(pending["metrics"], step=pending["step"])
                logger.save()
            if dropped:
                print(f"[fastgen] {logger.experiment.metrics_file_path}: {dropped} row(s) logged after the checkpoint "
                      "were dropped (those steps run again)")
        self.loaded = None


def _csv_logger(trainer) -> ResumableCSVLogger | None:
    return next((lg for lg in (trainer.loggers if trainer else []) if isinstance(lg, ResumableCSVLogger)), None)


def _pending_row(trainer) -> dict | None:
    """The row Lightning is about to log for this batch ({"step", "metrics"}), computed as its LoggerConnector
    does (`update_train_step_metrics` -> `log_metrics`), or None when this step logs nothing."""
    connector = trainer._logger_connector
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return None
    metrics = convert_tensors_to_scalars(connector.metrics["log"])
    if not metrics:
        return None
    step = metrics.pop("step", None)
    if step is None:
        metrics.setdefault("epoch", trainer.current_epoch)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return {"step": int(step), "metrics": metrics}  # Python numbers: the checkpoint still loads weights_only


class StopAtKimg(L.Callback):
    """Stop training once the method has seen `max_kimg` thousand images (summed over devices); a run resumed at
    or past that length trains no further step."""

    def __init__(self, max_kimg: float | None):
        self.max_kimg = max_kimg

    def _check(self, trainer, pl_module):
        if self.max_kimg is not None and pl_module.kimg >= self.max_kimg:
            trainer.should_stop = True

    def on_train_start(self, trainer, pl_module):
        self._check(trainer, pl_module)
        if trainer.should_stop:
            print(f"[fastgen] the checkpoint is at {pl_module.kimg:g} kimg, trainer.max_kimg={self.max_kimg:g}: no "
                  "training step left (raise trainer.max_kimg to train further)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._check(trainer, pl_module)
