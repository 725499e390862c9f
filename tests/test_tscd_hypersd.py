"""TSCD's Hyper-SD parts: the one-step DMD stage after the segment stages (`method.final_stage=dmd`) — its place in
the stage schedule, phases that touch only their own network, a resume in the middle of it, losses that move, its
`tscd@dmd` rows — and the unified model's rows (`tscd@unified`, `method.unified_eta`) against diffusers'
TCDScheduler."""

import copy
import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from test_ufogen import changed, snapshot  # the UFOGen tests' helpers
from torch.utils.data import DataLoader

import fastgen
import fastgen.methods.tscd as tscd_module
from fastgen.core import trailing_timesteps
from fastgen.fit import run
from fastgen.methods.base import FINAL_MODEL
from fastgen.methods.tscd import DMD_STAGE, UNIFIED, TSCD

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPT = "a point in the top row"


@pytest.fixture(scope="module")
def points():
    from fastgen.networks.points import build_points_random

    return build_points_random(2, hidden_dim=16, num_layers=1)


def make(backbone, **kw):
    kw = {"lr": 1e-2, "warmup_steps": 1, "teacher_guidance_scale": 1.0, "segments": [2, 1], "stage_kimg": [1, 1],
          "final_stage": "dmd", "dmd_mse_steps": 2, **kw}
    return TSCD(copy.deepcopy(backbone), **kw)


def loader(n=16, batch_size=4):
    from fastgen.data.points import PointsDataModule

    dm = PointsDataModule(num_points=64, batch_size=batch_size)
    x, labels = dm.points("train")
    return DataLoader([{"x0": x[i], "prompt": dm.prompts[int(labels[i])]} for i in range(n)], batch_size=batch_size)


def fit(method, max_steps, callbacks=()):
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(method, train_dataloaders=loader())
    return trainer


# -- the stage schedule ------------------------------------------------------------------------------------------------
def test_the_dmd_stage_follows_the_last_segment_stage_and_lasts_to_the_end(points, tmp_path):
    m = make(points, segments=[4, 2, 1], stage_kimg=[1, 1, 1])
    m.checkpoint_dir = tmp_path
    assert m.num_stages == 4 and not m.in_dmd_stage
    seen = []
    for kimg in [0, 0.999, 1, 2.5, 3, 50]:
        m.images_seen.fill_(int(kimg * 1000))
        seen.append((m.advance_stage(), int(m.stage)))
    # k = 4, 2, 1, then the DMD stage (k logged as 0) from sum(stage_kimg) = 3 kimg on, and never after it
    assert seen == [(4, 0), (4, 0), (2, 1), (1, 2), (0, 3), (0, 3)]
    assert m.in_dmd_stage and m.segments_now.item() == 0
    # every segment stage kept its weights, the k = 1 stage's included (the one-step model without DMD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tscd_stage1_k4.pt", "tscd_stage2_k2.pt", "tscd_stage3_k1.pt"]
    assert m.optimizer_steps_per_training_step == pytest.approx(1 + 1 / 5)
    # without final_stage the run stays in its last segment stage, as before
    plain = make(points, segments=[2, 1], final_stage=None)
    plain.images_seen.fill_(50_000)
    assert plain.advance_stage() == 1 and plain.num_stages == 2 and plain.fake_unet is None


def test_the_dmd_stage_guides_its_real_score_as_dmd_does(points):
    """The DMD stage's real-score CFG is DMD's own default (`method=dmd`'s real_guidance_scale), not the segment
    stages' teacher_guidance_scale (7.5 on SD1.5), in the class and in the shipped config."""
    import inspect

    from omegaconf import OmegaConf

    from fastgen.methods.dmd import DMD

    configs = Path(fastgen.__file__).parent / "configs" / "method"
    dmd_scale = OmegaConf.load(configs / "dmd.yaml").real_guidance_scale
    assert OmegaConf.load(configs / "tscd.yaml").dmd_real_guidance_scale == dmd_scale
    assert inspect.signature(DMD).parameters["real_guidance_scale"].default == dmd_scale
    assert make(points, teacher_guidance_scale=7.5).real_guidance_scale == dmd_scale


def test_bad_final_stage_options_name_the_config_key(points):
    for key, value in [("final_stage", "gan"), ("dmd_fake_updates_per_g", 0), ("dmd_mse_weight", -1.0),
                       ("dmd_real_guidance_scale", 0.5), ("dmd_max_t_fraction", 1.5), ("unified_eta", 1.5)]:
        with pytest.raises(ValueError, match=f"method.{key}"):
            make(points, **{key: value})


# -- the phases ---------------------------------------------------------------------------------------------------------
def in_dmd_stage(points, tmp_path, **kw):
    """A TSCD whose first training step is already in the DMD stage (its segment stages' snapshots are written)."""
    m = make(points, **kw)
    m.checkpoint_dir = tmp_path
    m.images_seen.fill_(2000)
    return m


