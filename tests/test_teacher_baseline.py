"""The teacher's objective and the DPM-Solver++ baseline, checked with oracle networks."""

import pytest
import torch

from fastgen.core import alpha_sigma
from fastgen.methods.teacher import TeacherTraining
from fastgen.methods.dpm_solver import DPMSolverBaseline, dpm_solver_sample
from fastgen.networks import build_random


class ConstantX0Oracle(torch.nn.Module):
    """An eps-prediction 'UNet' whose x0 prediction is always `target`, recording the timesteps it sees."""

    def __init__(self, acp, target):
        super().__init__()
        self.acp, self.target, self.seen = acp, target, []
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, encoder_hidden_states):
        self.seen.append(int(t.reshape(-1)[0]))
        alpha, sigma = alpha_sigma(self.acp, t.expand(x.shape[0]), x.ndim)
        return type("Out", (), {"sample": (x - alpha * self.target) / sigma})()


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return build_random("mnist_pixel", cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_dpm_solver_lands_on_a_constant_data_prediction(backbone, steps, guidance):
    target = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    oracle, unet = ConstantX0Oracle(backbone.alphas_cumprod, target), backbone.unet
    backbone.unet = oracle
    try:
        baseline = DPMSolverBaseline(backbone, guidance_scale=guidance)  # its teacher: the backbone's network
        x0 = baseline.sample(torch.randn(2, 1, 32, 32), ["a handwritten digit one", "a handwritten digit two"], steps)
    finally:
        backbone.unet = unet
    assert torch.allclose(x0, target.expand(2, -1, -1, -1), atol=1e-4)
    assert oracle.seen[0] == 999 and len(oracle.seen) == steps  # linspace spacing: the first step is at t = 999
    assert baseline.nfe(steps) == steps * (2 if guidance > 1 else 1)


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_sde_solver_lands_on_a_constant_data_prediction(backbone, steps):
    target = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    oracle = ConstantX0Oracle(backbone.alphas_cumprod, target)
    x0 = dpm_solver_sample(backbone, oracle, torch.randn(2, 1, 32, 32), ["a handwritten digit one"] * 2, steps, 2.0,
                           "sde-dpmsolver++", torch.Generator().manual_seed(0))
    assert torch.allclose(x0, target.expand(2, -1, -1, -1), atol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_sde_solver_draws_its_noise_from_the_generator_and_equals_the_ode_solver_at_one_step(backbone):
    noise, prompts = torch.randn(2, 1, 32, 32), ["a handwritten digit one", "a handwritten digit two"]

    def sde(steps, seed):
        return dpm_solver_sample(backbone, backbone.unet, noise, prompts, steps, 2.0, "sde-dpmsolver++",
                                 torch.Generator().manual_seed(seed))

    assert torch.equal(sde(4, 0), sde(4, 0))
    assert not torch.allclose(sde(4, 0), sde(4, 1))
    ode = dpm_solver_sample(backbone, backbone.unet, noise, prompts, 1, 2.0)
    assert torch.allclose(sde(1, 0), ode, atol=1e-5)  # one step: final sigma zero, so no noise is added


def test_diffusion_loss_is_zero_for_the_exact_noise_and_targets_follow_prediction_type(backbone):
    method = TeacherTraining(backbone)
    x0, noise, t = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32), torch.tensor([0, 400, 999])
    assert torch.equal(method.diffusion_target(x0, noise, t), noise)
    backbone.prediction_type = "v_prediction"
    try:
        alpha, sigma = alpha_sigma(backbone.alphas_cumprod, t, 4)
        assert torch.allclose(method.diffusion_target(x0, noise, t), alpha * noise - sigma * x0)
    finally:
        backbone.prediction_type = "epsilon"
