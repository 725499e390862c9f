"""Like-for-like controls (rows `<method>@init`, `FewStepMethod.control()`): the untrained method sampled its own way
with the guidance its trained samples embody. LCM, LCM-LoRA and TSCD distil the teacher's CFG at
`teacher_guidance_scale`, so their control runs the teacher with that CFG through the method's sampler (2 evaluations
per step); UFOGen, DDGAN and SIDDM learn the data without CFG and are their own control."""

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir

from fastgen.runtime.config import CONFIG_PATH, register_resolvers
from fastgen.core import classifier_free_guidance, trailing_timesteps
from fastgen.methods.ddgan import DDGAN
from fastgen.methods.lcm import LCM
from fastgen.methods.tscd import TSCD
from fastgen.methods.ufogen import UFOGen
from fastgen.networks.points import build_points_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
PROMPTS = ["a point in the top row", "a point in the bottom row", "a point in the second row"]


@pytest.fixture(scope="module")
def backbone():
    """A random points MLP whose output layer is not zero (its init), so that predictions depend on the prompt."""
    bb = build_points_random(2, hidden_dim=32, num_layers=2)
    with torch.no_grad():
        bb.unet.proj_out.weight.copy_(torch.randn(bb.unet.proj_out.weight.shape, generator=torch.Generator().manual_seed(1)))
    return bb


def _noise():
    return torch.randn(3, 2, generator=torch.Generator().manual_seed(0))


def _hand_cfg_x0(bb, teacher, x, t, w):
    """The teacher's CFG x̂0 at scale w, from its conditional and unconditional (empty prompt) passes, one at a time."""
    t = torch.full((x.shape[0],), t)
    x0_c, _ = bb.denoise(teacher, x, t, bb.encode_prompts(PROMPTS))
    x0_u, _ = bb.denoise(teacher, x, t, bb.encode_prompts([""] * len(PROMPTS)))
    return x0_u + w * (x0_c - x0_u)


def _methods(backbone, w):
    lcm = LCM(copy.deepcopy(backbone), guidance_embed_dim=16, guidance_min=w, guidance_max=w, sample_guidance=w)
    lora = LCM(copy.deepcopy(backbone), lora_rank=4, guidance_embed_dim=None, guidance_min=w, guidance_max=w,
               target_ema_decay=None)
    tscd = TSCD(copy.deepcopy(backbone), teacher_guidance_scale=w)
    return lcm.eval(), lora.eval(), tscd.eval()


def test_a_consistency_control_at_one_step_is_the_teachers_cfg_x0(backbone):
    w = 2.0
    lcm, lora, tscd = _methods(backbone, w)
    bb, x = tscd.backbone, _noise()
    expected = _hand_cfg_x0(bb, tscd.teacher_unet, x, 999, w)
    assert not torch.allclose(expected, _hand_cfg_x0(bb, tscd.teacher_unet, x, 999, 1.0), atol=1e-3)  # CFG matters
    # TSCD: one DDIM step from 999 to the clean sample is x̂0 itself
    torch.testing.assert_close(tscd.control().sample(x, PROMPTS, 1), expected, rtol=1e-5, atol=1e-6)
    # LCM (full and LoRA): the consistency output c_skip·x + c_out·x̂0 at t = 999 (σ_d = 0.5, timestep scaling 10)
    c_skip, c_out = 0.25 / ((10 * 999) ** 2 + 0.25), 10 * 999 / ((10 * 999) ** 2 + 0.25) ** 0.5
    for method in (lcm, lora):
        got = method.control().sample(x, PROMPTS, 1)
        torch.testing.assert_close(got, c_skip * x + c_out * expected, rtol=1e-5, atol=1e-6)
    # the trained method's own sampler at init is the unguided teacher: not the control
    assert not torch.allclose(tscd.sample(x, PROMPTS, 1), expected, atol=1e-3)


def test_a_tscd_control_takes_guided_ddim_steps(backbone):
    """Two steps: DDIM 999 → 499 with the teacher's CFG x̂0 and ε̂, then to the clean sample."""
    w = 3.0
    tscd = _methods(backbone, w)[2]
    bb, x = tscd.backbone, _noise()
    cond, uncond = bb.encode_prompts(PROMPTS), bb.encode_prompts([""] * 3)
    expected = x
    for t, s in zip(trailing_timesteps(2).tolist(), [499, -1]):
        t = torch.full((3,), t)
        (x0_c, e_c), (x0_u, e_u) = bb.denoise(tscd.teacher_unet, expected, t, cond), bb.denoise(tscd.teacher_unet, expected, t, uncond)
        x0, eps = classifier_free_guidance(x0_c, x0_u, w), classifier_free_guidance(e_c, e_u, w)
        expected = x0 if s < 0 else bb.alphas_cumprod[s].sqrt() * x0 + (1 - bb.alphas_cumprod[s]).sqrt() * eps
    torch.testing.assert_close(tscd.control().sample(x, PROMPTS, 2), expected, rtol=1e-5, atol=1e-6)


