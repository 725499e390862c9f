"""Reward feedback (ReFL, fastgen/methods/feedback.py) in TSCD, LCM and UFOGen: weight 0 is the method without
feedback bit for bit, the scored x_t is the student's own sampling chain (not the batch's data) with gradient through
the last prediction only, the reward's gradient reaches the generator only in the generator's phase, and a short run
with the digit reward raises the reward (a flipped sign lowers it and fails here)."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fastgen.core import q_sample
from fastgen.eval.models.rewards import DigitReward
from fastgen.methods.feedback import RewardFeedback, Student, decode_with_grad, sample_chain
from fastgen.methods.lcm import LCM
from fastgen.methods.tscd import TSCD
from fastgen.methods.ufogen import UFOGen
from fastgen.networks import build_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPTS = ["a handwritten digit three", "a handwritten digit seven", "a handwritten digit zero", "a handwritten digit one"]


@pytest.fixture(scope="module")
def tiny():
    return build_random("tiny_latent")


def make(kind, tiny, **kw):
    bb = copy.deepcopy(tiny)
    torch.manual_seed(0)  # the discriminator's head
    if kind == "tscd":
        return TSCD(bb, **{"lr": 1e-3, "warmup_steps": 1, "teacher_guidance_scale": 2.0, "segments": [1], "stage_kimg": [1], **kw})
    if kind == "lcm":
        return LCM(bb, **{"lr": 1e-3, "warmup_steps": 1, "guidance_min": 2.0, "guidance_max": 2.0, "sample_guidance": 2.0, **kw})
    return UFOGen(bb, **{"eval_teacher": False, "lr_g": 1e-3, **kw})


def batches(bb, n=6, offset=0):
    return [{"latent": torch.randn(4, *bb.sample_shape, generator=torch.Generator().manual_seed(i + offset)),
             "prompt": PROMPTS} for i in range(n)]


def train(method, steps, seed=0, data=0):
    torch.manual_seed(seed)
    trainer = L.Trainer(max_steps=int(steps * method.optimizer_steps_per_training_step), accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(method, DataLoader(batches(method.backbone, offset=data), batch_size=None))
    return method


def brightness(pixels, prompts):
    return pixels.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("kind", ["tscd", "lcm", "ufogen"])
def test_weight_zero_is_the_method_without_feedback_bit_for_bit(tiny, kind):
    plain = train(make(kind, tiny), 3).state_dict()
    spec = {"name": "brightness"}
    off = train(make(kind, tiny, reward=spec, reward_fn=brightness, reward_weight=0.0), 3).state_dict()
    on = train(make(kind, tiny, reward=spec, reward_fn=brightness, reward_weight=1.0), 3).state_dict()
    assert plain.keys() == off.keys()
    assert all(torch.equal(plain[k], off[k]) for k in plain)
    assert any(not torch.equal(plain[k], on[k]) for k in plain)  # the feedback does change training


def test_the_reward_reaches_the_generator_only_in_its_phase(tiny, monkeypatch):
    calls = []

    def reward(pixels, prompts):
        calls.append(len(prompts))
        return brightness(pixels, prompts)

    m = make("ufogen", tiny, reward={"name": "brightness"}, reward_fn=reward, reward_weight=1.0)
    bb = m.backbone
    x0, cond = torch.randn(4, *bb.sample_shape), bb.encode_prompts(PROMPTS)
    m.d_losses(x0, cond)
    assert calls == []  # the discriminator's phase never scores
    losses = m.g_losses(x0, cond, PROMPTS)
    assert calls == [4] and set(losses) == {"g_adv", "g_rec", "refl"}
    losses["refl"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.unet.parameters())
    assert all(p.grad is None for p in m.discriminator.parameters())
    # a training step: D's update leaves out the reward, G's takes it; D moves only by its own losses
    m = make("ufogen", tiny, reward={"name": "brightness"}, reward_fn=reward, reward_weight=1.0)
    monkeypatch.setattr(UFOGen, "g_step", lambda self, *args: {})
    calls.clear()
    train(m, 1)
    assert calls == []
    # TSCD with its discriminator: the student's step scores once per training step, D never sees the reward
    monkeypatch.undo()
    m = make("tscd", tiny, reward={"name": "brightness"}, reward_fn=reward, reward_weight=1.0, adv_weights=[1.0])
    calls.clear()
    train(m, 2)
    assert calls == [4, 4]
    losses = {}
    m.feedback.add(losses, m.backbone, x0, cond, PROMPTS, student_of(m))
    m.discriminator.zero_grad(set_to_none=True)
    losses["refl"].backward()
    assert all(p.grad is None for p in m.discriminator.parameters())


def student_of(method, w_emb=None) -> Student:
    """The method's student as its feedback term sees it (TSCD: the current stage's k; LCM: at the ω of w_emb)."""
    if isinstance(method, TSCD):
        return method.reward_student(int(method.segments_now))
    return method.reward_student(w_emb) if isinstance(method, LCM) else method.reward_student()


def mean_reward(method, feedback, seed=123):
    """The digit reward of the student's x̂0 on its own chain, on fixed draws of (t, noise)."""
    bb = method.backbone
    x0 = torch.zeros(16, *bb.sample_shape)
    prompts = PROMPTS * 4
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(feedback.scores(bb, x0, bb.encode_prompts(prompts), prompts, student_of(method)).mean())


