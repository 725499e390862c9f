"""ControlNet residuals in every method's UNet at every sampling step: zero convolutions at zero leave the sampler
unchanged, non-zero ones change it, and fastgen's residuals equal diffusers' StableDiffusionControlNetPipeline's."""

import copy

import pytest
import torch

from fastgen.networks.controlnet import attach_controlnet, controlnet_for
from fastgen.generation.sampling import sample_pixels

PROMPTS = ["a red square", "a small blue circle"]


@pytest.fixture(scope="module")
def tiny():
    from fastgen.networks import build_random

    torch.set_num_threads(1)
    return build_random("tiny_latent", seed=0)


def make(name, backbone):
    from fastgen.methods.ddgan import DDGAN
    from fastgen.methods.dpm_solver import DPMSolverBaseline
    from fastgen.methods.lcm import LCM
    from fastgen.methods.tscd import TSCD
    from fastgen.methods.ufogen import UFOGen

    bb = copy.deepcopy(backbone)
    return {
        "ufogen": lambda: UFOGen(bb, eval_teacher=False),
        "lcm": lambda: LCM(bb, guidance_embed_dim=32),
        "tscd": lambda: TSCD(bb),
        "ddgan": lambda: DDGAN(bb, num_steps=2, eval_teacher=False),
        "dpm_solver": lambda: DPMSolverBaseline(bb, guidance_scale=3.0),
    }[name]().eval()


def open_zero_convs(controlnet, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "zero_conv" in name or "mid_block" in name or "conv_out" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("name", ["ufogen", "lcm", "tscd", "ddgan", "dpm_solver"])
def test_controlnet_residuals_reach_every_methods_sampler(tiny, name):
    method = make(name, tiny)
    controlnet = controlnet_for(tiny.unet, downsample=2).eval()  # the teacher's encoder, zero convolutions at zero
    control = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    indices = torch.arange(2)
    plain = sample_pixels(method, PROMPTS, indices, 2, seed=0)
    calls = []
    controlnet.register_forward_hook(lambda *a: calls.append(1))
    with attach_controlnet(method, controlnet, control):
        zero = sample_pixels(method, PROMPTS, indices, 2, seed=0)
        assert len(calls) == 2  # one ControlNet call per sampling step (CFG runs one doubled batch)
        open_zero_convs(controlnet)
        controlled = sample_pixels(method, PROMPTS, indices, 2, seed=0)
    torch.testing.assert_close(zero, plain, atol=1e-6, rtol=0)
    assert (controlled - plain).abs().max() > 1e-3
    torch.testing.assert_close(sample_pixels(method, PROMPTS, indices, 2, seed=0), plain, atol=0, rtol=0)  # detached


def test_residuals_equal_diffusers_controlnet_pipeline(tiny, tmp_path):
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    from fastgen.eval.evaluator.run_eval import eval_noise, sampler_generators
    from fastgen.generation.export import export_method

    method = make("ufogen", tiny)
    with torch.no_grad():
        for p in method.ema_unet.parameters():
            p.mul_(1.01)
    controlnet = controlnet_for(tiny.unet, downsample=2).eval()
    open_zero_convs(controlnet)
    control = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    indices, seed = torch.arange(2), 5
    with attach_controlnet(method, controlnet, control):
        ours = (sample_pixels(method, PROMPTS, indices, 2, seed) + 1) / 2
    pipe = StableDiffusionPipeline.from_pretrained(export_method(method, tmp_path / "p"), safety_checker=None)
    pipe = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    theirs = pipe(PROMPTS, image=control, num_inference_steps=2, guidance_scale=0.0, output_type="pt",
                  latents=eval_noise(indices, (4, 16, 16), seed), generator=sampler_generators(indices, seed)).images
    assert (ours - theirs).abs().max() < 1e-4


def test_generate_with_a_controlnet_folder(tmp_path):
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from fastgen.runtime.config import CONFIG_PATH, register_resolvers
    from fastgen.generate import generate
    from fastgen.networks import build_random

    controlnet = controlnet_for(build_random("mnist_pixel", seed=0).unet, conditioning_channels=1)
    open_zero_convs(controlnet)
    controlnet.save_pretrained(tmp_path / "cn")
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[8:24, 12:20] = 255
    Image.fromarray(mask.numpy()).save(tmp_path / "mask.png")
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        base = ["experiment=ufogen_mnist", "experiment_name=ufogen_mnist", "model=mnist_pixel_random", "device=cpu",
                f"paths.output_dir={tmp_path}", f"paths.runs_dir={tmp_path}/runs", "progress=false", "prompt=a digit"]
        plain = generate(compose("generate", overrides=[*base, f"out={tmp_path}/a"]))[0]
        controlled = generate(compose("generate", overrides=[*base, f"out={tmp_path}/b", f"controlnet={tmp_path}/cn",
                                                             f"control_image={tmp_path}/mask.png"]))[0]
        assert (plain - controlled).abs().max() > 1e-3
        with pytest.raises(FileNotFoundError, match="not a diffusers ControlNetModel folder"):
            generate(compose("generate", overrides=[*base, f"controlnet={tmp_path}", f"control_image={tmp_path}/mask.png"]))
