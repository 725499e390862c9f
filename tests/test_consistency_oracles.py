"""Oracles for LCM's and TSCD's consistency target with the teacher's guidance > 1: stub teacher, student and target
networks with known outputs, so the loss (LCM) and the student/target pair (TSCD) have exact expected values written
out from the papers' equations. A target from the wrong network or time, an unguided teacher step, a missing
boundary condition or the student's ω embedded wrongly fails here."""

import copy

import pytest
import torch
from oracle_stubs import StubNet, acp_at, v_to_x0_eps

from fastgen.core import guidance_scale_embedding
from fastgen.methods import lcm as lcm_module
from fastgen.methods.lcm import LCM
from fastgen.methods.tscd import TSCD
from fastgen.networks.points import build_points_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

D = 2
TEACHER, STUDENT, TARGET = StubNet(0.3, 1.0, 0.2), StubNet(0.5, -0.4, 0.1, 2.0), StubNet(0.7, 0.3, -0.3, -1.5)


@pytest.fixture(scope="module")
def backbone():
    return build_points_random(D, hidden_dim=16, num_layers=1)  # v-prediction, zero terminal SNR


def guided_ddim_by_hand(acp, x, t, s, cond, uncond, scale):
    """The teacher's CFG DDIM step t → s on x̂0 and ε̂ (LCM eq. 8); s = −1 gives x̂0^w."""
    (x0_c, eps_c), (x0_u, eps_u) = (v_to_x0_eps(TEACHER.by_hand(x, t, c), x, t, acp) for c in (cond, uncond))
    x0_w, eps_w = x0_u + scale * (x0_c - x0_u), eps_u + scale * (eps_c - eps_u)
    return acp_at(acp, s).sqrt() * x0_w + (1 - acp_at(acp, s)).sqrt() * eps_w


def with_stubs(method):
    method.teacher_unet = TEACHER
    method.backbone.unet = STUDENT
    if method.target_unet is not None:
        method.target_unet = TARGET
    return method


@pytest.mark.parametrize("variant", ["ema_target", "online_target"])
def test_lcm_loss_is_the_distance_to_the_guided_teacher_target(backbone, monkeypatch, variant):
    """L = pseudo-Huber(f_θ(x_{t_{n+k}}, t_{n+k}, ω), f_θ⁻(x̂_{t_n}, t_n, ω)), f = c_skip·x + c_out·x̂0 (LCM eq. 9,
    c_skip = σ_d²/((10t)² + σ_d²), c_out = 10t/sqrt((10t)² + σ_d²)), x̂_{t_n} the CFG-2 teacher's DDIM step, θ⁻ the EMA
    target or the online student (as LCM-LoRA); the ω-conditioned student sees the embedding of ω = scale − 1."""
    full = variant == "ema_target"
    kwargs = dict(guidance_embed_dim=8, target_ema_decay=0.95) if full else dict(guidance_embed_dim=None,
                                                                                   target_ema_decay=None)
    m = with_stubs(LCM(copy.deepcopy(backbone), guidance_min=2.0, guidance_max=2.0, sample_guidance=2.0, loss="huber",
                       huber_c=0.01, **kwargs))
    t_start = torch.tensor([999, 759, 259, 19])
    t_prev = (t_start - 20).clamp(min=0)
    monkeypatch.setattr(lcm_module, "solver_grid_pairs", lambda n, T, N, device: (t_start, t_prev))
    prompts = ["a point in the top row", "a point in the bottom row", "a point in the third row", "a point in the top row"]
    x0 = torch.tensor([[1.5, 1.5], [-0.5, -1.5], [0.5, 0.5], [-1.5, 1.5]])
    torch.manual_seed(3)
    loss = m.training_step({"x0": x0, "prompt": prompts}, 0)

    torch.manual_seed(3)
    noise = torch.randn_like(x0).double()  # the step's first draw (the times are patched)
    acp = backbone.alphas_cumprod.double()
    cond = backbone.encode_prompts(prompts).double()
    uncond = backbone.encode_prompts([""] * 4).double()
    x_t = acp[t_start].sqrt().view(-1, 1) * x0.double() + (1 - acp[t_start]).sqrt().view(-1, 1) * noise
    w_emb = guidance_scale_embedding(torch.full((4,), 2.0 - 1.0), 8).double() if full else None

    def f(net, x, t):
        c = 10.0 * t.double()
        c_skip, c_out = (0.25 / (c**2 + 0.25)).view(-1, 1), (c / (c**2 + 0.25).sqrt()).view(-1, 1)
        return c_skip * x + c_out * v_to_x0_eps(net.by_hand(x, t, cond, w_emb), x, t, acp)[0]

    x_prev = guided_ddim_by_hand(acp, x_t, t_start, t_prev, cond, uncond, 2.0)
    pred, target = f(STUDENT, x_t, t_start), f(TARGET if full else STUDENT, x_prev, t_prev)
    expected = ((pred - target) ** 2 + 0.01**2).sqrt().sub(0.01).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_tscd_pair_maps_student_and_target_to_the_segment_boundary(backbone):
    """k = 4 segments (boundaries 749, 499, 249, clean): t_b = lower boundary, t_{n−1} = max(t_n − 20, t_b); student
    Φ_θ(x_{t_n}, t_n → t_b) = α_b x̂0 + σ_b ε̂, target Φ_θ⁻(x̂_{t_{n−1}}, t_{n−1} → t_b) on the CFG-2 teacher's step, and
    the teacher's step itself where it lands on the boundary (Φ(x, s → s) = x; x̂0^w at the clean end)."""
    m = with_stubs(TSCD(copy.deepcopy(backbone), segments=[4], stage_kimg=[1.0], teacher_guidance_scale=2.0))
    t_n = torch.tensor([999, 259, 119, 19, 519])
    expect_b, expect_prev = torch.tensor([749, 249, -1, -1, 499]), torch.tensor([979, 249, 99, -1, 499])
    prompts = ["a point in the top row", "a point in the bottom row", "a point in the third row",
               "a point in the top row", "a point in the second row"]
    x0 = torch.tensor([[1.5, 1.5], [-0.5, -1.5], [0.5, 0.5], [-1.5, 1.5], [0.5, -0.5]])
    noise = torch.randn(5, D, generator=torch.Generator().manual_seed(1))
    cond, uncond = backbone.encode_prompts(prompts), backbone.encode_prompts([""] * 5)
    student, _, target, t_end = m.consistency_pair(x0, noise, t_n, cond, uncond, k=4)
    assert torch.equal(t_end, expect_b)

    acp = backbone.alphas_cumprod.double()
    cond, uncond = cond.double(), uncond.double()
    x_t = acp[t_n].sqrt().view(-1, 1) * x0.double() + (1 - acp[t_n]).sqrt().view(-1, 1) * noise.double()

    def ddim_map(net, x, t, s):
        x0_hat, eps_hat = v_to_x0_eps(net.by_hand(x, t, cond), x, t, acp)
        return acp_at(acp, s).sqrt() * x0_hat + (1 - acp_at(acp, s)).sqrt() * eps_hat

    x_prev = guided_ddim_by_hand(acp, x_t, t_n, expect_prev, cond, uncond, 2.0)
    on_boundary = (expect_prev == expect_b).view(-1, 1)
    expected_target = torch.where(on_boundary, x_prev, ddim_map(TARGET, x_prev, expect_prev.clamp(min=0), expect_b))
    torch.testing.assert_close(student.double(), ddim_map(STUDENT, x_t, t_n, expect_b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(target.double(), expected_target, rtol=1e-5, atol=1e-6)
    assert on_boundary.flatten().tolist() == [False, True, False, True, True]