@pytest.mark.parametrize("kind", ["tscd", "ufogen"])
def test_feedback_with_the_digit_reward_raises_the_reward(tiny, kind):
    digit = DigitReward()
    # t in [500, 999]: the tiny backbone predicts ε, so at the default late t (x̂0 = (x_t − σ_t ε̂)/α_t, σ_t small) the
    # student has little leverage on x̂0 and a random-init model climbs too slowly for a test of seconds
    kw = {"reward": {"name": "digit"}, "reward_fn": digit, "reward_t_range": [500, 999]}
    probe = RewardFeedback(digit, 1.0, (500, 999))
    before = mean_reward(make(kind, tiny, **kw), probe)
    plain = mean_reward(train(make(kind, tiny, **kw, reward_weight=0.0), 24), probe)
    fed = mean_reward(train(make(kind, tiny, **kw, reward_weight=10.0), 24), probe)
    # the digit classifier's log-probability of the prompted digit rises with feedback, and beyond the method alone
    assert fed > before + 0.3 and fed > plain + 0.3, (before, plain, fed)


def test_bad_feedback_settings_are_one_clear_line(tiny):
    with pytest.raises(ValueError, match=r"method.reward_t_range=\[900, 100\] must be \[t_min, t_max\]"):
        make("lcm", tiny, reward={"name": "digit"}, reward_fn=brightness, reward_weight=1.0, reward_t_range=[900, 100])
    with pytest.raises(ValueError, match=r"method.reward_weight > 0 needs a reward model: set method.reward"):
        make("ufogen", tiny, reward_weight=1.0)
    with pytest.raises(ValueError, match=r"method.reward=.* asks for a reward model that was not passed in"):
        make("lcm", tiny, reward={"name": "digit"})
    with pytest.raises(ValueError, match=r"method.reward_weight=-1.0 must be >= 0"):
        make("tscd", tiny, reward={"name": "digit"}, reward_fn=brightness, reward_weight=-1.0)
    with pytest.raises(ValueError, match=r"method.reward_source='real' is not one of \['chain', 'data'\]"):
        make("ufogen", tiny, reward={"name": "digit"}, reward_fn=brightness, reward_weight=1.0, reward_source="real")
    with pytest.raises(ValueError, match=r"method.reward_chain_steps=None must be a step count in \[1, 1000\]:"):
        make("ufogen", tiny, reward_chain_steps=None)
    with pytest.raises(ValueError, match=r"method.reward_chain_steps=0 must be a step count in \[1, 1000\] or null "
                                         r"\(the current stage's k\)"):
        make("tscd", tiny, reward_chain_steps=0)
    with pytest.raises(ValueError, match=r"method.reward_chain_steps=64 must be at most method.num_ddim_timesteps=50"):
        make("lcm", tiny, reward_chain_steps=64)


@pytest.mark.parametrize("kind", ["tscd", "lcm", "ufogen"])
def test_the_scored_image_does_not_depend_on_the_batchs_data(tiny, kind):
    """ReFL scores the student's own chain: one training step on two batches of different data (same seed, same
    weights) hands the reward the same image; noising the batch's data to t (the old form) would not."""
    seen = []

    def reward(pixels, prompts):
        seen.append(pixels.detach().clone())
        return brightness(pixels, prompts)

    for data in (0, 100):
        train(make(kind, tiny, reward={"name": "brightness"}, reward_fn=reward, reward_weight=1.0,
                   reward_t_range=[300, 300]), 1, data=data)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


