"""TSCD: segment boundaries, the target at the boundary, stages and their resume, samplers against diffusers'
DDIMScheduler (trailing) and TCDScheduler, falling losses, and the optional adversarial and reward terms."""

import copy
import csv

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fastgen.core import mse, trailing_timesteps
from fastgen.fit import run
from fastgen.methods.consistency_distillation import empty_prompt_cond
from fastgen.methods.tscd import TSCD, segment_boundary
from fastgen.networks import build_random
from test_lcm import assert_losses_fall, latent_batch, write_image_folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return build_random("tiny_latent")


def tscd(tiny, **kw):
    kw = {"lr": 1e-3, "warmup_steps": 1, "teacher_guidance_scale": 2.0, **kw}
    return TSCD(copy.deepcopy(tiny), **kw)


def test_segment_boundaries():
    t = torch.arange(1000)
    expected = {
        8: {999: 874, 875: 874, 874: 749, 750: 749, 749: 624, 125: 124, 124: -1, 19: -1, 0: -1},
        4: {999: 749, 750: 749, 749: 499, 499: 249, 250: 249, 249: -1},
        2: {999: 499, 500: 499, 499: -1},
        1: {999: -1, 500: -1, 0: -1},
    }
    for k, cases in expected.items():
        t_b = segment_boundary(t, k)
        for t_n, b in cases.items():
            assert t_b[t_n].item() == b, (k, t_n)
        # the boundaries are the k-step trailing sampling grid (below its first point) and then clean
        assert sorted(set(t_b.tolist()), reverse=True) == trailing_timesteps(k).tolist()[1:] + [-1]
        assert bool((t_b < t).all()) and bool((t - t_b <= 1000 // k).all())
        assert torch.equal(t_b, (t // (1000 // k)) * (1000 // k) - 1)  # floor(t/(T/k))·(T/k) − 1


@pytest.mark.parametrize("k, t_n", [(1, 19), (8, 879), (4, 259)])
def test_target_at_the_boundary_is_the_teachers_step(tiny, k, t_n):
    """Student = teacher (at init), guidance 1: when the teacher's step t_n → t_{n−1} lands on the segment boundary,
    the target is its input x̂_{t_{n−1}} itself and equals the student's own map to the boundary."""
    m = tscd(tiny, teacher_guidance_scale=1.0)
    bb = m.backbone
    x0, noise = torch.randn(2, *bb.sample_shape), torch.randn(2, *bb.sample_shape)
    cond = bb.encode_prompts(["a", "b"])
    t = torch.full((2,), t_n)
    student, _, target, t_end = m.consistency_pair(x0, noise, t, cond, empty_prompt_cond(bb, cond), k)
    assert (t_end == segment_boundary(t, k)).all() and (t - 20 <= t_end).all()  # the step is clamped at t_b
    torch.testing.assert_close(student, target, rtol=1e-4, atol=1e-4)


def _ddim_reference(m, scheduler, noise, prompts, steps, **step_kw):
    bb = m.backbone
    cond, x = bb.encode_prompts(prompts), noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = m.sampling_unet(x, t, encoder_hidden_states=cond).sample
            x = scheduler.step(out, t, x, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_ddim_sampler_matches_diffusers_trailing(tiny, steps):
    from diffusers import DDIMScheduler

    m = tscd(tiny)
    noise = torch.randn(2, *m.backbone.sample_shape, generator=torch.Generator().manual_seed(0))
    ours = m.sample(noise, ["a", "b"], steps)
    # set_alpha_to_one=True: the last step lands on the clean sample, as ours does
    scheduler = DDIMScheduler(**m.backbone.schedule, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == trailing_timesteps(steps).tolist()
    torch.testing.assert_close(ours, _ddim_reference(m, scheduler, noise, ["a", "b"], steps, eta=0.0), rtol=1e-4, atol=1e-4)


def test_tcd_sampler_matches_diffusers(tiny):
    from diffusers import TCDScheduler

    m = tscd(tiny, sample_eta=0.3)
    noise = torch.randn(2, *m.backbone.sample_shape, generator=torch.Generator().manual_seed(0))
    ours = m.sample(noise, ["a", "b"], 4, generator=torch.Generator().manual_seed(3))
    scheduler = TCDScheduler(**m.backbone.schedule)
    scheduler.set_timesteps(timesteps=trailing_timesteps(4).tolist())
    scheduler.alphas_cumprod[0] = 1.0  # diffusers' last step lands on t = 0; ours on the clean sample
    ref = _ddim_reference(m, scheduler, noise, ["a", "b"], 4, eta=0.3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_losses_finite_and_falling(tiny):
    m = tscd(tiny, lr=3e-3)
    bb = m.backbone
    batch = latent_batch(bb)
    cond = bb.encode_prompts(batch["prompt"])
    uncond = empty_prompt_cond(bb, cond)
    noise = torch.randn(batch["latent"].shape, generator=torch.Generator().manual_seed(0))
    t_n = torch.tensor([999, 619])

    def loss_fn():
        student, _, target, _ = m.consistency_pair(batch["latent"], noise, t_n, cond, uncond, 4)
        return mse(student, target)

    assert_losses_fall(m, m.configure_optimizers()["optimizer"], loss_fn)


def test_stage_switching_checkpoint_and_resume(experiment_cfg, tmp_path):
    folder = write_image_folder(tmp_path / "images")
    # batch 4 = 0.004 kimg per step: a stage ends every step (the stage is chosen from kimg before the step)
    # the full student (tscd_sd15 trains a LoRA): every stage snapshot holds the whole sampling network
    common = (f"data.root={folder}", "method.stage_kimg=[0.004,0.004,0.004,0.004]", "trainer.max_kimg=null",
              "method.lora_rank=null")
    metrics = tmp_path / "runs/test_tscd_sd15/logs/metrics.csv"

    def logged_segments():
        return [float(r["train/segments"]) for r in csv.DictReader(open(metrics)) if r.get("train/segments")]

    method = run(experiment_cfg("tscd_sd15", "debug=tiny", *common))
    assert method.segments_now.item() == 4 and method.stage.item() == 1 and logged_segments() == [8, 4]
    ckpt_file = tmp_path / "runs/test_tscd_sd15/checkpoints/last.ckpt"
    ckpt = torch.load(ckpt_file, weights_only=True)
    assert ckpt["state_dict"]["segments_now"].item() == 4 and ckpt["state_dict"]["stage"].item() == 1
    assert not any(k.startswith(("teacher_unet.", "backbone.vae.", "backbone.text_encoder.")) for k in ckpt["state_dict"])
    assert any(k.startswith("target_unet.") for k in ckpt["state_dict"])

    # the finished stage's weights are kept beside the checkpoints (the current stage's are the model's own)
    folder = ckpt_file.parent
    assert sorted(p.name for p in folder.glob("tscd_stage*")) == ["tscd_stage1_k8.pt"]
    first = (folder / "tscd_stage1_k8.pt").read_bytes(), (folder / "tscd_stage1_k8.pt").stat().st_mtime_ns

    resumed = run(experiment_cfg("tscd_sd15", "debug=tiny", *common, "ckpt_path=last", "trainer.max_steps=4"))
    # the resumed run continues the run's log: the stages before the resume, then the last two
    assert resumed.segments_now.item() == 1 and resumed.stage.item() == 3 and logged_segments() == [8, 4, 2, 1]
    # stage 1's snapshot is kept as it was; stages 2 and 3 ended in the resumed run: stage 2 with the weights the
    # checkpoint it resumed from holds (its sampling network, the EMA target), stage 4 is still the current one
    assert sorted(p.name for p in folder.glob("tscd_stage*")) == ["tscd_stage1_k8.pt", "tscd_stage2_k4.pt",
                                                                  "tscd_stage3_k2.pt"]
    assert ((folder / "tscd_stage1_k8.pt").read_bytes(), (folder / "tscd_stage1_k8.pt").stat().st_mtime_ns) == first
    stage2 = torch.load(folder / "tscd_stage2_k4.pt", weights_only=True)
    assert stage2["segments"] == 4 and stage2["stage"] == 1
    target = {k.removeprefix("target_unet."): v for k, v in ckpt["state_dict"].items() if k.startswith("target_unet.")}
    assert stage2["state_dict"].keys() == target.keys()
    assert all(torch.equal(stage2["state_dict"][k], v) for k, v in target.items())


def test_adversarial_and_reward_terms(tiny):
    m = tscd(tiny, adv_weights=[0.0, 1.0, 1.0, 1.0], stage_kimg=[0.002, 1, 1, 1], disc_lr=1e-2,
             reward_fn=lambda pixels, prompts: pixels.mean(dim=(1, 2, 3)), reward_weight=0.5, reward_margin=1.0)
    disc_before = copy.deepcopy(m.discriminator.state_dict())
    teacher_before = copy.deepcopy(m.teacher_unet.state_dict())
    batches = [latent_batch(m.backbone, seed=i) for i in range(3)]
    loader = DataLoader(batches, batch_size=None)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, loader)
    metrics = trainer.callback_metrics
    for key in ("train/consistency", "train/adv", "train/refl", "train/d_real", "train/d_fake"):
        assert torch.isfinite(metrics[key]), key
    assert any(not torch.equal(v, m.discriminator.state_dict()[k]) for k, v in disc_before.items())
    assert all(torch.equal(v, m.teacher_unet.state_dict()[k]) for k, v in teacher_before.items())
    with pytest.raises(ValueError, match="adv_weights needs one weight per stage"):
        tscd(tiny, adv_weights=[1.0])


# -- per-stage rows: N steps from the stage trained with k = N segments, the final model as tscd@final -------------
def _staged_tscd(tmp_path):
    """A points TSCD in its third stage (k = 1) whose two finished stages (k = 4, 2) kept distinguishable weights:
    the sampling network's weights are moved by a different random offset before each snapshot and at the end."""
    from fastgen.networks.points import build_points_random

    m = TSCD(build_points_random(2, hidden_dim=16, num_layers=1), segments=[4, 2, 1], stage_kimg=[1, 1, 1],
             teacher_guidance_scale=1.0).eval()
    m.checkpoint_dir = tmp_path
    base = {k: v.clone() for k, v in m.sampling_unet.state_dict().items()}
    weights = []
    for stage in range(3):
        g = torch.Generator().manual_seed(stage)
        moved = {k: v + 0.3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
        m.sampling_unet.load_state_dict(moved)
        weights.append(moved)
        if stage < 2:
            m.save_stage(stage)
    m.stage.fill_(2)
    m.images_seen.fill_(3000)
    return m, weights


def _sample_with(m, weights, steps):
    other = copy.deepcopy(m)
    other.sampling_unet.load_state_dict(weights)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    return other.sample(noise, ["a point in the top row"] * 6, steps)


def test_each_step_count_samples_with_the_weights_of_the_stage_trained_for_it(tmp_path):
    from fastgen.methods.base import FINAL_MODEL

    m, weights = _staged_tscd(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tscd_stage1_k4.pt", "tscd_stage2_k2.pt"]
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    for steps, stage in [(4, 0), (2, 1)]:
        own, final = m.row_sources(steps)
        assert own.suffixes == ("",) and own.note == f"tscd_stage{stage + 1}_k{steps}.pt"
        assert final.suffixes == (FINAL_MODEL,) and final.note == ""
        with own.weights():
            x = m.sample(noise, ["a point in the top row"] * 6, steps)
        torch.testing.assert_close(x, _sample_with(m, weights[stage], steps), rtol=0, atol=0)
        assert not torch.allclose(x, _sample_with(m, weights[2], steps))  # the stages are told apart
        # after the block the network holds the final weights again, exactly
        assert all(torch.equal(v, weights[2][k]) for k, v in m.sampling_unet.state_dict().items())
    # the current stage (k = 1) at one step: the final model under both labels (one sample set; γ does not enter)
    assert [s.suffixes for s in m.row_sources(1)] == [("", FINAL_MODEL)]
    # a step count no stage was trained for: the current weights for both, sampled with DDIM and with TCD γ = 1
    assert [s.suffixes for s in m.row_sources(8)] == [("",), (FINAL_MODEL,)]
    # the untrained method and its control have their own rows only
    assert [s.suffixes for s in m.control().row_sources(4)] == [("",)]
    m.images_seen.zero_()
    assert [s.suffixes for s in m.row_sources(4)] == [("",)]


@pytest.mark.parametrize("steps", [2, 8])
def test_final_model_rows_sample_with_tcd_at_final_sample_eta(tmp_path, steps):
    """Hyper-SD samples its unified one-segment model with TCD (eta = 1) at every N: the `tscd@final` rows use
    γ = final_sample_eta, the stage rows DDIM (sample_eta = 0); outside the block `sample` is DDIM again."""
    m, weights = _staged_tscd(tmp_path)
    own, final = m.row_sources(steps)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    prompts = ["a point in the top row"] * 6

    def reference(w, eta):  # the same sampler run with the stage's weights and an explicit γ
        other = copy.deepcopy(m)
        other.sampling_unet.load_state_dict(w)
        other.hparams.sample_eta = eta
        return other.sample(noise, prompts, steps, generator=torch.Generator().manual_seed(5))

    with final.weights():
        x_final = m.sample(noise, prompts, steps, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x_final, reference(weights[2], 1.0), rtol=0, atol=0)
    assert not torch.allclose(x_final, reference(weights[2], 0.0))
    with own.weights():
        x_own = m.sample(noise, prompts, steps, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x_own, reference(weights[1] if steps == 2 else weights[2], 0.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="final_sample_eta"):
        TSCD(build_random("tiny_latent"), final_sample_eta=1.5)


def test_a_missing_stage_snapshot_leaves_its_row_out_with_one_warning(tmp_path):
    from fastgen.methods.base import FINAL_MODEL

    m, _ = _staged_tscd(tmp_path)
    (tmp_path / "tscd_stage2_k2.pt").unlink()
    with pytest.warns(UserWarning, match=r"stage 2 \(k = 2, tscd_stage2_k2.pt\) are missing.*2-step row is left out"):
        assert [s.suffixes for s in m.row_sources(2)] == [(FINAL_MODEL,)]
    (tmp_path / "tscd_stage1_k4.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="tscd_stage1_k4.pt: not a readable TSCD stage snapshot"):
        m.read_stage(0)


def test_the_evaluation_writes_stage_rows_and_final_rows_as_separate_series(tmp_path):
    """run_eval on the points testbed: `tscd` N-step rows from the k = N stage (the snapshot named in `checkpoint`),
    `tscd@final` rows from the final model at every N; the table and plots show two series."""
    from fastgen.data.points import PointsDataModule
    from fastgen.eval.leaderboard.io import read_leaderboard
    from fastgen.eval.leaderboard.table import metric_table, summarise
    from fastgen.eval.leaderboard.plots import metric_vs_steps
    from fastgen.eval.evaluator.run_eval import run_eval

    m, _ = _staged_tscd(tmp_path / "ckpts")
    settings = {"metrics": "points", "num_samples": 200, "batch_size": 200, "steps": [1, 2, 4, 8],
                "fid": {"enabled": False}, "clip": {"enabled": False}, "aesthetic": {"enabled": False},
                "latency": {"enabled": False}, "grids": False, "leaderboard": str(tmp_path / "board.csv")}
    rows = run_eval(m, PointsDataModule(num_points=800), settings, experiment="tscd_points", checkpoint="kimg=3.000")
    got = {(r["method"], r["steps"]): r for r in rows}
    assert sorted(got) == sorted((name, n) for name in ("tscd", "tscd@final") for n in (1, 2, 4, 8))
    assert got["tscd", 4]["checkpoint"] == "kimg=3.000 [tscd_stage1_k4.pt]"
    assert got["tscd", 2]["checkpoint"] == "kimg=3.000 [tscd_stage2_k2.pt]"
    assert got["tscd", 1]["checkpoint"] == got["tscd@final", 4]["checkpoint"] == "kimg=3.000"
    # one step: the same samples under both labels; else other weights (2, 4) or another sampler (8: TCD γ = 1)
    assert got["tscd", 1]["energy_distance"] == got["tscd@final", 1]["energy_distance"]
    for n in (2, 4, 8):
        assert got["tscd", n]["energy_distance"] != got["tscd@final", n]["energy_distance"]
    summary = summarise(read_leaderboard(tmp_path / "board.csv"))
    table = metric_table(summary, "prompt_accuracy")  # (the summary's metrics; the kNN one on points)
    assert list(table.index) == ["tscd", "tscd@final"] and (table != "").all().all()
    metric_vs_steps(summary, "prompt_accuracy", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
