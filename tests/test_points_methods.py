"""Every method runs unchanged on the points backbone (an MLP in R^D): a few training steps with finite losses, then
sampling [B, D]; its discriminator is the MLP's; exports load again."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fastgen.data.points import PointsDataModule
from fastgen.methods.ddgan import DDGAN
from fastgen.methods.dmd import DMD
from fastgen.methods.teacher import TeacherTraining
from fastgen.methods.dpm_solver import DPMSolverBaseline
from fastgen.methods.lcm import LCM
from fastgen.methods.siddm import SIDDM
from fastgen.methods.tscd import TSCD
from fastgen.methods.ufogen import UFOGen
from fastgen.networks.discriminators import MLPDiscriminator
from fastgen.networks.mlp import PointsMLP
from fastgen.networks.points import build_points_pretrained, build_points_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

METHODS = {
    "diffusion": lambda bb, tmp: TeacherTraining(bb, export_dir=str(tmp / "teacher")),
    "dpm_solver": lambda bb, tmp: DPMSolverBaseline(bb, guidance_scale=1.0),
    "ufogen": lambda bb, tmp: UFOGen(bb, eval_teacher=True, r1_gamma=1.0, r1_every=2),
    "ddgan": lambda bb, tmp: DDGAN(bb, eval_teacher=True, nz=4),
    "siddm": lambda bb, tmp: SIDDM(bb, eval_teacher=True, nz=4),
    "lcm": lambda bb, tmp: LCM(bb, guidance_embed_dim=16, guidance_min=1.0, guidance_max=2.0, sample_guidance=1.5,
                               export_dir=str(tmp / "lcm")),
    "lcm_lora": lambda bb, tmp: LCM(bb, lora_rank=4, guidance_embed_dim=None, guidance_min=1.0, guidance_max=1.0,
                                    target_ema_decay=None, export_dir=str(tmp / "lora")),
    "tscd": lambda bb, tmp: TSCD(bb, segments=[2, 1], stage_kimg=[0.008, 1.0], adv_weights=[0.1, 0.1],
                                 teacher_guidance_scale=1.0, sample_eta=0.3),
    "dmd": lambda bb, tmp: DMD(bb, real_guidance_scale=1.5, fake_updates_per_g=2, gan_weight=0.1, teacher_guidance_scale=1.0),
}


@pytest.fixture(scope="module")
def small_backbone():
    return build_points_random(2, hidden_dim=32, num_layers=2)


def _loader(n=16):
    dm = PointsDataModule(num_points=64, batch_size=4)
    x, labels = dm.points("train")
    return DataLoader([{"x0": x[i], "prompt": dm.prompts[int(labels[i])]} for i in range(n)], batch_size=4)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_samples_points(small_backbone, name, tmp_path):
    method = METHODS[name](copy.deepcopy(small_backbone), tmp_path)
    if name != "dpm_solver":
        before = {k: v.clone() for k, v in method.backbone.unet.state_dict().items()}
        trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(method, train_dataloaders=_loader())
        losses = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
        # Lightning's global_step counts every optimizer step: as many per training step (4 images) as declared (a
        # fractional rate is an average: a phase that runs every k-th step, first step included, runs ceil(n / k) times)
        expected = method.images_seen.item() // 4 * method.optimizer_steps_per_training_step
        assert expected <= trainer.global_step < expected + 1
        after = method.backbone.unet.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before if k in after), "nothing trained"
    method.eval()
    prompts = ["a point in the top row", "a point in the bottom row", "a point in the top row"]
    for steps in method.supported_steps or (1, 2):
        x = method.sample(torch.randn(3, 2), prompts, steps, generator=torch.Generator().manual_seed(0))
        assert x.shape == (3, 2) and torch.isfinite(x).all(), (name, steps)


def test_adversarial_methods_get_the_mlp_discriminator_with_the_joint_input_for_ddgan(small_backbone):
    assert isinstance(UFOGen(copy.deepcopy(small_backbone), eval_teacher=False).discriminator, MLPDiscriminator)
    ddgan, siddm = (cls(copy.deepcopy(small_backbone), eval_teacher=False, nz=4) for cls in (DDGAN, SIDDM))
    assert ddgan.discriminator.cond_channels == 2 and siddm.discriminator.cond_channels == 0
    x, t, cond = torch.randn(5, 2), torch.full((5,), 249), small_backbone.encode_prompts(["a"] * 5)
    assert ddgan.discriminator(x, t, cond, x_cond=torch.randn(5, 2)).shape == (5,)
    with pytest.raises(ValueError, match="takes x_cond with 2 channels"):
        ddgan.discriminator(x, t, cond)


def test_the_mlp_discriminator_starts_from_the_generator_and_its_joint_input_starts_at_zero(small_backbone):
    mlp = small_backbone.unet
    joint = small_backbone.build_discriminator(joint=True)
    x, t, cond = torch.randn(6, 2), torch.full((6,), 500), small_backbone.encode_prompts(["a"] * 6)
    assert torch.equal(joint.body.trunk(torch.cat([x, torch.randn(6, 2)], 1), t, cond), mlp.trunk(x, t, cond))
    assert not any(p is q for p in joint.parameters() for q in mlp.parameters())  # a copy, trained on its own


def test_latent_and_guidance_inputs_load_the_teacher_around_a_new_cond_proj(small_backbone):
    """DDGAN's z and LCM's ω enter through `time_cond_proj_dim`, as on a UNet: with cond_proj at zero the generator
    is exactly the teacher."""
    ddgan = DDGAN(copy.deepcopy(small_backbone), eval_teacher=False, nz=4, z_init_scale=0.0)
    lcm = LCM(copy.deepcopy(small_backbone), guidance_embed_dim=16)
    x, t, cond = torch.randn(3, 2), torch.full((3,), 700), small_backbone.encode_prompts(["a"] * 3)
    teacher = small_backbone.unet(x, t, encoder_hidden_states=cond).sample
    z = torch.randn(3, 4)
    assert isinstance(ddgan.backbone.unet, PointsMLP) and ddgan.backbone.unet.config.time_cond_proj_dim == 4
    assert torch.allclose(ddgan.backbone.unet(x, t, encoder_hidden_states=cond, timestep_cond=z).sample, teacher)
    w = torch.randn(3, 16)
    assert torch.allclose(lcm.backbone.unet(x, t, encoder_hidden_states=cond, timestep_cond=w).sample, teacher)


def test_points_are_not_clamped_and_batches_read_x0(small_backbone):
    far = torch.tensor([[3.0, -4.0]])
    assert torch.equal(small_backbone.decode(far), far)
    assert torch.equal(small_backbone.batch_to_x0({"x0": far}), far)
    assert small_backbone.sample_shape == (2,)


def test_prompt_embeddings_are_cached_exactly(small_backbone):
    bb = copy.deepcopy(small_backbone)
    prompts = ["a point in the top row", "", "a point in the top row"]
    cached = bb.encode_prompts(prompts)
    fresh = super(type(bb), bb).encode_prompts(prompts)
    assert torch.equal(cached, fresh) and torch.equal(cached[0], cached[2])


def test_teacher_export_loads_back_identically(small_backbone, tmp_path):
    from fastgen.networks import save_backbone

    save_backbone(small_backbone, tmp_path / "teacher")
    loaded = build_points_pretrained(str(tmp_path / "teacher"), dim=2)
    x, t = torch.randn(4, 2), torch.tensor([0, 250, 500, 999])
    cond = small_backbone.encode_prompts(["a point in the top row"] * 4)
    assert torch.equal(loaded.unet(x, t, encoder_hidden_states=cond).sample,
                       small_backbone.unet(x, t, encoder_hidden_states=cond).sample)
    assert torch.equal(loaded.alphas_cumprod, small_backbone.alphas_cumprod) and loaded.alphas_cumprod[-1] == 0
    from diffusers import DDPMScheduler  # the schedule the solvers (diffusers) and the methods (fastgen.core) share

    reference = DDPMScheduler(**loaded.schedule).alphas_cumprod
    assert torch.allclose(loaded.alphas_cumprod[:-1], reference[:-1].float(), rtol=1e-5)  # diffusers clips ᾱ_T
    assert loaded.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="teacher of 2-D points but the data is 3-D"):
        build_points_pretrained(str(tmp_path / "teacher"), dim=3)


def test_a_missing_or_wrong_teacher_names_model_pretrained(tmp_path):
    from fastgen.networks import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="model.pretrained=.*nowhere does not exist"):
        build_points_pretrained(str(tmp_path / "nowhere"), dim=2)
    with pytest.raises(ValueError, match="holds a UNet2DConditionModel, not a PointsMLP"):
        build_points_pretrained("fastgen/assets/mnist_teacher", dim=2)
