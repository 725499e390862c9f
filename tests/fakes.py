"""Tiny stand-ins for a FewStepMethod and a data module, shared by the evaluation tests (no training needed)."""

import torch
from torch import nn

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class FakeBackbone(nn.Module):
    name = "fake_backbone"

    def __init__(self, shape=(1, 16, 16)):
        super().__init__()
        self.sample_shape = shape
        self.scale = nn.Parameter(torch.ones(()))

    def decode(self, x0):
        return x0.clamp(-1, 1)


class FakeMethod(nn.Module):
    """Deterministic 'sampler': more steps -> closer to a blurred version of the noise (so metrics change)."""

    name = "fake"
    supported_steps = None
    guidance_scale = 0.0

    def __init__(self, shape=(1, 16, 16), supported_steps=None):
        super().__init__()
        self.backbone = FakeBackbone(shape)
        self.supported_steps = supported_steps
        self.calls = []

    def sample(self, noise, prompts, steps, generator=None):
        assert len(prompts) == len(noise)
        self.calls.append((len(noise), steps))
        smooth = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1)
        return torch.tanh(self.backbone.scale * (noise / steps + smooth))

    def nfe(self, steps):
        return steps


class FakeDataModule:
    """Random-but-fixed uint8 reference images and a few distinct prompts."""

    name = "fake"
    resolution = 16

    def __init__(self, channels=1):
        self.channels = channels

    def reference_images(self, split="heldout", n=None):
        generator = torch.Generator().manual_seed({"heldout": 1, "train": 2}[split])
        images = torch.randint(0, 256, (n or 64, self.channels, 16, 16), generator=generator, dtype=torch.uint8)
        return images.float().div(255).pow(2).mul(255).to(torch.uint8)

    def eval_prompts(self, n, seed=0):
        return [f"a handwritten digit {DIGITS[i % 3]}" for i in range(n)]


def test_fake_method_is_deterministic():
    method = FakeMethod()
    noise = torch.randn(2, 1, 16, 16)
    assert torch.equal(method.sample(noise, ["a", "b"], 2), method.sample(noise, ["a", "b"], 2))
