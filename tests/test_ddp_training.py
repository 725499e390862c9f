"""Training under 2-process CPU DDP (gloo): every rank ends with identical weights (trained networks, EMA,
discriminator) and counts the global batch in kimg. Each rank sees different data, so any tensor that is not
synchronised (a missing all-reduce, an EMA of unsynchronised weights) would differ between the ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

TESTS = Path(__file__).parent
FAST = {"ufogen_mnist", "lcm_mnist"}  # manual (GAN) and automatic optimisation; the rest: -m slow
EXPERIMENTS = ["ufogen_mnist", "lcm_mnist", "ddgan_mnist", "siddm_mnist", "lcm_lora_mnist", "tscd_mnist", "dmd_mnist",
               "tscd_mnist_dmd_stage"]
# TSCD with Hyper-SD's DMD stage: the segment stages take 8 images, so steps 3-4 train the fake score and the student
VARIANTS = {"tscd_mnist_dmd_stage": ("tscd_mnist", "method.final_stage=dmd", "method.stage_kimg=[0.001,0.001,0.001,0.001]",
                                     "method.dmd_fake_updates_per_g=1", "method.dmd_mse_steps=2")}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS])
def test_two_process_ddp_keeps_ranks_identical(tmp_path, name):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    experiment, *extra = VARIANTS.get(name, (name,))
    proc = subprocess.run(
        [sys.executable, "-m", "fastgen.fit", f"experiment={experiment}", *extra, "debug=fast", "trainer.devices=2",
         "trainer.strategy=ddp", "trainer.max_steps=4", "data.batch_size=4", f"paths.runs_dir={tmp_path}",
         "+callbacks.digest._target_=ddp_digest.WeightsDigest", f"+callbacks.digest.out_dir={tmp_path}/digest"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "digest" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digests"] == ranks[1]["digests"]
    # kimg counts the global batch (4 images per training step, 2 on each rank); Lightning's global_step counts each
    # optimizer step, as many per training step as the method declares (TSCD's DMD stage: more than its segments')
    per_step, training_steps = ranks[0]["optimizer_steps_per_training_step"], ranks[0]["training_steps"]
    assert ranks[0]["kimg"] == ranks[1]["kimg"] == pytest.approx(training_steps * 4 / 1000)
    if name not in VARIANTS:
        assert ranks[0]["global_step"] == training_steps * per_step
    if name in VARIANTS:  # the DMD stage ran: its fake score trained, the student stepped twice per training step
        assert any(k.startswith("fake_unet.") for k in ranks[0]["digests"]) and ranks[0]["global_step"] > training_steps
    elif per_step == 2:
        assert any(k.startswith("discriminator.") for k in ranks[0]["digests"])
    if name != "lcm_lora_mnist":  # LCM-LoRA's target is the online student (no EMA copy)
        assert any("ema" in k or "target" in k for k in ranks[0]["digests"])
