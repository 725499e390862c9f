"""The entry point: every experiment composes; the teacher trains, checkpoints (no frozen parts) and resumes."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgen.fit import run

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(experiment_cfg, name):
    cfg = experiment_cfg(name)
    assert cfg.method._target_.startswith("fastgen.methods.")
    assert cfg.model._target_.startswith("fastgen.networks.")


def test_teacher_trains_checkpoints_and_resumes(experiment_cfg, tmp_path):
    method = run(experiment_cfg("teacher_mnist", "model=mnist_pixel_random"))
    ckpt_file = tmp_path / "runs/test_teacher_mnist/checkpoints/last.ckpt"
    ckpt = torch.load(ckpt_file, weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("backbone.unet.") for k in keys) and any(k.startswith("ema_unet.") for k in keys)
    assert not any(k.startswith(("backbone.text_encoder.", "backbone.vae.")) for k in keys)
    assert ckpt["fastgen_config"]["method"]["_target_"] == "fastgen.methods.teacher.TeacherTraining"
    assert method.images_seen.item() == 8  # 2 steps x batch 4
    # the checkpoint after the last step holds that step's EMA (updated inside the step, before the callbacks)
    final = method.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in ckpt["state_dict"].items() if k.startswith("ema_unet."))
    # the exported teacher is a diffusers-layout backbone that loads again
    assert (tmp_path / "runs/test_teacher_mnist/teacher/unet/config.json").is_file()

    resumed = run(experiment_cfg("teacher_mnist", "model=mnist_pixel_random", "ckpt_path=last", "trainer.max_steps=3"))
    assert resumed.images_seen.item() == 12  # continued from 8, one more step
    assert resumed.trainer.global_step == 3
    # the resumed run continued the run's CSV log (Lightning's CSVLogger would have started it over)
    with open(tmp_path / "runs/test_teacher_mnist/logs/metrics.csv") as f:
        assert [row["step"] for row in csv.DictReader(f) if row.get("train/diffusion")] == ["0", "1", "2"]


def _fit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastgen.fit", *args], capture_output=True, text=True, timeout=timeout)


def test_unknown_experiment_lists_choices(tmp_path):
    proc = _fit("experiment=no_such_experiment", f"paths.runs_dir={tmp_path}")
    assert proc.returncode != 0
    assert "Could not find 'experiment/no_such_experiment'" in proc.stderr and "teacher_mnist" in proc.stderr


def test_missing_sd15_weights_fail_fast_with_the_key_to_set(tmp_path):
    proc = _fit("experiment=teacher_mnist", "model=sd15", f"model.pretrained={tmp_path}/nowhere", f"paths.runs_dir={tmp_path}")
    assert proc.returncode == 2
    assert "model.pretrained=/path/to/stable-diffusion-v1-5" in proc.stderr
    assert "Traceback" not in proc.stderr
