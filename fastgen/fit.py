"""`python -m fastgen.fit experiment=NAME key=value ...`: train (and evaluate) one experiment.

Wiring only: check the config and the run folder (fastgen.runtime.config, fastgen.runtime.run_folder), build the backbone, the
method, the data module, callbacks and loggers from the Hydra config, then `trainer.fit`. Outputs go to
`runs/<run_name>/` (config.yaml, checkpoints, logs, samples, and the evaluation's leaderboard rows unless
`eval.leaderboard` names another CSV).
"""

from __future__ import annotations

import sys
import warnings

import hydra
import lightning as L
from pathlib import Path

from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from fastgen.runtime.build import build_from_config
from fastgen.runtime.config import CONFIG_PATH, register_resolvers, user_errors, validate_config
from fastgen.runtime.run_folder import (checkpoints_dir, refuse_fresh_run_over_old, remove_interrupted_saves,
                                resolve_ckpt_path, write_run_config)
from fastgen.runtime.lightning_plugins import (AtomicCheckpointIO, CheckpointOnStop, FSDP2Strategy, ResumableCSVLogger, ResumeState,
                              StopAtKimg)

register_resolvers()
# Two Lightning warnings that describe intended behaviour: frozen teachers and EMA copies stay in eval mode, and
# a checkpoint after step N of a manual-optimisation method holds the weights after N updates.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def build_callbacks(cfg: DictConfig, own_checkpoint: bool = True) -> list[L.Callback]:
    """The configured callbacks, then (in this order) the kimg stop, the resume state, the checkpoint at the stop
    and the evaluation: the last weights are saved before the end-of-training evaluation scores them.
    `own_checkpoint`: resuming from this run's checkpoint (so the run's CSV log is continued from it)."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [StopAtKimg(cfg.trainer.get("max_kimg")), ResumeState(log=own_checkpoint), CheckpointOnStop()]
    if cfg.method.get("controlnet") is not None:  # the batch's control image in; <run>/controlnet out at the end
        from fastgen.methods.controlnet import ControlFromBatch

        callbacks.append(ControlFromBatch(Path(cfg.paths.output_dir) / "controlnet"))
    if cfg.eval.get("enabled", False):
        from fastgen.eval.evaluator.callback import FewStepEval

        settings = OmegaConf.to_container(cfg.eval, resolve=True)
        settings["leaderboard"] = settings.get("leaderboard") or str(Path(cfg.paths.output_dir) / "leaderboard.csv")
        callbacks.append(FewStepEval(settings))
    return callbacks


def build_trainer(cfg: DictConfig, callbacks, method: L.LightningModule, resume: bool = False) -> L.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("max_kimg", None)
    if trainer_cfg.get("strategy") == "fsdp":
        trainer_cfg["strategy"] = FSDP2Strategy()
    elif trainer_cfg.get("strategy") == "ddp" and not method.automatic_optimization:
        # alternating G/D updates (manual optimisation) leave one network without gradients in each phase
        trainer_cfg["strategy"] = "ddp_find_unused_parameters_true"
    logger = False
    if cfg.get("logger") and "_target_" in cfg.logger:
        logger = instantiate(cfg.logger)
        if isinstance(logger, ResumableCSVLogger):  # a resumed run continues its metrics.csv
            logger.append = resume
    return instantiate(trainer_cfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])


def prepare_run_folder(cfg: DictConfig) -> str | None:
    """Check the config and the run folder before anything is built; the checkpoint to resume from (or None)."""
    validate_config(cfg)
    output_dir = cfg.paths.output_dir
    if rank_zero_only.rank == 0:
        refuse_fresh_run_over_old(output_dir, cfg.ckpt_path)
        if str(OmegaConf.select(cfg, "logger._target_", default="")).endswith("WandbLogger"):
            from fastgen.eval.leaderboard.wandb_log import check_wandb_ready

            check_wandb_ready(offline=cfg.logger.get("offline", False), verify=True)  # before any W&B run exists
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    if rank_zero_only.rank == 0:
        remove_interrupted_saves(output_dir)
        write_run_config(output_dir, OmegaConf.to_yaml(cfg, resolve=True))
    return ckpt_path


def run(cfg: DictConfig) -> L.LightningModule:
    ckpt_path = prepare_run_folder(cfg)
    L.seed_everything(cfg.seed, workers=True)
    method, datamodule = build_from_config(cfg)
    method.run_config = OmegaConf.to_container(cfg, resolve=True)
    own = ckpt_path is not None and Path(ckpt_path).resolve().parent == checkpoints_dir(cfg.paths.output_dir).resolve()
    trainer = build_trainer(cfg, build_callbacks(cfg, own_checkpoint=own), method, resume=ckpt_path is not None)
    if datamodule.batch_size % trainer.world_size:
        raise ValueError(f"data.batch_size={datamodule.batch_size} (global) is not divisible by {trainer.world_size} devices")
    datamodule.batch_size //= trainer.world_size
    trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path)
    return method


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    sys.exit(main())
