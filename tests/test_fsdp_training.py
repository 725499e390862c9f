"""`trainer.strategy=fsdp` (FSDP2, `fastgen.runtime.lightning_plugins.FSDP2Strategy`) under 2-process CPU gloo trains, evaluates and
checkpoints exactly what DDP does: same weights (trained networks, EMA copies, discriminator) up to float
summation order, same metrics, a single-file checkpoint that resumes. The evaluation draws 5 samples on 2 ranks
in batches of 2 (rank 0 has two batches, rank 1 one): a sharded sampler deadlocks unless every rank makes the
same number of sampling calls (rank 1 adds one)."""

import csv
import os
import subprocess
import sys

import json
from pathlib import Path

import pytest
import torch
import test_ddp_training
from conftest import free_port

FAST = {"ufogen_mnist", "lcm_lora_mnist"}  # the two-phase GAN step; LoRA on a frozen base (and its export)
EXPERIMENTS = {"ufogen_mnist": 1, "lcm_lora_mnist": 1, "ddgan_mnist": 4, "siddm_mnist": 4, "lcm_mnist": 1,
               "tscd_mnist": 1, "dmd_mnist": 1, "tscd_mnist_dmd_stage": 1}  # experiment: an evaluation step count
VARIANTS = {"tscd_mnist_dmd_stage": test_ddp_training.VARIANTS["tscd_mnist_dmd_stage"]}  # TSCD with its DMD stage
R1 = ("method.r1_sigma=0.05",)  # FSDP runs the finite-difference R1 (exact R1 is a double backward)
# 4 steps inside lcm_lora_mnist's 100-step warm-up at lr 1e-3 move the LoRA by ~1e-4, below the 1e-3 tolerance:
# no warm-up and lr 1e-2 move it by ~4e-2, so a rank that did not train (or trained other data) is caught
MOVE = {"lcm_lora_mnist": ("method.lr=1e-2", "method.warmup_steps=1")}
ATOL = 1e-3
# DMD's one-step sample is x̂0 = (z − σ ε̂)/α at t = 999 of the ε-prediction teacher (1/α = 14.6): EMA weights that
# agree to 6e-8 gave one of the 5 images one uint8 level apart, which moves a 5-sample FID by 1.3e-4 of itself;
# a LoRA that moved by 4e-2 samples through weights 0.3% of its update apart: the FID agrees to 1e-3
FID_REL = {"dmd_mnist": 1e-3, "lcm_lora_mnist": 1e-3, "tscd_mnist_dmd_stage": 1e-3}  # tscd@dmd: DMD's one step
# TSCD's DMD stage after one fake-score and student update: Adam's summation-order noise (up to lr per near-zero-
# gradient weight) moves the next distribution-matching loss by 6% at lr 1e-4 and by 2e-5 at lr 1e-7 (it scales with
# lr: noise, not a different computation); a rank whose random stream left DDP's moved it 17-fold
LOSS_REL = {"tscd_mnist_dmd_stage": 0.1}


def _fit(tmp_path, name, strategy, steps, *extra):
    """The run's last checkpoint, and what rank 0's digest callback recorded (tests/ddp_digest.py)."""
    extra = (*extra, *R1) if name.split("_")[0] in {"ddgan", "siddm"} else extra
    extra = (*MOVE.get(name, ()), *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    experiment, *variant = VARIANTS.get(name, (name,))
    proc = subprocess.run(
        [sys.executable, "-m", "fastgen.fit", f"experiment={experiment}", *variant, "debug=fast", "trainer.devices=2",
         f"trainer.strategy={strategy}", "trainer.max_steps=4", "data.batch_size=4", f"paths.runs_dir={tmp_path}",
         f"run_name={strategy}", "eval.enabled=true", "eval.num_samples=5", "eval.batch_size=2", f"eval.steps=[{steps}]",
         "eval.baseline_steps=[]", "eval.latency.enabled=false", f"eval.leaderboard={tmp_path}/{strategy}.csv",
         "+callbacks.digest._target_=ddp_digest.WeightsDigest", f"+callbacks.digest.out_dir={tmp_path}/digest", *extra],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "digest" / "rank0.json").read_text())
    return torch.load(tmp_path / strategy / "checkpoints" / "last.ckpt", weights_only=True), record


def _logged_losses(path):
    """Every logged training loss, in step order."""
    with open(path, newline="") as f:
        return [float(v) for row in csv.DictReader(f) for k, v in row.items() if k.startswith("train/") and v]


