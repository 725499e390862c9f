"""Reward feedback (ReFL, fastgen/methods/feedback.py) in TSCD, LCM and UFOGen: weight 0 is the method without
feedback bit for bit, the reward's gradient reaches the generator only in the generator's phase, and a short run
with the digit reward raises the reward (a flipped sign lowers it and fails here)."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fastgen.eval.rewards import DigitReward
from fastgen.methods.feedback import RewardFeedback
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


def batches(bb, n=6):
    return [{"latent": torch.randn(4, *bb.sample_shape, generator=torch.Generator().manual_seed(i)), "prompt": PROMPTS}
            for i in range(n)]


def train(method, steps, seed=0):
    torch.manual_seed(seed)
    trainer = L.Trainer(max_steps=int(steps * method.optimizer_steps_per_training_step), accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(method, DataLoader(batches(method.backbone), batch_size=None))
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
    m.feedback.add(losses, m.backbone, x0, cond, PROMPTS, lambda x, t, c: m.backbone.denoise(m.backbone.unet, x, t, c)[0])
    m.discriminator.zero_grad(set_to_none=True)
    losses["refl"].backward()
    assert all(p.grad is None for p in m.discriminator.parameters())


def mean_reward(method, feedback, seed=123):
    """The digit reward of the student's x̂0 on fixed draws of (data, t, noise)."""
    bb = method.backbone
    x0 = torch.randn(16, *bb.sample_shape, generator=torch.Generator().manual_seed(seed))
    prompts = PROMPTS * 4
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(feedback.scores(bb, x0, bb.encode_prompts(prompts), prompts,
                                     lambda x, t, c: bb.denoise(bb.unet, x, t, c)[0]).mean())


@pytest.mark.parametrize("kind", ["tscd", "ufogen"])
def test_feedback_with_the_digit_reward_raises_the_reward(tiny, kind):
    digit = DigitReward()
    kw = {"reward": {"name": "digit"}, "reward_fn": digit, "reward_t_range": [500, 999]}
    probe = RewardFeedback(digit, 1.0, (500, 999))
    before = mean_reward(make(kind, tiny, **kw), probe)
    plain = mean_reward(train(make(kind, tiny, **kw, reward_weight=0.0), 12), probe)
    fed = mean_reward(train(make(kind, tiny, **kw, reward_weight=10.0), 12), probe)
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