def test_controls_record_their_guidance_and_nfe(backbone):
    for method in _methods(backbone, 2.0):
        control = method.control()
        assert control.guidance_scale == 2.0 and control.nfe(4) == 8  # CFG: two teacher evaluations per step
        assert method.nfe(4) == 4 and method.control_guidance is None  # the method itself is left as it was
    for method in _methods(backbone, 1.0):
        assert method.control().nfe(4) == 4  # scale 1: the conditional pass only
    ufogen = UFOGen(copy.deepcopy(backbone))
    ddgan = DDGAN(copy.deepcopy(backbone), nz=4)
    for method in (ufogen, ddgan):  # trained on data without CFG: their own control
        assert method.control() is method and method.guidance_scale == 0.0


def test_lcm_and_ufogen_one_step_controls_differ_exactly_by_the_guidance(backbone):
    """At w > 1 the LCM control is the guided teacher, UFOGen's the conditional one; at w = 1 both are x̂0 (up to
    LCM's c_skip ≈ 2.5e-9)."""
    x = _noise()
    ufogen = UFOGen(copy.deepcopy(backbone)).eval()
    for w, same in [(2.0, False), (1.0, True)]:
        lcm = _methods(backbone, w)[0]
        a, b = lcm.control().sample(x, PROMPTS, 1), ufogen.control().sample(x, PROMPTS, 1)
        assert torch.allclose(a, b, atol=1e-5) == same, w


def _evaluate_cfg(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("evaluate", overrides=overrides)


def test_evaluate_writes_like_for_like_control_rows(tmp_path):
    """`python -m fastgen.evaluate experiment=lcm_points label=lcm@init` at w = 2 (the committed points teacher):
    the row is the guided teacher's (guidance 2, NFE 2), not UFOGen's control row any more."""
    from fastgen.evaluate import evaluate

    def rows(experiment, label, *extra):
        return evaluate(_evaluate_cfg([
            f"experiment={experiment}", f"experiment_name={experiment}", f"label={label}", "real_data=false",
            "eval.steps=[1]", "eval.num_samples=200", "eval.batch_size=200", "eval.grids=false",
            f"eval.leaderboard={tmp_path}/board.csv", "device=cpu", f"paths.runs_dir={tmp_path}/runs",
            f"paths.output_dir={tmp_path}", *extra]))

    (lcm,) = rows("lcm_points", "lcm@init", "method.guidance_min=2", "method.guidance_max=2", "method.sample_guidance=2")
    (ufogen,) = rows("ufogen_points", "ufogen@init")
    (lcm_w1,) = rows("lcm_points", "lcm@init")  # the shipped points config: teacher scale 1
    assert (lcm["method"], lcm["guidance"], lcm["nfe"]) == ("lcm@init", 2.0, 2)
    assert (ufogen["method"], ufogen["guidance"], ufogen["nfe"]) == ("ufogen@init", 0.0, 1)
    assert (lcm_w1["guidance"], lcm_w1["nfe"]) == (1.0, 1)
    assert lcm["energy_distance"] != pytest.approx(ufogen["energy_distance"], rel=1e-3)
    assert lcm_w1["energy_distance"] == pytest.approx(ufogen["energy_distance"], rel=1e-4)


def test_a_control_label_must_name_the_untrained_method(backbone):
    from fastgen.evaluate import as_control

    lcm = _methods(backbone, 2.0)[0]
    assert as_control(lcm, "lcm@init", None).control_guidance == 2.0
    assert as_control(lcm, None, None) is lcm and as_control(lcm, "lcm-run-2", None) is lcm
    with pytest.raises(ValueError, match="label=lcm@init"):
        as_control(lcm, "ufogen@init", None)
    with pytest.raises(ValueError, match="drop ckpt"):
        as_control(lcm, "lcm@init", "runs/x/checkpoints/last.ckpt")


def test_the_latency_pass_times_a_control_as_the_control_samples(backbone):
    from fastgen.eval.evaluator.latency_pass import path_label, row_sampler

    tscd = _methods(backbone, 2.0)[2]
    assert row_sampler(tscd, "tscd@init", 2.0).nfe(4) == 8
    assert row_sampler(tscd, "tscd", 0.0) is tscd and row_sampler(tscd, "tscd@final", 0.0) is tscd
    # timed once per sampling path: the guided control apart, a control that is its method and @final rows with it
    ufogen = UFOGen(copy.deepcopy(backbone))
    assert [path_label(tscd, m) for m in ("tscd", "tscd@final", "tscd@init")] == ["tscd", "tscd", "tscd@init"]
    assert path_label(ufogen, "ufogen@init") == "ufogen"
