"""`FewStepEval`: the Lightning callback that runs `run_eval` every `eval.every_kimg` thousand training images
and at the end of training, appends the rows to the leaderboard and logs them (wandb_log.py).

Thin by design: all the evaluation lives in run_eval.py, shared with `python -m fastgen.evaluate`. Images
seen come from the method's `kimg` property (FewStepMethod counts them, EDM-style); a module without it is
credited the global batch (batch size x world size) per training batch. The data floor (`real_data`) row is
appended once per run, before the first evaluation, with the DPM-Solver++ baseline on the method's teacher
(baseline.py: computed once per teacher and cached).

Online W&B without an API key must be caught before the Trainer starts (Lightning creates the W&B run before
any callback hook): the entry point calls `fastgen.eval.leaderboard.wandb_log.check_wandb_ready()` when logger=wandb.
"""

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from fastgen.eval.evaluator.baseline import baseline_rows
from fastgen.eval.metrics.fingerprint import timestamp
from fastgen.eval.metrics.suite import MetricSuite
from fastgen.eval.metrics.reference import check_reference
from fastgen.eval.evaluator.run_eval import real_data_row, run_eval
from fastgen.eval.evaluator.settings import eval_settings
from fastgen.eval.leaderboard.wandb_log import log_to_wandb, scalar_metrics


def _batch_size(batch):
    for key in ("prompt", "image", "latent"):
        if isinstance(batch, dict) and key in batch:
            return len(batch[key])
    return len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)


class FewStepEval(L.Callback):
    def __init__(self, cfg=None):
        self.settings = eval_settings(cfg)
        self.suite = None
        self.images_seen = 0
        self.next_kimg = self.settings.every_kimg
        self.run_id = None
        self.evaluated_at = None  # kimg of the last evaluation
        self.rows = []

    def setup(self, trainer, pl_module, stage):
        self.run_id = self.run_id or f"{self._run_config(pl_module).get('run_name', pl_module.name)}-{timestamp()}"
        check_reference(self.settings, trainer.datamodule)  # a missing reference stops the run before training

    @staticmethod
    def _run_config(pl_module):
        return getattr(pl_module, "run_config", None) or {}

    def _kimg(self, pl_module):
        kimg = getattr(pl_module, "kimg", None)
        return float(kimg) if kimg is not None else self.images_seen / 1000

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images_seen += _batch_size(batch) * trainer.world_size
        if self.next_kimg and self._kimg(pl_module) >= self.next_kimg:
            while self._kimg(pl_module) >= self.next_kimg:
                self.next_kimg += self.settings.every_kimg
            self.score_rows(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.evaluated_at != self._kimg(pl_module):  # not already evaluated at this very point
            self.score_rows(trainer, pl_module)

    def score_rows(self, trainer, pl_module):
        """Run the evaluation on every rank (sampling is sharded); rank 0 writes and logs."""
        config = self._run_config(pl_module)
        out_dir = config.get("paths", {}).get("output_dir") or trainer.default_root_dir
        datamodule = trainer.datamodule
        kimg = self.evaluated_at = self._kimg(pl_module)
        experiment = config.get("experiment_name") or config.get("run_name", "")
        if self.suite is None:
            self.suite = MetricSuite.load(self.settings, datamodule, pl_module.device)
            floor = real_data_row(datamodule, self.settings, experiment=experiment,
                                  run_id=f"{self.run_id}-real_data", suite=self.suite)
            if floor:
                self.rows.append(floor)
            self.rows += baseline_rows(pl_module, datamodule, self.settings, self.suite, out_dir=out_dir,
                                       experiment=experiment)
        rows = run_eval(pl_module, datamodule, self.settings, out_dir=out_dir, experiment=experiment,
                        train_seed=config.get("seed"), run_id=self.run_id, checkpoint=f"kimg={kimg:.3f}",
                        grid_tag=f"kimg{kimg:09.3f}", suite=self.suite)
        self.rows += rows
        if trainer.is_global_zero:
            metrics = {**scalar_metrics(rows), "eval/kimg": kimg}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                if isinstance(logger, WandbLogger):
                    log_to_wandb(logger, rows, trainer.global_step)
        return rows
