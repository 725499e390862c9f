"""Reward models live in fastgen/eval (rewards.py); the entry point that builds a method injects the one its config
asks for (`fastgen.runtime.build.instantiate_method`), and a method built without it says so in one line."""

import pytest
import torch

from fastgen.runtime.build import instantiate_method
from fastgen.eval.models.rewards import AestheticReward, build_reward
from fastgen.methods.tscd import TSCD
from fastgen.networks.points import build_points_random
from test_eval_clip_aesthetic import tiny_768_file  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _spec(folder):
    return {"name": "aesthetic", "weights": str(folder / "sac+logos+ava1-l14-linearMSE.pth"),
            "clip_model": "fastgen-test-tiny-768", "clip_pretrained": str(folder / "clip.pt")}


def test_aesthetic_reward_is_the_evaluation_score_and_differentiable(tiny_768_file):  # noqa: F811
    from fastgen.eval.models.aesthetic import load_aesthetic_scorer

    args = (str(tiny_768_file / "sac+logos+ava1-l14-linearMSE.pth"), "fastgen-test-tiny-768", str(tiny_768_file / "clip.pt"))
    reward = AestheticReward(*args)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pixels = (images.float() / 127.5 - 1.0).requires_grad_(True)
    scores = reward(pixels)
    torch.testing.assert_close(scores.detach(), load_aesthetic_scorer(*args)(images), rtol=1e-4, atol=1e-4)
    scores.sum().backward()
    assert pixels.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="method.reward.weights"):
        AestheticReward(str(tiny_768_file / "missing.pth"))


def test_the_builder_injects_the_reward_the_method_config_asks_for(tiny_768_file):  # noqa: F811
    cfg = {"_target_": "fastgen.methods.tscd.TSCD", "reward": _spec(tiny_768_file), "reward_weight": 0.5}
    method = instantiate_method(cfg, build_points_random(3, hidden_dim=16, num_layers=1))
    assert isinstance(method.feedback.reward_fn, AestheticReward)
    assert method.hparams.reward == _spec(tiny_768_file)  # the spec (primitives) is the checkpoint's record
    assert "reward_fn" not in method.hparams


def test_a_reward_asked_for_but_not_passed_is_one_clear_line(tiny_768_file):  # noqa: F811
    backbone = build_points_random(3, hidden_dim=16, num_layers=1)
    with pytest.raises(ValueError, match=r"method.reward=.* asks for a reward model that was not passed in: build "
                                         r"the method with fastgen.runtime.build.instantiate_method"):
        TSCD(backbone, reward=_spec(tiny_768_file), reward_weight=0.5)
    with pytest.raises(ValueError, match=r"method.reward_weight > 0 needs a reward model: set method.reward"):
        TSCD(backbone, reward_weight=0.5)
    with pytest.raises(ValueError, match=r"method.reward.name='image_reward' is not one of \['aesthetic', 'digit', "):
        build_reward({"name": "image_reward"})
    with pytest.raises(ValueError, match=r"method.reward \(aesthetic\): .*unexpected keyword argument 'weight'"):
        build_reward({"name": "aesthetic", "weight": "x.pth"})
