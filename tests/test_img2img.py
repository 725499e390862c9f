"""Image-to-image (SDEdit) for every method: strength -> start time, strength 1 is text-to-image from the same noise,
strength -> 0 gives the input back, and UFOGen's one step starts at the strength's time."""

import copy

import pytest
import torch

from fastgen.runtime.config import ASSETS
from fastgen.core import lcm_timesteps, strength_timestep
from fastgen.generation.sampling import img2img, sample_pixels


@pytest.fixture(scope="module")
def teacher():
    from fastgen.networks import build_pretrained

    torch.set_num_threads(1)
    return build_pretrained(str(ASSETS / "mnist_teacher"), require_vae=False)


def make(name, backbone):
    from fastgen.methods.ddgan import DDGAN
    from fastgen.methods.dpm_solver import DPMSolverBaseline
    from fastgen.methods.lcm import LCM
    from fastgen.methods.tscd import TSCD
    from fastgen.methods.ufogen import UFOGen

    bb = copy.deepcopy(backbone)
    return {
        "ufogen": lambda: UFOGen(bb, eval_teacher=False),
        "lcm": lambda: LCM(bb),
        "tscd": lambda: TSCD(bb, sample_eta=0.5),
        "ddgan": lambda: DDGAN(bb, eval_teacher=False),
        "dpm_solver": lambda: DPMSolverBaseline(bb, guidance_scale=2.0),
    }[name]().eval()


def test_strength_selects_the_start_time():
    assert [strength_timestep(s) for s in (1.0, 0.6, 0.25, 0.0)] == [999, 599, 249, -1]
    assert strength_timestep(0.0004) == -1 and strength_timestep(0.0006) == 0
    with pytest.raises(ValueError, match="strength"):
        strength_timestep(1.5)
    # LCM spaces its steps over the solver-grid points at or below the start, as if the grid ended there
    assert torch.equal(lcm_timesteps(4, start=999), lcm_timesteps(4))
    assert lcm_timesteps(2, start=599).tolist() == [599, 299]
    assert lcm_timesteps(1, start=19).tolist() == [19]
    with pytest.raises(ValueError, match="at or below the start"):
        lcm_timesteps(2, start=19)


def test_each_sampler_snaps_the_start_onto_its_own_grid(teacher):
    ufogen, lcm, ddgan = (make(n, teacher) for n in ("ufogen", "lcm", "ddgan"))
    assert [ufogen.start_time(s) for s in (1.0, 0.6, 0.01)] == [999, 599, 9]
    assert [lcm.start_time(s) for s in (1.0, 0.61, 0.6, 0.01)] == [999, 599, 599, -1]  # grid 19, 39, ..., 999
    assert [ddgan.start_time(s) for s in (1.0, 0.6, 0.25, 0.2)] == [999, 499, 249, -1]  # trained levels only


@pytest.mark.parametrize("name", ["ufogen", "lcm", "tscd", "ddgan", "dpm_solver"])
def test_strength_one_is_text_to_image_from_the_same_noise(teacher, name):
    method = make(name, teacher)
    steps = 4 if name == "ddgan" else 2
    indices = torch.arange(3)
    prompts = ["a handwritten digit three", "a handwritten digit seven", "a handwritten digit one"]
    init = torch.rand(1, *teacher.sample_shape) * 2 - 1
    text = sample_pixels(method, prompts, indices, steps, seed=4)
    image = sample_pixels(method, prompts, indices, steps, seed=4, init_x0=init, strength=1.0)
    torch.testing.assert_close(image, text, atol=1e-5, rtol=0)
    lower = sample_pixels(method, prompts, indices, steps, seed=4, init_x0=init, strength=0.7)
    assert (lower - text).abs().max() > 1e-3  # the input counts below strength 1


def digits(n):
    from fastgen.data.mnist import MNISTDataModule

    dm = MNISTDataModule()
    dm.setup()
    return dm.reference_images("heldout", n=n).float() / 127.5 - 1


@pytest.mark.parametrize("name", ["ufogen", "lcm", "tscd", "dpm_solver"])
def test_strength_towards_zero_returns_the_input(teacher, name):
    method = make(name, teacher)
    x0 = digits(4)
    noise = torch.randn_like(x0, generator=torch.Generator().manual_seed(0))
    prompts = ["a handwritten digit five"] * 4
    assert torch.equal(img2img(method, x0, prompts, 1, 0.0, noise), x0)  # strength 0: no noise, no step
    near = img2img(method, x0, prompts, 1, 0.03, noise)  # t = 29 (LCM: 19)
    far = img2img(method, x0, prompts, 1, 1.0, noise)
    near_err, far_err = (near - x0).abs().mean(), (far - x0).abs().mean()
    assert near_err < 0.05 and near_err < far_err / 5, (near_err, far_err)


def test_one_step_ufogen_img2img_is_one_generator_call_at_the_strength_time(teacher):
    method = make("ufogen", teacher)
    seen = []
    method.ema_unet.register_forward_pre_hook(lambda m, args: seen.append(args[1].tolist()))
    x0 = torch.zeros(2, *teacher.sample_shape)
    img2img(method, x0, ["a handwritten digit two"] * 2, 1, 0.6, torch.randn_like(x0))
    img2img(method, x0, ["a handwritten digit two"] * 2, 2, 0.6, torch.randn_like(x0))
    assert seen == [[599, 599], [599, 599], [299, 299]]
