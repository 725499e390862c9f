"""`eval=points` through the same `run_eval` path as images: leaderboard rows with the exact metrics, the floor row,
the scatter plots; a sampler that returns each prompt's conditional mean is caught."""

import csv

import pytest
import torch
from torch import nn

from fastgen.data.points import PointsDataModule
from fastgen.eval.leaderboard.io import COLUMNS
from fastgen.eval.evaluator.run_eval import real_data_row, run_eval
from fastgen.eval.evaluator.settings import eval_settings
from fastgen.networks.points import build_points_random


@pytest.fixture(scope="module")
def backbone():
    return build_points_random(2, hidden_dim=16, num_layers=1)


def _settings(tmp_path, **extra):
    return {"metrics": "points", "num_samples": 200, "batch_size": 64, "steps": [1, 2],
            "fid": {"enabled": False}, "clip": {"enabled": False}, "aesthetic": {"enabled": False},
            "latency": {"enabled": False}, "leaderboard": str(tmp_path / "board.csv"), **extra}


class FromData(nn.Module):
    """A stub method: for each prompt, training points of its label (`mode="data"`), or the label's mean ("mean")."""

    supported_steps = None
    guidance_scale = 0.0

    def __init__(self, backbone, datamodule, mode):
        super().__init__()
        self.backbone, self.datamodule, self.mode, self.name = backbone, datamodule, mode, f"stub_{mode}"
        self.x, self.labels = datamodule.points("train")

    def nfe(self, steps):
        return steps

    def sample(self, noise, prompts, steps, generator=None):
        out = []
        for i, label in enumerate(self.datamodule.labels_of(prompts).tolist()):
            pool = self.x[self.labels == label]
            out.append(pool.mean(0) if self.mode == "mean" else pool[int(noise[i].abs().sum() * 1e4) % len(pool)])
        return torch.stack(out)


def test_points_rows_score_a_data_sampler_near_the_floor_and_catch_the_conditional_mean(backbone, tmp_path):
    dm = PointsDataModule(num_points=1600)
    settings = _settings(tmp_path)
    floor = real_data_row(dm, settings, experiment="points_test")
    assert floor["method"] == "real_data" and floor["prompt_accuracy"] == 1.0
    assert floor["knn_precision"] > 0.8 and floor["knn_recall"] > 0.8 and floor["energy_distance"] > 0
    good = run_eval(FromData(backbone, dm, "data"), dm, settings, out_dir=tmp_path, experiment="points_test")
    mean = run_eval(FromData(backbone, dm, "mean"), dm, settings, out_dir=tmp_path, experiment="points_test")
    assert [r["steps"] for r in good] == [1, 2]
    g, m = good[0], mean[0]
    assert g["energy_distance"] < 3 * floor["energy_distance"] and g["knn_recall"] > 0.8 and g["prompt_accuracy"] == 1.0
    # each prompt's mean lies between its modes: no held-out point near it, and one point covers no mode
    assert m["knn_precision"] == 0.0 and m["knn_recall"] == 0.0 and m["energy_distance"] > 10 * g["energy_distance"]
    assert m["prompt_accuracy"] == 1.0  # the right row, though: accuracy alone would not catch it
    assert g["extractor"] == "points:knn_k3" and g["reference"] == "points_grid:heldout:320" and g["reference_sha256"]
    # the CSV: the schema's columns first, the points metrics among them, one row per (method, steps) + the floor
    with open(tmp_path / "board.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:len(COLUMNS)] == list(COLUMNS)
    assert {"energy_distance", "knn_precision", "knn_recall", "prompt_accuracy"} <= set(COLUMNS)
    assert [r["method"] for r in rows] == ["real_data", "stub_data", "stub_data", "stub_mean", "stub_mean"]
    assert float(rows[1]["energy_distance"]) == pytest.approx(g["energy_distance"])
    assert (tmp_path / "samples" / "stub_data-1step.png").stat().st_size > 1000


def test_higher_dimensional_points_are_plotted_in_the_held_out_principal_plane(backbone, tmp_path):
    from fastgen.eval.evaluator.points import PointsMetricSuite

    dm = PointsDataModule(shape="patterns", num_points=640)
    suite = PointsMetricSuite.load(eval_settings(_settings(tmp_path)), dm)
    x, labels = dm.points("heldout")
    plane = suite.plane(x)
    centred = x - x.mean(0)
    # the projection keeps the most variance a plane can: that of the top two singular directions
    top2 = torch.linalg.svdvals(centred)[:2].square().sum()
    assert plane.shape == (len(x), 2) and plane.square().sum() == pytest.approx(float(top2), rel=1e-4)
    path = suite.save_scatter(x, [dm.prompts[k] for k in labels.tolist()], tmp_path / "patterns.png", "held out")
    assert path.stat().st_size > 1000


def test_points_metrics_refuse_image_data_and_too_few_samples(backbone, tmp_path):
    from fastgen.eval.metrics.suite import MetricSuite
    from fastgen.eval.evaluator.points import PointsMetricSuite

    class NotPoints:
        name = "mnist"

    with pytest.raises(ValueError, match="needs data=points"):
        PointsMetricSuite.load(eval_settings(_settings(tmp_path)), NotPoints())
    dm = PointsDataModule(num_points=1600)
    with pytest.raises(ValueError, match="raise eval.num_samples or lower eval.points.k"):
        real_data_row(dm, _settings(tmp_path, num_samples=8))
    with pytest.raises(ValueError, match="eval.metrics='pixels'"):
        run_eval(FromData(backbone, dm, "data"), dm, _settings(tmp_path, metrics="pixels"))
    with pytest.raises(ValueError, match="holds points, not images: evaluate it with eval=points"):
        MetricSuite.load(eval_settings(_settings(tmp_path, metrics="images")), dm)  # e.g. fastgen.evaluate without eval=points
