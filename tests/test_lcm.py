"""LCM and LCM-LoRA: boundary condition, the student starts as the teacher, LCMScheduler agreement, LoRA-only
training, falling losses, and the saved LoRA loading into a diffusers StableDiffusionPipeline."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen.core import lcm_boundary_scalings
from fastgen.fit import run
from fastgen.methods.lcm import LCM
from fastgen.networks import build_random, save_backbone


pytestmark = pytest.mark.usefixtures("one_thread")  # two spinning OpenMP threads on 2 shared cores: many times slower


@pytest.fixture(scope="module")
def tiny():
    return build_random("tiny_latent")


def lcm(tiny, **kw):
    kw = {"lr": 1e-3, "warmup_steps": 1, "guidance_min": 1.5, "guidance_max": 3.0, "sample_guidance": 2.0, **kw}
    return LCM(copy.deepcopy(tiny), **kw)


def latent_batch(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"latent": torch.randn(n, *bb.sample_shape, generator=g), "prompt": ["a red square", "a blue circle"][:n]}


def write_image_folder(root, n=4):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a picture number {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_boundary_condition_and_identity_at_t0(tiny):
    c_skip, c_out = lcm_boundary_scalings(torch.tensor([0]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    m = lcm(tiny)
    bb = m.backbone
    x = torch.randn(2, *bb.sample_shape)
    cond = bb.encode_prompts(["a", "b"])
    w_emb = m.guidance_embedding(torch.tensor([2.0, 3.0]))
    out = m.consistency(bb.unet, x, torch.zeros(2, dtype=torch.long), cond, w_emb)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_guided_student_starts_as_the_teacher(tiny):
    m = lcm(tiny)
    bb = m.backbone
    assert bb.unet.config.time_cond_proj_dim == 256 and m.teacher_unet.config.time_cond_proj_dim is None
    assert torch.count_nonzero(bb.unet.time_embedding.cond_proj.weight) == 0
    x, t = torch.randn(2, *bb.sample_shape), torch.tensor([999, 259])
    cond = bb.encode_prompts(["a", "b"])
    with torch.no_grad():
        teacher = bb.denoise(m.teacher_unet, x, t, cond)[0]
        for scale in (1.5, 8.0):
            w_emb = m.guidance_embedding(torch.full((2,), scale))
            torch.testing.assert_close(bb.denoise(bb.unet, x, t, cond, timestep_cond=w_emb)[0], teacher)
    assert not any(p.requires_grad for p in m.teacher_unet.parameters())
    assert m.nfe(4) == 4  # ω is an input: one evaluation per step


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_matches_lcm_scheduler(tiny, steps):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    m = lcm(tiny)
    bb = m.backbone
    torch.nn.init.normal_(bb.unet.time_embedding.cond_proj.weight, std=0.02)  # make ω matter
    m.target_unet.load_state_dict(bb.unet.state_dict())
    noise = torch.randn(2, *bb.sample_shape, generator=torch.Generator().manual_seed(1))
    prompts = ["a red square", "a blue circle"]
    ours = m.sample(noise, prompts, steps, generator=torch.Generator().manual_seed(7))

    scheduler = LCMScheduler(**bb.schedule, prediction_type=bb.prediction_type)
    scheduler.set_timesteps(steps)
    # the pipeline's own ω-embedding of guidance_scale − 1
    w_emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.full((2,), 2.0 - 1.0), embedding_dim=256)
    cond, g, x = bb.encode_prompts(prompts), torch.Generator().manual_seed(7), noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = m.sampling_unet(x, t, encoder_hidden_states=cond, timestep_cond=w_emb).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def assert_losses_fall(method, opt, loss_fn, steps=20):
    """`steps` optimizer steps on loss_fn() (then the target's EMA update): finite losses that fall by 30%+."""
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.update_target()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_losses_finite_and_falling(tiny):
    m = lcm(tiny, lr=3e-3)
    batch = latent_batch(m.backbone)

    def loss_fn():
        torch.manual_seed(0)  # the same t, noise and ω each step: the student fits its (moving) target
        return m.training_step(batch, 0)

    assert_losses_fall(m, m.configure_optimizers()["optimizer"], loss_fn)


def test_lora_variant_trains_lora_only(tiny):
    m = lcm(tiny, lora_rank=4, guidance_min=2.0, guidance_max=2.0, guidance_embed_dim=None, target_ema_decay=None)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert m.target_unet is None and m.name == "lcm_lora" and m.guidance_scale == 0.0
    params = [p for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in m.configure_optimizers()["optimizer"].param_groups[0]["params"]} == {id(p) for p in params}
    with pytest.raises(ValueError, match="guidance_embed_dim=null"):
        lcm(tiny, lora_rank=4)


def test_lcm_lora_sd15_experiment_exports_a_lora_diffusers_loads(experiment_cfg, tmp_path):
    """The acceptance run: experiment=lcm_lora_sd15 on a tiny diffusers pipeline directory, then
    StableDiffusionPipeline + LCMScheduler + load_lora_weights reproduces the trained UNet."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    pipe_dir = save_backbone(build_random("tiny_latent"), tmp_path / "tiny_sd")
    folder = write_image_folder(tmp_path / "images")
    method = run(experiment_cfg(
        "lcm_lora_sd15", f"model.pretrained={pipe_dir}", f"data.root={folder}", "data.resolution=32",
        "data.batch_size=2", "eval=none", "trainer.precision=32-true", "model.gradient_checkpointing=false",
        "method.lora_rank=4", "method.lora_alpha=8", "method.lr=1e-2",
    ))
    run_dir = tmp_path / "runs/test_lcm_lora_sd15"
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert not any(k.startswith("teacher_unet.") for k in ckpt["state_dict"])
    assert any(".lora_B." in k for k in ckpt["state_dict"])

    base = UNet2DConditionModel.from_pretrained(pipe_dir / "unet")
    tokenizer = copy.deepcopy(method.backbone.tokenizer)
    tokenizer.model_max_length = method.backbone.max_prompt_length  # the tiny text encoder has 16 positions
    pipe = StableDiffusionPipeline(
        vae=method.backbone.vae, text_encoder=method.backbone.text_encoder, tokenizer=tokenizer,
        unet=copy.deepcopy(base),
        scheduler=LCMScheduler(**method.backbone.schedule), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(run_dir / "lcm_lora")
    x, t, cond = torch.randn(2, 4, 16, 16), torch.tensor([999, 499]), method.backbone.encode_prompts(["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=cond).sample,
                                   method.backbone.unet(x, t, encoder_hidden_states=cond).sample, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(pipe.unet(x, t, encoder_hidden_states=cond).sample,
                                  base(x, t, encoder_hidden_states=cond).sample)  # the LoRA did train
    images = pipe(["a picture"], num_inference_steps=2, guidance_scale=1.0, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("experiment", ["lcm_points", "lcm_lora_points", "lcm_mnist"])
def test_default_distance_is_the_diffusers_scripts_l2(experiment_cfg, experiment):
    """diffusers' train_lcm_distill_sd_wds.py and train_lcm_distill_lora_sd_wds.py default to `--loss_type l2`
    (F.mse_loss): the shipped configs distil with it. (The element-wise pseudo-Huber at c = 0.001 is an L1 loss at
    these residuals; on the points testbed it drifted away from the teacher as training went on.)"""
    from types import SimpleNamespace

    from lightning.fabric.utilities.data import AttributeDict

    hp = experiment_cfg(experiment).method
    method = SimpleNamespace(hparams=AttributeDict(loss=hp.loss, huber_c=hp.huber_c))  # the distance kind, unweighted
    a, b = 0.05 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(64, 2)
    torch.testing.assert_close(LCM.distance(method, a, b), torch.nn.functional.mse_loss(a, b))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_weighting_measures_the_residual_in_the_networks_output_units(prediction_type):
    """Two network outputs a fixed δ apart, turned into x̂0 at different t: their x0-space residual times λ(t) is the
    same at every t (v: λ ∝ 1/σ², ε: λ ∝ SNR, sample: λ = 1), and λ averages 1 over the solver grid."""
    from fastgen.core import lcm_solver_grid, prediction_to_x0_eps, prediction_unit_weights, scaled_linear_alphas_cumprod

    acp = scaled_linear_alphas_cumprod(1000)
    grid = lcm_solver_grid(1000, 50)
    w = prediction_unit_weights(grid, acp, grid, prediction_type)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    gen = torch.Generator().manual_seed(0)
    x_t, out = torch.randn(1, 8, generator=gen), torch.randn(1, 8, generator=gen)
    costs = torch.stack([
        w[i] * (prediction_to_x0_eps(out + 0.01, x_t, t.view(1), acp, prediction_type)[0]
                - prediction_to_x0_eps(out, x_t, t.view(1), acp, prediction_type)[0]).pow(2).sum()
        for i, t in enumerate(grid)])
    torch.testing.assert_close(costs, costs[:1].expand_as(costs), rtol=1e-3, atol=0)


def test_prediction_weighting_weights_each_samples_distance(tiny):
    """The weighted distance is mean_b λ(t_b)·mean((a_b − b_b)²) with λ for the backbone's prediction type; the
    default is unweighted (LCM)."""
    from fastgen.core import lcm_solver_grid, prediction_unit_weights

    m = lcm(tiny, timestep_weighting="prediction")
    acp, grid = m.backbone.alphas_cumprod, lcm_solver_grid(1000, 50)
    a, b, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([19, 499, 999])
    weights = prediction_unit_weights(t, acp, grid, m.backbone.prediction_type)
    assert weights[0] > 10 * weights[2]  # the low-t end counts more
    expected = (weights * ((a - b) ** 2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(m.distance(a, b, t), expected)
    torch.testing.assert_close(lcm(tiny).distance(a, b, t), ((a - b) ** 2).mean())  # default: unweighted (LCM)
    with pytest.raises(ValueError, match="timestep_weighting"):
        lcm(tiny, timestep_weighting="inverse_sigma2")