def test_each_dmd_phase_changes_only_its_own_network(points, tmp_path, monkeypatch):
    m = in_dmd_stage(points, tmp_path, dmd_fake_updates_per_g=2)
    teacher = snapshot(m.teacher_unet)
    # a step that is not the student's turn (dmd_steps = 1 of 2): the fake score moves, the student and target do not
    m.dmd_steps.fill_(1)
    g0, t0, f0 = snapshot(m.backbone.unet), snapshot(m.target_unet), snapshot(m.fake_unet)
    fit(m, 1)
    assert m.in_dmd_stage and m.dmd_steps.item() == 2
    assert changed(m.fake_unet, f0) and not changed(m.backbone.unet, g0) and not changed(m.target_unet, t0)
    # the student's turn with the fake phase left out: the student and its EMA target move, the fake score does not
    real_phase = tscd_module.adversarial_phase

    def student_phase_only(method, opt, compute_losses, max_grad_norm=None):
        if opt is method.named_optimizers()["fake"]:
            return {}
        return real_phase(method, opt, compute_losses, max_grad_norm)

    monkeypatch.setattr(tscd_module, "adversarial_phase", student_phase_only)
    g0, t0, f0 = snapshot(m.backbone.unet), snapshot(m.target_unet), snapshot(m.fake_unet)
    fit(m, 1)  # one more step, the student's turn (dmd_steps 2; its fake update left out)
    assert m.dmd_steps.item() == 3
    assert changed(m.backbone.unet, g0) and changed(m.target_unet, t0) and not changed(m.fake_unet, f0)
    assert not changed(m.teacher_unet, teacher)


def test_the_student_turn_comes_every_fake_updates_per_g_steps(points, tmp_path, monkeypatch):
    m = in_dmd_stage(points, tmp_path, dmd_fake_updates_per_g=3)
    calls = []
    monkeypatch.setattr(tscd_module, "adversarial_phase", lambda method, opt, fn, clip=None: calls.append(
        "g" if opt is method.named_optimizers()["g"] else "f") or {"x": torch.zeros(())})
    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, train_dataloaders=loader())
    assert "".join(calls) == "gfffgfffgff"  # 8 steps: 3 student updates (steps 0, 3, 6) and 8 fake-score updates


def test_the_generator_terms_dm_mse_and_feedback(points, tmp_path, monkeypatch):
    """`mse` is dmd_mse_weight·MSE to the teacher's ODE output from the student's own noise; `refl` the weighted
    feedback hinge on the student's one-step sample."""
    import fastgen.methods.dmd as dmd

    m = make(points, dmd_mse_weight=2.0, dmd_mse_steps=3, reward_fn=lambda x, prompts: x.sum(dim=1), reward_weight=0.5,
             reward_margin=1.0)
    seen = {}

    def solver(backbone, unet, noise, prompts, steps, guidance):
        seen.update(unet=unet, noise=noise, steps=steps, guidance=guidance)
        return torch.zeros_like(noise)

    monkeypatch.setattr(dmd, "dpm_solver_sample", solver)
    z, x0_gen = torch.randn(2, 2), torch.full((2, 2), 0.25, requires_grad=True)
    cond = m.backbone.encode_prompts([PROMPT] * 2)
    losses = m.dmd_generator_losses(x0_gen, z, cond, cond, [PROMPT] * 2)
    assert set(losses) == {"dm", "mse", "refl"}
    assert losses["mse"].item() == pytest.approx(2.0 * 0.0625)
    assert losses["refl"].item() == pytest.approx(0.5 * (1.0 - 0.5))
    assert seen["unet"] is m.teacher_unet and seen["noise"] is z and seen["steps"] == 3 and seen["guidance"] == m.real_guidance_scale == 1.75
    sum(losses.values()).backward()
    assert torch.isfinite(x0_gen.grad).all()


