"""`experiment=teacher_points` end to end: a short training whose energy distance falls, its export loading as the
points experiments' teacher, and the committed teachers."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from fastgen.runtime.config import ASSETS
from fastgen.eval.evaluator.callback import FewStepEval
from fastgen.eval.evaluator.run_eval import run_eval
from fastgen.fit import run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SHORT = ["trainer.max_steps=600", "method.warmup_steps=50", "method.ema_decay=0.99", "data.batch_size=128", "data.num_points=1600", "eval.enabled=true",
         "eval.num_samples=400", "eval.batch_size=400", "eval.steps=[8]", "eval.grids=false"]


def test_a_short_teacher_training_lowers_the_energy_distance_and_exports_a_loadable_teacher(experiment_cfg, tmp_path):
    cfg = experiment_cfg("teacher_points", *SHORT, f"eval.leaderboard={tmp_path}/board.csv")
    untrained = instantiate(cfg.method, backbone=instantiate(cfg.model), _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all")
    settings = {**cfg.eval, "leaderboard": None}
    before = run_eval(untrained, datamodule, settings)[0]["energy_distance"]
    method = run(cfg)
    evaluation = next(c for c in method.trainer.callbacks if isinstance(c, FewStepEval))
    after = evaluation.rows[-1]  # its row at the end of training
    assert after["method"] == "diffusion" and after["steps"] == 8
    assert after["energy_distance"] < 0.5 * before, (before, after["energy_distance"])
    # exported where the points experiments look for a grid teacher trained in this runs folder
    teacher = tmp_path / "runs" / "teacher_points_grid" / "teacher"
    assert json.loads((teacher / "unet" / "config.json").read_text())["_class_name"] == "PointsMLP"
    ufogen = experiment_cfg("ufogen_points")
    assert Path(ufogen.model.pretrained) == teacher
    assert torch.equal(instantiate(ufogen.model).unet.proj_out.weight, method.ema_unet.proj_out.weight)


@pytest.mark.parametrize("shape, dim", [("grid", 2), ("patterns", 32)])
def test_the_committed_teachers_load_for_their_shapes_and_use_the_mnist_text_encoder(experiment_cfg, shape, dim):
    cfg = experiment_cfg("dpm_solver_points", f"data.shape={shape}")
    assert Path(cfg.model.pretrained) == ASSETS / "points_teacher" / shape
    backbone = instantiate(cfg.model)
    assert backbone.sample_shape == (dim,) and backbone.prediction_type == "v_prediction"
    assert backbone.alphas_cumprod[-1] == 0
    record = json.loads((ASSETS / "points_teacher" / shape / "text_encoder.json").read_text())
    from fastgen.eval.evaluator.baseline import teacher_sha256

    assert teacher_sha256(backbone.text_encoder) == record["sha256"]  # the encoder it was trained with