@pytest.mark.parametrize("kind", ["tscd", "lcm", "ufogen"])
def test_the_scored_prediction_is_the_students_own_sample(tiny, kind):
    """With t on the student's 2-step grid ([999, 499], t = 499) the scored x̂0 is the method's own 2-step sample from
    the same noise and re-noising draws (the samplers' networks equal the online student at init)."""
    m = make(kind, tiny, reward={"name": "brightness"}, reward_fn=brightness, reward_weight=1.0,
             reward_t_range=[499, 499], reward_chain_steps=2)
    bb, prompts = m.backbone, PROMPTS
    cond = bb.encode_prompts(prompts)
    w_emb = m.guidance_embedding(torch.full((4,), m.sample_guidance)) if kind == "lcm" else None
    student, scored = student_of(m, w_emb), []
    recorded = Student(lambda x, t, c: scored.append(student.predict_x0(x, t, c)) or scored[-1], student.grid, student.step)
    torch.manual_seed(5)
    with torch.no_grad():
        m.feedback.scores(bb, torch.zeros(4, *bb.sample_shape), cond, prompts, recorded)
    torch.manual_seed(5)
    torch.randint(0, 1, (4,))  # the feedback's draw of t
    sample = m.sample(torch.randn(4, *bb.sample_shape), prompts, 2)
    torch.testing.assert_close(scored[-1], sample, rtol=1e-5, atol=1e-5)


def test_gradient_flows_only_through_the_last_prediction():
    """A stub student x̂0 = w·x on a 4-step grid: the chain runs under no_grad, so d(Σ x̂0)/dw = Σ x_t exactly, with
    x_t the chain's output for the same draws (a chain carrying gradient would add terms through x_t)."""
    w = torch.nn.Parameter(torch.tensor(0.7))
    grads = []
    student = Student(lambda x, t, c: grads.append(torch.is_grad_enabled()) or w * x, [999, 749, 499, 249])
    acp = torch.linspace(0.999, 0.01, 1000)
    bb = type("Bb", (), {"vae": None, "alphas_cumprod": acp})()
    feedback = RewardFeedback(lambda x, prompts: x.sum(dim=1), 1.0, (100, 600))
    torch.manual_seed(3)
    r = feedback.scores(bb, torch.zeros(6, 2), None, None, student)
    r.sum().backward()
    assert len(grads) >= 3 and grads == [False] * (len(grads) - 1) + [True]  # the chain's steps, then one graded
    torch.manual_seed(3)
    t = torch.randint(100, 601, (6,))
    x_start = torch.randn(6, 2)
    x_t = sample_chain(Student(lambda x, t, c: 0.7 * x, student.grid), x_start, t, None, acp)
    torch.testing.assert_close(w.grad, x_t.sum())
    assert (x_t - x_start).abs().min() > 0  # every sample's chain moved off its starting noise


def test_the_chain_stops_at_t():
    """Per sample, the chain takes the grid's steps down to the last grid point above t, the last one landing on t;
    a t on the grid is the sampler's own state there, and t = T − 1 is the starting noise."""
    hops = []

    def step(x, t, s, c):
        hops.append((t.tolist(), s.tolist()))
        return x + 1.0

    student = Student(None, [999, 499], step)
    t = torch.tensor([999, 700, 499, 100])
    x = sample_chain(student, torch.zeros(4, 1), t, None, torch.linspace(0.999, 0.01, 1000))
    assert x.squeeze(1).tolist() == [0.0, 1.0, 1.0, 2.0]
    assert hops == [([999] * 4, [999, 700, 499, 499]), ([499] * 4, [999, 700, 499, 100])]


def test_the_data_source_is_the_batch_noised_to_t():
    """`reward_source: data` keeps the cheaper form: x_t ~ q(x_t | x0) of the batch, for the same draws."""
    seen = []
    student = Student(lambda x, t, c: seen.append(x) or x, [999])
    acp = torch.linspace(0.999, 0.01, 1000)
    bb = type("Bb", (), {"vae": None, "alphas_cumprod": acp})()
    x0 = torch.randn(5, 3)
    torch.manual_seed(4)
    RewardFeedback(lambda x, p: x.sum(dim=1), 1.0, (0, 999), source="data").scores(bb, x0, None, None, student)
    torch.manual_seed(4)
    t = torch.randint(0, 1000, (5,))
    torch.testing.assert_close(seen[0], q_sample(x0, t, torch.randn_like(x0), acp))


