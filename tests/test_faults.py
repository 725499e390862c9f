"""Fault injection (issue 18): careless overrides, kill -9, corrupt files. Every case either stops with one clear
line naming the file or key (and what to set), or completes; either way no committed file, checkpoint, log row or
leaderboard row is lost, duplicated or silently wrong.

The acceptance cases run the real entry point as a subprocess (`debug=fast` on the real run folder layout, kill -9
at random points of a `ufogen_mnist` debug-length run and resume); the rest call `fastgen.fit.run` in-process.
Kill points are random: FASTGEN_FAULT_SEED=<n> replays one (the seed is in the failure message).
"""

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_experiment
from PIL import Image

from fastgen.runtime.config import user_errors
from fastgen.data import DataError
from fastgen.fit import build_callbacks, run
from fastgen.runtime.lightning_plugins import AtomicCheckpointIO

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
COMMITTED_TEACHER = ROOT / "fastgen" / "assets" / "mnist_teacher"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
QUIET = ["~callbacks.progress", "trainer.enable_progress_bar=false"]
SMALL_EVAL = ["eval=mnist", "eval.enabled=true", "eval.num_samples=8", "eval.batch_size=8", "eval.steps=[1]",
              "eval.baseline_steps=[]", "eval.fid.enabled=false", "eval.latency.enabled=false", "eval.grids=false"]


def snapshot(folder):
    """{relative path: sha256} of every file under `folder` (to show nothing in it changed)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def log_rows(run_dir):
    with open(Path(run_dir) / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_rows(run_dir):
    return [row for row in log_rows(run_dir) if any(row.get(k) for k in row if k.startswith("train/"))]


def state_dict(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def one_error_line(capsys, *needles):
    """The run ended with exit status 2 and one `fastgen: error:` line holding every needle, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fastgen: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def fails_cleanly(cfg, capsys, *needles):
    with pytest.raises(SystemExit) as info, user_errors():
        run(cfg)
    assert info.value.code == 2
    return one_error_line(capsys, *needles)


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if fastgen.fit builds anything (model, method, data, trainer): the check must come first."""
    import fastgen.fit

    def refuse(*args, **kwargs):
        raise AssertionError("fastgen.fit built something before refusing the run")

    monkeypatch.setattr(fastgen.fit, "instantiate", refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step teacher_mnist debug run (random-init UNet): (its folder, a snapshot of it)."""
    tmp = tmp_path_factory.mktemp("finished")
    run(compose_experiment("teacher_mnist", tmp, ["model=mnist_pixel_random"]))
    run_dir = tmp / "runs" / "test_teacher_mnist"
    return run_dir, snapshot(run_dir)


def copy_of(finished_run, tmp_path):
    """A private copy of the finished run, at the path compose_experiment("teacher_mnist", tmp_path) uses."""
    run_dir = tmp_path / "runs" / "test_teacher_mnist"
    shutil.copytree(finished_run[0], run_dir)
    return run_dir


