"""FewStepEval inside a real Lightning fit: evaluations every N kimg and at the end, metrics logged through
CSV and offline W&B loggers (offline run files written), rows appended to the leaderboard."""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from fastgen.eval.evaluator.callback import FewStepEval
from fastgen.eval.leaderboard.io import read_leaderboard
from fastgen.eval.leaderboard.wandb_log import WandbNotReadyError, check_wandb_ready
from fakes import FakeBackbone, FakeDataModule, FakeMethod


class TrainableFake(L.LightningModule):
    """FakeMethod's sampler as a LightningModule with a training step (no `kimg`: the callback counts images)."""

    name = "fake"
    supported_steps = None
    guidance_scale = 0.0
    teacher_unet = None  # the method contract (FewStepMethod): no teacher, so no baseline rows

    def __init__(self):
        super().__init__()
        self.backbone = FakeBackbone()
        self.sampler = FakeMethod()
        self.sampler.backbone = self.backbone

    def sample(self, noise, prompts, steps, generator=None):
        return self.sampler.sample(noise, prompts, steps, generator)

    def nfe(self, steps):
        return steps

    def training_step(self, batch, batch_idx):
        return (self.backbone.scale - batch["image"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TrainableData(L.LightningDataModule, FakeDataModule):
    def __init__(self):
        L.LightningDataModule.__init__(self)
        FakeDataModule.__init__(self)

    def train_dataloader(self):
        items = [{"image": torch.rand(1, 16, 16) * 2 - 1, "prompt": "a handwritten digit one"} for _ in range(16)]
        return DataLoader(items, batch_size=4)


@pytest.mark.usefixtures("one_thread")
def test_callback_evaluates_every_kimg_and_logs_offline_wandb(tmp_path):
    cfg = {"num_samples": 4, "batch_size": 4, "steps": [1, 2], "every_kimg": 0.008, "clip": {"enabled": False},
           "aesthetic": {"enabled": False}, "fid": {"kid_subsets": 2}, "cache_dir": str(tmp_path / "cache"),
           "leaderboard": str(tmp_path / "board.csv")}
    callback = FewStepEval(cfg)
    loggers = [CSVLogger(tmp_path, name="csv"), WandbLogger(save_dir=str(tmp_path), offline=True, project="t")]
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=loggers, callbacks=[callback], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(TrainableFake(), datamodule=TrainableData())
    loggers[1].experiment.finish()

    board = read_leaderboard(tmp_path / "board.csv")
    assert board["method"].tolist() == ["real_data"] + ["fake"] * 4  # floor + 2 steps x (8, 16 images = train end)
    assert board["checkpoint"].dropna().unique().tolist() == ["kimg=0.008", "kimg=0.016"]
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "eval/fid@1step" in metrics and "eval/fid@2step" in metrics and "eval/ms_per_image@2step" in metrics
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))
    assert len(list((tmp_path / "samples").glob("fake-1step-kimg*.png"))) == 2


@pytest.mark.usefixtures("one_thread")
def test_rows_record_the_precision_sampling_ran_in_not_the_trainers_flag(tmp_path):
    """Under bf16-mixed the callback samples outside autocast with the fp32 weights: the rows say fp32."""
    cfg = {"num_samples": 4, "batch_size": 4, "steps": [1], "clip": {"enabled": False}, "aesthetic": {"enabled": False},
           "fid": {"kid_subsets": 2}, "latency": {"enabled": False}, "grids": False,
           "cache_dir": str(tmp_path / "cache"), "leaderboard": str(tmp_path / "board.csv")}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False, callbacks=[FewStepEval(cfg)],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(TrainableFake(), datamodule=TrainableData())
    board = read_leaderboard(tmp_path / "board.csv")
    assert board.loc[board["method"] == "fake", "precision"].tolist() == ["fp32"]


def test_check_wandb_ready_needs_a_key_only_online(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(WandbNotReadyError, match="WANDB_MODE=offline"):
        check_wandb_ready()
    check_wandb_ready(offline=True)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef0123456789abcdef01234567\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    check_wandb_ready()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    check_wandb_ready()
