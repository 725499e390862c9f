"""Every method trains and samples on a zero-terminal-SNR, v-prediction backbone (Lin et al. 2024): ᾱ_T = 0, so
x_T ~ N(0, I) is exactly the marginal every sampler starts from, and no step may divide by α_T."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fastgen.methods.ddgan import DDGAN
from fastgen.methods.dmd import DMD
from fastgen.methods.teacher import TeacherTraining
from fastgen.methods.dpm_solver import DPMSolverBaseline
from fastgen.methods.lcm import LCM
from fastgen.methods.siddm import SIDDM
from fastgen.methods.tscd import TSCD
from fastgen.methods.ufogen import UFOGen
from fastgen.networks import build_random
from fastgen.networks.backbone import Backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPTS = ["a handwritten digit one", "a handwritten digit seven"]
METHODS = {
    "diffusion": lambda bb: TeacherTraining(bb),
    "dpm_solver": lambda bb: DPMSolverBaseline(bb, guidance_scale=2.0),
    "ufogen": lambda bb: UFOGen(bb, eval_teacher=False),
    "ddgan": lambda bb: DDGAN(bb, eval_teacher=False, nz=4),
    "siddm": lambda bb: SIDDM(bb, eval_teacher=False, nz=4),
    "lcm": lambda bb: LCM(bb, guidance_embed_dim=32),
    "lcm_lora": lambda bb: LCM(bb, lora_rank=4, guidance_embed_dim=None),
    "tscd": lambda bb: TSCD(bb, segments=[2, 1], stage_kimg=[0.002, 1.0], sample_eta=0.3),
    "dmd": lambda bb: DMD(bb, real_guidance_scale=2.0, fake_updates_per_g=1, gan_weight=0.1),
}


@pytest.fixture(scope="module")
def ztsnr_backbone():
    small = build_random("mnist_pixel")
    schedule = {**small.schedule, "rescale_betas_zero_snr": True}
    bb = Backbone(small.unet, small.text_encoder, small.tokenizer, schedule, "v_prediction", max_prompt_length=16)
    assert bb.alphas_cumprod[-1] == 0
    return bb


def digits(n=4):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 32, 32, generator=g) * 2 - 1, "prompt": PROMPTS[i % 2]} for i in range(n)]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_samples_at_zero_terminal_snr(ztsnr_backbone, name):
    method = METHODS[name](copy.deepcopy(ztsnr_backbone))
    if name != "dpm_solver":
        trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(method, train_dataloaders=DataLoader(digits(), batch_size=2))
        losses = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    method.eval()
    for steps in method.supported_steps or (1, 2):
        x = method.sample(torch.randn(2, 1, 32, 32), PROMPTS, steps, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all(), (name, steps)