# -- the DDGAN family and DMD --------------------------------------------------------------------------------------
def make_gan(kind, tiny, **kw):
    """A 2-level DDGAN / SIDDM (levels 499, 999) or DMD on the tiny backbone."""
    from fastgen.methods.ddgan import DDGAN
    from fastgen.methods.dmd import DMD
    from fastgen.methods.siddm import SIDDM

    bb = copy.deepcopy(tiny)
    torch.manual_seed(0)
    if kind == "dmd":
        return DMD(bb, **{"lr_g": 1e-3, "lr_fake": 1e-3, "fake_updates_per_g": 1, "real_guidance_scale": 1.0, **kw})
    cls = DDGAN if kind == "ddgan" else SIDDM
    return cls(bb, **{"num_steps": 2, "nz": 4, "eval_teacher": False, "lr_g": 1e-3, "r1_gamma": 0.0, **kw})


@pytest.mark.parametrize("kind", ["ddgan", "siddm", "dmd"])
def test_weight_zero_is_the_gan_without_feedback_bit_for_bit(tiny, kind):
    plain = train(make_gan(kind, tiny), 2).state_dict()
    spec = {"name": "brightness"}
    off = train(make_gan(kind, tiny, reward=spec, reward_fn=brightness, reward_weight=0.0), 2).state_dict()
    on = train(make_gan(kind, tiny, reward=spec, reward_fn=brightness, reward_weight=1.0), 2).state_dict()
    assert plain.keys() == off.keys()
    assert all(torch.equal(plain[k], off[k]) for k in plain)
    generator = [k for k in plain if k.startswith("backbone.unet.")]
    assert any(not torch.equal(plain[k], on[k]) for k in generator)  # the feedback does change the generator


@pytest.mark.parametrize("kind", ["ddgan", "siddm"])
def test_the_ddgan_family_scores_its_own_chain_at_its_levels(tiny, kind):
    """The default range scores the lowest level: the scored x̂0 is the method's own 2-level sample from the same
    noise, z and posterior draws (the EMA sampler equals the online G at init); a range without a level is one line."""
    m = make_gan(kind, tiny, reward={"name": "brightness"}, reward_fn=brightness, reward_weight=1.0)
    bb, prompts = m.backbone, PROMPTS
    student, scored = m.reward_student(), []
    assert student.times == [499, 999] and list(student.grid) == [999, 499]
    recorded = Student(lambda x, t, c: scored.append((t, student.predict_x0(x, t, c))) or scored[-1][1], student.grid,
                       student.step, student.times)
    torch.manual_seed(5)
    with torch.no_grad():
        m.feedback.scores(bb, torch.zeros(4, *bb.sample_shape), bb.encode_prompts(prompts), prompts, recorded)
    assert torch.equal(scored[-1][0], torch.full((4,), 499))
    torch.manual_seed(5)
    torch.randint(0, 1, (4,))  # the feedback's draw of t (over the one level in range)
    sample = m.sample(torch.randn(4, *bb.sample_shape), prompts, 2)
    torch.testing.assert_close(scored[-1][1], sample, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"reward_t_range=\[1, 226\] holds none of the generator's levels \[499, 999\]"):
        make_gan(kind, tiny, reward={"name": "brightness"}, reward_fn=brightness, reward_weight=1.0, reward_t_range=[1, 226])


def test_dmd_scores_the_generators_one_step_sample_in_the_generator_phase_only(tiny, monkeypatch):
    calls = []

    def reward(pixels, prompts):
        calls.append(len(prompts))
        return brightness(pixels, prompts)

    from fastgen.methods.dmd import DMD

    m = make_gan("dmd", tiny, reward={"name": "brightness"}, reward_fn=reward, reward_weight=1.0)
    bb = m.backbone
    z, cond = torch.randn(4, *bb.sample_shape), bb.encode_prompts(PROMPTS)
    x0_gen = m.generate(bb.unet, z, cond)
    losses = m.g_losses(x0_gen, z, None, cond, None, PROMPTS)
    assert calls == [4] and set(losses) == {"dm", "refl"}
    torch.testing.assert_close(losses["refl"], -brightness(decode_with_grad(bb, x0_gen), PROMPTS).mean())
    losses["refl"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.unet.parameters())
    assert all(p.grad is None for p in m.fake_unet.parameters())
    monkeypatch.setattr(DMD, "g_step", lambda self, *args: {})  # fake-score steps only: never scored
    calls.clear()
    train(make_gan("dmd", tiny, reward={"name": "brightness"}, reward_fn=reward, reward_weight=1.0), 2)
    assert calls == []
