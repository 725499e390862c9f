"""`python -m fastgen.fit experiment=NAME key=value ...`: train (and evaluate) one experiment.

Wiring only: build the backbone, the method, the data module, callbacks and loggers from the
Hydra config, then `trainer.fit`. Outputs go to `runs/<run_name>/` (config, checkpoints, logs,
samples, leaderboard rows).
"""

from __future__ import annotations

import sys
import warnings

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fastgen.config import CONFIG_PATH, register_resolvers, user_errors
from fastgen.training import AtomicCheckpointIO, FSDP2Strategy, ResumableCSVLogger, StopAtKimg, resolve_ckpt_path

register_resolvers()
# Two Lightning warnings that describe intended behaviour: frozen teachers and EMA copies stay in eval mode, and
# a checkpoint after step N of a manual-optimisation method holds the weights after N updates.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks.append(StopAtKimg(cfg.trainer.get("max_kimg")))
    if cfg.eval.get("enabled", False):
        from fastgen.eval.callback import FewStepEval

        callbacks.append(FewStepEval(OmegaConf.to_container(cfg.eval, resolve=True)))
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
        if cfg.logger._target_.endswith("WandbLogger"):
            from fastgen.eval.wandb_log import check_wandb_ready

            check_wandb_ready(offline=cfg.logger.get("offline", False))  # before any run is created
        logger = instantiate(cfg.logger)
        if isinstance(logger, ResumableCSVLogger):  # a resumed run continues its metrics.csv
            logger.append = resume
    return instantiate(trainer_cfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])


def run(cfg: DictConfig) -> L.LightningModule:
    L.seed_everything(cfg.seed, workers=True)
    output_dir = cfg.paths.output_dir
    backbone = instantiate(cfg.model)  # missing weights fail here, before anything trains
    method = instantiate(cfg.method, backbone=backbone, _convert_="all")
    method.run_config = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    trainer = build_trainer(cfg, build_callbacks(cfg), method, resume=ckpt_path is not None)
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