def _method_rows(path):
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row["method"] != "real_data"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS])
def test_fsdp_trains_evaluates_and_resumes_as_ddp(tmp_path, name):
    steps = EXPERIMENTS[name]
    (ddp, _), (fsdp, _) = (_fit(tmp_path, name, strategy, steps) for strategy in ("ddp", "fsdp"))
    # Lightning stops at the first optimizer step count >= 4 (TSCD's DMD stage takes two per training step)
    assert fsdp["global_step"] == ddp["global_step"] == (4 if name not in VARIANTS else 5)
    assert fsdp["state_dict"].keys() == ddp["state_dict"].keys()
    # Adam turns a gradient's summation-order noise into up to a learning rate per step where the gradient is
    # ~0, so the weights agree to 1e-3; the losses at every step and the evaluation agree to float precision
    lora = {k for k in ddp["state_dict"] if ".lora_" in k} if name in MOVE else set()
    for key, value in ddp["state_dict"].items():
        if key not in lora:
            torch.testing.assert_close(fsdp["state_dict"][key], value, rtol=0, atol=ATOL, msg=key)
    if lora:  # LoRA B starts at zero, so its norm is the update's size; at lr 1e-2 Adam's summation-order noise moves
        # a few near-zero-gradient entries by up to lr per step, so the LoRA is compared as a whole against it
        flat = lambda ckpt, keys: torch.cat([ckpt["state_dict"][k].flatten() for k in sorted(keys)])  # noqa: E731
        update = flat(ddp, {k for k in lora if ".lora_B." in k})
        assert update.abs().max() > 10 * ATOL, f"the LoRA moved by {update.abs().max():.2e} only: nothing to compare"
        relative = ((flat(fsdp, lora) - flat(ddp, lora)).norm() / update.norm()).item()
        assert relative < 0.02, f"FSDP's LoRA differs from DDP's by {relative:.1%} of the update's norm"
    # (Lightning keys an FSDP optimizer state by the parameter's index in the whole model, DDP's by its index in the
    # optimizer: the same states under other names)
    assert len(fsdp["optimizer_states"][0]["state"]) == len(ddp["optimizer_states"][0]["state"]) > 0
    losses = {s: _logged_losses(tmp_path / s / "logs" / "metrics.csv") for s in ("ddp", "fsdp")}
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=LOSS_REL.get(name, 1e-4)) and losses["ddp"]
    fsdp_rows, ddp_rows = _method_rows(tmp_path / "fsdp.csv"), _method_rows(tmp_path / "ddp.csv")
    assert [r["method"] for r in fsdp_rows] == [r["method"] for r in ddp_rows] and len(ddp_rows) == (
        1 if name not in VARIANTS else 3)  # TSCD with its DMD stage: tscd (the k = 1 stage), tscd@dmd, tscd@final
    for fsdp_row, ddp_row in zip(fsdp_rows, ddp_rows):
        assert float(fsdp_row["fid"]) == pytest.approx(float(ddp_row["fid"]), rel=FID_REL.get(name, 1e-4))
    # the single-file checkpoint resumes under FSDP: two more steps, images counted on from where it stopped
    resumed, record = _fit(tmp_path, name, "fsdp", steps, "ckpt_path=last", "trainer.max_steps=6", "eval.enabled=false")
    assert resumed["global_step"] == (6 if name not in VARIANTS else 7)
    assert resumed["state_dict"]["images_seen"] == record["training_steps"] * 4
    if name == "lcm_lora_mnist":  # the export at the end gathers the sharded LoRA: exactly the checkpoint's
        from safetensors.torch import load_file

        exported = load_file(tmp_path / "fsdp" / "lcm_lora" / "pytorch_lora_weights.safetensors")
        trained = {"unet." + k.removeprefix("backbone.unet.").replace(".default", ""): v
                   for k, v in resumed["state_dict"].items() if ".lora_" in k}
        assert exported.keys() == trained.keys()
        assert all(torch.equal(exported[k], trained[k]) for k in trained)


def test_exact_r1_is_refused_under_fsdp_with_what_to_set(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastgen.fit", "experiment=ddgan_mnist", "debug=fast",
                           "trainer.strategy=fsdp", f"paths.runs_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "set method.r1_sigma=0.05" in proc.stderr and "Traceback" not in proc.stderr
