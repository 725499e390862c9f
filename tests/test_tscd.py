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
from fastgen.methods.consistency_common import empty_prompt_cond
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
    common = (f"data.root={folder}", "method.stage_kimg=[0.004,0.004,0.004,0.004]", "trainer.max_kimg=null")
    metrics = tmp_path / "runs/test_tscd_tiny/logs/metrics.csv"

    def logged_segments():
        return [float(r["train/segments"]) for r in csv.DictReader(open(metrics)) if r.get("train/segments")]

    method = run(experiment_cfg("tscd_tiny", *common))
    assert method.segments_now.item() == 4 and method.stage.item() == 1 and logged_segments() == [8, 4]
    ckpt_file = tmp_path / "runs/test_tscd_tiny/checkpoints/last.ckpt"
    ckpt = torch.load(ckpt_file, weights_only=True)
    assert ckpt["state_dict"]["segments_now"].item() == 4 and ckpt["state_dict"]["stage"].item() == 1
    assert not any(k.startswith(("teacher_unet.", "backbone.vae.", "backbone.text_encoder.")) for k in ckpt["state_dict"])
    assert any(k.startswith("target_unet.") for k in ckpt["state_dict"])

    resumed = run(experiment_cfg("tscd_tiny", *common, "ckpt_path=last", "trainer.max_steps=4"))
    # the resumed run continues the run's log: the stages before the resume, then the last two
    assert resumed.segments_now.item() == 1 and resumed.stage.item() == 3 and logged_segments() == [8, 4, 2, 1]


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
    for key in ("train/consistency", "train/adv", "train/reward", "train/d_real", "train/d_fake"):
        assert torch.isfinite(metrics[key]), key
    assert any(not torch.equal(v, m.discriminator.state_dict()[k]) for k, v in disc_before.items())
    assert all(torch.equal(v, m.teacher_unet.state_dict()[k]) for k, v in teacher_before.items())
    with pytest.raises(ValueError, match="adv_weights needs one weight per stage"):
        tscd(tiny, adv_weights=[1.0])
