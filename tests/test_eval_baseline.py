"""The DPM-Solver++ baseline on a method's teacher: evaluated once, then served from the cache."""

import pytest
import torch
from torch import nn

from fastgen.data.mnist import MNISTDataModule
from fastgen.eval.evaluator.baseline import baseline_rows, teacher_baseline, teacher_sha256
from fastgen.eval.leaderboard.io import read_leaderboard
from fastgen.eval.metrics.suite import MetricSuite
from fastgen.eval.evaluator.settings import eval_settings
from fastgen.networks import build_random


class Distilled(nn.Module):
    """What the baseline reads of a method: its backbone and its declared teacher and teacher guidance."""

    name, supported_steps, guidance_scale, teacher_guidance_scale = "student", (1,), 0.0, 2.0

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.teacher_unet = backbone, backbone.unet


@pytest.mark.usefixtures("one_thread")
def test_baseline_rows_are_computed_once_per_teacher(tmp_path, monkeypatch):
    settings = eval_settings({"num_samples": 4, "batch_size": 4, "baseline_steps": [1, 2],
                              "baseline_solvers": ["dpmsolver++", "sde-dpmsolver++"], "clip": {"enabled": False},
                              "aesthetic": {"enabled": False}, "fid": {"kid_subsets": 2},
                              "cache_dir": str(tmp_path / "cache"), "leaderboard": str(tmp_path / "board.csv")})
    datamodule = MNISTDataModule()
    method = Distilled(build_random("mnist_pixel", cache_dir=str(tmp_path / "cache")))
    suite = MetricSuite.load(settings, datamodule)
    rows = baseline_rows(method, datamodule, settings, suite)
    assert [(r["method"], r["steps"], r["nfe"], r["guidance"]) for r in rows] == [
        ("dpm_solver", 1, 2, 2.0), ("dpm_solver", 2, 4, 2.0),
        ("dpm_solver_sde", 1, 2, 2.0), ("dpm_solver_sde", 2, 4, 2.0)]
    assert len(list((tmp_path / "cache" / "baselines").glob("*.json"))) == 2  # one file per solver

    monkeypatch.setattr("fastgen.eval.evaluator.baseline.run_eval", lambda *a, **k: pytest.fail("re-sampled the baseline"))
    again = baseline_rows(method, datamodule, settings, suite)
    assert [r["fid"] for r in again] == pytest.approx([r["fid"] for r in rows])
    assert len(read_leaderboard(tmp_path / "board.csv")) == 4  # cached rows are not appended twice
    before = teacher_sha256(method.teacher_unet)
    with torch.no_grad():
        next(method.teacher_unet.parameters()).add_(1.0)  # another teacher: another cache key
    assert teacher_sha256(method.teacher_unet) != before


def test_an_unknown_baseline_solver_is_named(tmp_path):
    method = Distilled(build_random("mnist_pixel", cache_dir=str(tmp_path / "cache")))
    with pytest.raises(ValueError, match="eval.baseline_solvers: 'dpmsolver' is not one of"):
        teacher_baseline(method, 2.0, "dpmsolver")
    method.teacher_unet = None
    with pytest.raises(ValueError, match="declares no teacher"):
        teacher_baseline(method, 2.0)