# -- 1. debug=fast writes into its own run folder ---------------------------------------------------------------
def test_debug_fast_leaves_the_real_run_and_the_committed_teacher_alone(tmp_path):
    """`experiment=teacher_mnist debug=fast` trains into runs/debug_teacher_mnist/ and exports its 2-step teacher
    there: the real run folder (and the teacher every MNIST experiment loads from it) and the committed teacher are
    untouched."""
    real = tmp_path / "runs" / "teacher_mnist"
    (real / "checkpoints").mkdir(parents=True)
    (real / "checkpoints" / "last.ckpt").write_bytes(b"the real run's checkpoint")
    (real / "logs").mkdir()
    (real / "logs" / "metrics.csv").write_text("step,train/diffusion\n0,1.0\n")
    before, committed = snapshot(real), snapshot(COMMITTED_TEACHER)
    proc = subprocess.run([sys.executable, "-m", "fastgen.fit", "experiment=teacher_mnist", "debug=fast",
                           "model=mnist_pixel_random", f"paths.runs_dir={tmp_path / 'runs'}", *QUIET],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert snapshot(real) == before and snapshot(COMMITTED_TEACHER) == committed
    debug = tmp_path / "runs" / "debug_teacher_mnist"
    assert (debug / "teacher" / "unet" / "config.json").is_file() and (debug / "checkpoints" / "last.ckpt").is_file()
    assert not (real / "teacher").exists()  # what every later MNIST experiment would load


# -- 2. the last steps are checkpointed; end-of-training rows come from saved weights ---------------------------------
@pytest.mark.parametrize("stop", [["trainer.max_steps=-1", "trainer.max_kimg=0.02"], ["trainer.max_steps=3"]],
                         ids=["max_kimg", "max_steps"])
def test_every_stop_is_checkpointed(tmp_path, stop):
    """A stop between checkpoint intervals (here: every 2 steps) is saved: last.ckpt holds the final weights."""
    method = run(compose_experiment("teacher_mnist", tmp_path, ["model=mnist_pixel_random",
                                                                "callbacks.checkpoint.every_n_train_steps=2", *stop]))
    saved = state_dict(tmp_path / "runs" / "test_teacher_mnist" / "checkpoints" / "last.ckpt")
    images = 20 if "trainer.max_kimg=0.02" in stop else 12
    assert method.images_seen.item() == images and saved["images_seen"].item() == images
    final = method.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in saved.items())
    assert not list((tmp_path / "runs" / "test_teacher_mnist" / "checkpoints").glob("last-v*.ckpt"))


# -- 3. divergence stops the run; NaN images are never scored --------------------------------------------------------
def test_diverged_training_exits_nonzero_with_one_line_and_writes_no_row(tmp_path, capsys):
    board = tmp_path / "board.csv"
    cfg = compose_experiment("ufogen_mnist", tmp_path, ["method.lr_g=1e8", "method.lr_d=1e8", "trainer.max_steps=8",
                                                        *SMALL_EVAL, f"eval.leaderboard={board}",
                                                        f"eval.cache_dir={tmp_path}/c"])
    line = fails_cleanly(cfg, capsys, "training diverged at step", "method.lr_g=", "method.lr_d=", "train/")
    assert "nan" in line or "inf" in line
    assert not board.exists()
    ckpt = tmp_path / "runs" / "test_ufogen_mnist" / "checkpoints" / "last.ckpt"
    if ckpt.exists():  # what is kept is the last step whose losses were finite
        assert all(torch.isfinite(v).all() for v in state_dict(ckpt).values() if v.is_floating_point())


def test_nan_images_never_become_a_leaderboard_row(tmp_path):
    from fastgen.eval.metrics.images import NonFiniteImages
    from fastgen.eval.evaluator.run_eval import run_eval
    from fakes import FakeDataModule, FakeMethod

    method = FakeMethod(supported_steps=(1, 2))
    with torch.no_grad():
        method.backbone.scale.fill_(float("nan"))
    cfg = {"num_samples": 4, "batch_size": 4, "steps": [1, 2], "clip": {"enabled": False},
           "aesthetic": {"enabled": False}, "fid": {"enabled": False}, "cache_dir": str(tmp_path / "cache"),
           "leaderboard": str(tmp_path / "board.csv")}
    with pytest.raises(NonFiniteImages, match="NaN"):
        run_eval(method, FakeDataModule(), cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "board.csv").exists()


# -- 5. resume: one log row per step; a fresh run never lands on an old one ------------------------------------------
def test_resumed_log_drops_the_rows_past_the_checkpoint(tmp_path):
    """As after a kill between checkpoints: last.ckpt at step 2 of 4 while the log already holds steps 0-3.
    The resumed run's log has each step once, with the values of an uninterrupted run."""
    keep_all = ["model=mnist_pixel_random", "callbacks.checkpoint.every_n_train_steps=2",
                "callbacks.checkpoint.save_top_k=-1", "trainer.max_steps=4"]
    run(compose_experiment("teacher_mnist", tmp_path, keep_all))
    run_dir = tmp_path / "runs" / "test_teacher_mnist"
    uninterrupted = train_rows(run_dir)
    assert [row["step"] for row in uninterrupted] == ["0", "1", "2", "3"]
    shutil.copy(run_dir / "checkpoints" / "epoch=0-step=2.ckpt", run_dir / "checkpoints" / "last.ckpt")
    run(compose_experiment("teacher_mnist", tmp_path, [*keep_all, "ckpt_path=last"]))
    resumed = train_rows(run_dir)
    assert [row["step"] for row in resumed] == ["0", "1", "2", "3"]
    for a, b in zip(resumed, uninterrupted):
        assert float(a["train/diffusion"]) == pytest.approx(float(b["train/diffusion"]), rel=1e-5)