# -- a short run; a resume inside the DMD stage --------------------------------------------------------------------------
def test_a_short_run_through_the_stages_moves_the_dmd_losses(points, tmp_path):
    from fastgen.networks.points import build_points_pretrained

    history = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            history.append({k[6:]: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    torch.manual_seed(0)
    m = make(build_points_pretrained("fastgen/assets/points_teacher/grid", dim=2), lr=1e-3, dmd_lr_fake=1e-3,
             stage_kimg=[0.008, 0.008], dmd_fake_updates_per_g=2)
    m.checkpoint_dir = tmp_path
    fit(m, 4 + 18, [Record()])  # 4 segment steps, then 12 DMD steps (6 of them the student's)
    segments = [h["segments"] for h in history]
    assert segments == [2, 2, 1, 1] + [0] * 12
    dmd = history[4:]
    for key in ("dm", "mse", "fake_denoise"):
        values = [h[key] for h in dmd]
        assert all(math.isfinite(v) for v in values), key
        assert len(set(values)) > 4, key


def test_checkpoint_resume_in_the_middle_of_the_dmd_stage(experiment_cfg, tmp_path):
    common = ("data.batch_size=4", "method.stage_kimg=[0.004,0.004,0.004,0.004]", "trainer.max_kimg=null",
              "method.dmd_mse_steps=2", "method.dmd_fake_updates_per_g=3", "eval=none")
    metrics = tmp_path / "runs/test_tscd_dmd_points/logs/metrics.csv"
    # 4 segment steps (one optimizer step each), then DMD steps: student + fake, fake, fake (Lightning counts 2, 1, 1)
    first = run(experiment_cfg("tscd_dmd_points", *common, "trainer.max_steps=7"))
    assert first.in_dmd_stage and first.dmd_steps.item() == 2 and first.images_seen.item() == 24
    folder = tmp_path / "runs/test_tscd_dmd_points/checkpoints"
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    assert state["dmd_steps"].item() == 2 and state["stage"].item() == 4 and state["segments_now"].item() == 0
    assert any(k.startswith("fake_unet.") for k in state) and len(ckpt["optimizer_states"]) == 2
    assert sorted(p.name for p in folder.glob("tscd_stage*")) == [f"tscd_stage{i + 1}_k{k}.pt" for i, k in
                                                                  enumerate([8, 4, 2, 1])]

    # resumed: one fake-only step (dmd_steps 2), then the student's turn (dmd_steps 3: student + fake)
    resumed = run(experiment_cfg("tscd_dmd_points", *common, "ckpt_path=last", "trainer.max_steps=10"))
    assert resumed.in_dmd_stage and resumed.dmd_steps.item() == 4 and resumed.images_seen.item() == 32
    segments = [float(r["train/segments"]) for r in csv.DictReader(open(metrics)) if r.get("train/segments")]
    assert segments == [8, 4, 2, 1, 0, 0, 0, 0]
    # the fake score continued from the checkpoint's (trained on: it moved), not from the teacher again
    fake = {k.removeprefix("fake_unet."): v for k, v in state.items() if k.startswith("fake_unet.")}
    teacher = resumed.teacher_unet.state_dict()
    now = resumed.fake_unet.state_dict()
    assert any(not torch.equal(now[k], v) for k, v in fake.items())
    assert any(not torch.equal(fake[k], teacher[k]) for k in fake)


# -- rows: with and without the DMD stage; the unified model ------------------------------------------------------------
def test_the_dmd_stage_has_its_own_one_step_rows_beside_the_k1_stage(points, tmp_path):
    m = make(points, segments=[2, 1], unified_eta=1.0)
    m.checkpoint_dir = tmp_path
    m.images_seen.fill_(2000)
    m.advance_stage()
    assert m.in_dmd_stage
    one = m.row_sources(1)
    assert [s.suffixes for s in one] == [("",), (DMD_STAGE, FINAL_MODEL), (UNIFIED,)]
    assert one[0].note == "tscd_stage2_k1.pt" and one[2].note == "TCD eta=1"
    assert [s.suffixes for s in m.row_sources(2)] == [("",), (FINAL_MODEL,), (UNIFIED,)]
    # no stage trained k = 8: the current weights at sample_eta, and as @final at final_sample_eta (TCD, γ = 1)
    assert [s.suffixes for s in m.row_sources(8)] == [("",), (FINAL_MODEL,), (UNIFIED,)]
    # the k = 1 stage's weights and the DMD stage's are told apart
    with torch.no_grad():
        for p in m.sampling_unet.parameters():
            p.add_(0.1)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with one[0].weights():
        without = m.sample(noise, [PROMPT] * 4, 1)
    assert not torch.allclose(without, m.sample(noise, [PROMPT] * 4, 1))
    # the untrained method and the control have their own rows only
    assert [s.suffixes for s in m.control().row_sources(1)] == [("",)]


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_the_unified_sampler_is_diffusers_tcd_scheduler(points, steps):
    """Inside `unified_sampling` the sampler is the stock TCDScheduler's (its default original_inference_steps, 50, as
    Hyper-SD's card loads it) step for step: its timesteps, γ-steps with fresh noise from the generator, the last to
    t = 0 — unlike the rows' DDIM to the clean sample."""
    from diffusers import TCDScheduler

    m = make(points, final_stage=None, unified_eta=0.6).eval()
    bb = m.backbone
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    with m.unified_sampling():
        ours = m.sample(noise, [PROMPT] * 3, steps, generator=torch.Generator().manual_seed(5))
    scheduler = TCDScheduler(**bb.schedule, prediction_type=bb.prediction_type)
    scheduler.set_timesteps(steps)
    if steps == 4:
        assert scheduler.timesteps.tolist() == [999, 759, 499, 259]  # not the trailing [999, 749, 499, 249]
    cond, x, generator = bb.encode_prompts([PROMPT] * 3), noise.clone(), torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = m.sampling_unet(x, t.expand(3), encoder_hidden_states=cond).sample
            x = scheduler.step(out, t, x, eta=0.6, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, m.sample(noise, [PROMPT] * 3, steps))  # outside the block: DDIM, as before