def test_fresh_run_over_an_old_run_is_refused_and_loses_nothing(finished_run, tmp_path, capsys, nothing_built):
    run_dir = copy_of(finished_run, tmp_path)
    before = snapshot(run_dir)
    fails_cleanly(compose_experiment("teacher_mnist", tmp_path, ["model=mnist_pixel_random"]), capsys,
                  str(run_dir), "ckpt_path=last", "run_name=", "checkpoints/last.ckpt", "logs/metrics.csv")
    assert snapshot(run_dir) == before  # log, checkpoint, exported teacher and config.yaml as they were
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))


@pytest.mark.slow
def test_kill9_during_training_then_resume_matches_an_uninterrupted_run_slow(tmp_path):
    kill_and_resume(tmp_path, kills=4, steps=24)


def test_kill9_during_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    kill_and_resume(tmp_path, kills=2, steps=16)


def kill_and_resume(tmp_path, kills, steps):
    """ufogen_mnist at debug length (batch 4, checkpoints every 2 training steps), killed with SIGKILL at random
    points (by log rows written, plus a random delay: mid-step, mid-save, mid-startup) and resumed with
    ckpt_path=last until it finishes: the same final weights and the same log, one row per step, as a run never
    interrupted."""
    seed = int(os.environ.get("FASTGEN_FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    overrides = ["experiment=ufogen_mnist", "debug=fast", f"trainer.max_steps={steps}",
                 "callbacks.checkpoint.every_n_train_steps=4", *QUIET]
    reference = compose_experiment("ufogen_mnist", tmp_path / "ref", [f"trainer.max_steps={steps}",
                                                                      "callbacks.checkpoint.every_n_train_steps=4",
                                                                      *QUIET])
    run(reference)
    ref_dir = tmp_path / "ref" / "runs" / "test_ufogen_mnist"

    runs = tmp_path / "killed"
    command = [sys.executable, "-m", "fastgen.fit", *overrides, f"paths.runs_dir={runs}", "ckpt_path=last"]
    run_dir = runs / "debug_ufogen_mnist"
    rows_now = lambda: len(log_rows(run_dir)) if (run_dir / "logs" / "metrics.csv").is_file() else 0  # noqa: E731
    killed_at = []
    for _ in range(kills):
        target, delay = rng.randint(1, steps // 2 - 1), rng.uniform(0, 0.6)
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        while proc.poll() is None and rows_now() < target:
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append((target, round(delay, 2), proc.returncode))
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    where = f"FASTGEN_FAULT_SEED={seed}, kills (log rows, delay s, status): {killed_at}"
    print(where)
    assert done.returncode == 0, f"{where}\n{done.stderr[-3000:]}"

    assert [row["step"] for row in log_rows(run_dir)] == [str(s) for s in range(steps // 2)], where
    for got, want in zip(log_rows(run_dir), log_rows(ref_dir)):
        assert got == want, where
    got, want = state_dict(run_dir / "checkpoints" / "last.ckpt"), state_dict(ref_dir / "checkpoints" / "last.ckpt")
    assert got.keys() == want.keys(), where
    for key, value in want.items():
        assert torch.allclose(got[key].float(), value.float(), rtol=1e-5, atol=1e-6), f"{key}: {where}"
    assert not [p for p in run_dir.rglob(".*tmp*")], where  # no orphaned temporary save


# -- 6. evaluations never write the committed leaderboard; step counts >= 1 ------------------------------------------
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_no_experiment_writes_the_committed_leaderboard(name, tmp_path):
    cfg = compose_experiment(name, tmp_path, ["eval.enabled=true"])
    assert not str(cfg.eval.get("leaderboard") or "").startswith("benchmarks/")
    callbacks = build_callbacks(cfg)
    (evaluation,) = [c for c in callbacks if type(c).__name__ == "FewStepEval"]
    assert Path(evaluation.settings.leaderboard) == Path(cfg.paths.output_dir) / "leaderboard.csv"


@pytest.mark.parametrize("override, key", [
    ("trainer.max_kimg=abc", "trainer.max_kimg='abc'"), ("trainer.max_kimg=-1", "trainer.max_kimg=-1"),
    ("eval.steps=[0]", "eval.steps=[0]"), ("eval.baseline_steps=[0,2]", "eval.baseline_steps=[0, 2]"),
    ("data.batch_size=two", "data.batch_size='two'"), ("trainer.max_time=forever", "trainer.max_time='forever'"),
])
def test_bad_values_stop_before_anything_is_built(override, key, tmp_path, capsys, nothing_built):
    cfg = compose_experiment("ufogen_mnist", tmp_path, [*SMALL_EVAL, f"eval.leaderboard={tmp_path}/board.csv",
                                                        f"eval.cache_dir={tmp_path}/c", override])
    fails_cleanly(cfg, capsys, key, "must be")
    assert not (tmp_path / "runs" / "test_ufogen_mnist" / "checkpoints").exists()


def test_evaluate_refuses_step_zero_before_loading_anything(tmp_path, monkeypatch, capsys):
    from fastgen import evaluate

    board = tmp_path / "board.csv"
    monkeypatch.chdir(tmp_path)
    small = [o for o in SMALL_EVAL if not o.startswith("eval.baseline_steps")]
    monkeypatch.setattr(sys, "argv", ["evaluate", "experiment=dpm_solver_mnist", *small, "eval.baseline_steps=[0]",
                                      "real_data=false",
                                      f"eval.leaderboard={board}", f"paths.runs_dir={tmp_path}",
                                      f"eval.cache_dir={tmp_path}/c"])
    with pytest.raises(SystemExit) as info:
        evaluate.main()
    assert info.value.code == 2
    one_error_line(capsys, "eval.baseline_steps=[0]")
    assert not board.exists()


# -- 7. data=latent_cache with the SD-scale experiments; cache_latents on a CPU-only machine ---------------------------
def tiny_cache(tmp_path, resolution=32, n=4):
    """An image-text folder encoded with the tiny_latent backbone at `resolution`."""
    from hydra.utils import instantiate

    from fastgen.cache_latents import cache_latents

    root = tmp_path / "pics"
    root.mkdir()
    lines = []
    for i in range(n):
        Image.fromarray(np.full((40, 36, 3), 50 * i, dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a square of grey {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    backbone = instantiate(compose_experiment("ufogen_sd15", tmp_path, ["debug=tiny", "data.root=x"]).model).eval()
    cache_latents(root, backbone, tmp_path / "cache", model_id="tiny", resolution=resolution, batch_size=2)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cache_32(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("debug", ["fast", "tiny"])
@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_sd15")])
def test_latent_cache_composes_with_every_sd15_experiment_and_its_tiny_version(name, debug, cache_32, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_experiment(name, tmp_path, [f"debug={debug}", "data=latent_cache", f"data.cache_dir={cache_32}"])
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.data.resolution == 32:
        datamodule.setup()
        assert next(iter(datamodule.train_dataloader()))["latent"].shape[0] == cfg.data.batch_size
    else:  # the SD1.5 experiments train at 512 px: this 32 px cache is refused, naming both
        with pytest.raises(DataError, match=r"data.resolution=512 .* encoded at 32 px"):
            datamodule.setup()


def test_tiny_experiment_trains_from_a_latent_cache(cache_32, tmp_path):
    method = run(compose_experiment("ufogen_sd15", tmp_path, ["debug=tiny", "data=latent_cache", f"data.cache_dir={cache_32}"]))
    assert method.images_seen.item() == 4


def test_cache_latents_picks_the_device_that_exists(monkeypatch, tmp_path, capsys):
    from fastgen import cache_latents

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    parser = cache_latents.argparse.ArgumentParser()
    assert cache_latents.pick_device(parser, None) == torch.device("cpu")
    with pytest.raises(SystemExit) as info:
        cache_latents.main(["--data", str(tmp_path), "--pretrained", str(tmp_path), "--out", str(tmp_path / "c"),
                            "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "--device cpu" in err and "Traceback" not in err


# -- 8. bad files: one line naming the file --------------------------------------------------------------------------
def image_folder(tmp_path, name, save):
    root = tmp_path / "pics"
    root.mkdir(exist_ok=True)
    save(root / name)
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": name, "text": "x"}) + "\n")
    return root


@pytest.mark.parametrize("name, array, grey", [
    ("mid.png", np.full((8, 8), 32896, dtype=np.uint16), 128),   # 16-bit PNG: 32896 / 257 = 128
    ("half.tif", np.full((8, 8), 0.5, dtype=np.float32), 128),   # float TIFF in [0, 1]
])
def test_wide_images_are_scaled_not_clipped(tmp_path, name, array, grey):
    from fastgen.data import ImageTextFolderDataModule

    root = image_folder(tmp_path, name, lambda path: Image.fromarray(array).save(path))
    pixels = ImageTextFolderDataModule(root, resolution=8).reference_images()
    assert (pixels == grey).all(), pixels.unique()


def test_float_image_outside_0_1_is_refused_naming_the_file(tmp_path):
    from fastgen.data import ImageTextFolderDataModule

    array = np.full((8, 8), 200.0, dtype=np.float32)
    root = image_folder(tmp_path, "hdr.tif", lambda path: Image.fromarray(array).save(path))
    with pytest.raises(DataError, match=r"hdr\.tif: float image with values in \[200, 200\]"):
        ImageTextFolderDataModule(root, resolution=8).reference_images()


def test_latin1_metadata_names_the_file_and_line(tmp_path):
    from fastgen.data import ImageTextFolderDataModule

    root = tmp_path / "pics"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "ok"}\n'
                                          + '{"file_name": "a.png", "text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"metadata\.jsonl line 2: not UTF-8"):
        ImageTextFolderDataModule(root, resolution=8).setup()


def test_truncated_latent_shard_names_the_shard(cache_32, tmp_path):
    from fastgen.data import LatentCacheDataModule

    cache = tmp_path / "cache"
    shutil.copytree(cache_32, cache)
    shard = cache / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=r"shard-00000\.safetensors: unreadable cache shard .*fastgen.cache_latents"):
        LatentCacheDataModule(cache).setup()


def test_truncated_checkpoint_is_one_line_in_fit_and_evaluate(finished_run, tmp_path, capsys, nothing_built):
    from fastgen.eval.evaluator.checkpoint import method_from_checkpoint

    run_dir = copy_of(finished_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    fails_cleanly(compose_experiment("teacher_mnist", tmp_path, ["model=mnist_pixel_random", "ckpt_path=last"]),
                  capsys, f"ckpt_path={last}", "truncated or corrupt")
    with pytest.raises(ValueError, match=r"ckpt=.*last\.ckpt: not a readable checkpoint"):
        method_from_checkpoint(last)


def test_malformed_wandb_key_fails_fast_with_one_line(tmp_path, monkeypatch, capsys, nothing_built):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "my-key")
    cfg = compose_experiment("ufogen_mnist", tmp_path, ["logger=wandb"])
    started = time.monotonic()
    fails_cleanly(cfg, capsys, "WANDB_API_KEY", "malformed", "WANDB_MODE=offline")
    assert time.monotonic() - started < 30 and not (tmp_path / "runs" / "test_ufogen_mnist" / "wandb").exists()


# -- 9. interrupted saves leave no temporary files ---------------------------------------------------------------------
def test_a_failed_save_leaves_no_temporary_file(tmp_path):
    with pytest.raises(Exception):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "not saveable": lambda: 0}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_save_is_cleaned_when_the_run_resumes(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    orphan = run_dir / "checkpoints" / ".last.ckpt.tmp4242"
    orphan.write_bytes(b"half a checkpoint")
    run(compose_experiment("teacher_mnist", tmp_path, ["model=mnist_pixel_random", "ckpt_path=last",
                                                       "trainer.max_steps=3"]))
    assert not orphan.exists() and [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]
    assert [row["step"] for row in train_rows(run_dir)] == ["0", "1", "2"]
