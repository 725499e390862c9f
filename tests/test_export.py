"""Export to diffusers: on the tiny SD1.5-format model the exported StableDiffusionPipeline's image from given latents
equals fastgen's sampler's within 1e-4 for every exportable method; Img2Img and ControlNet pipelines built from the
export run; the UNet and LoRA formats load."""

import copy

import pytest
import torch

from fastgen.eval.evaluator.run_eval import eval_noise, sampler_generators
from fastgen.generation.export import export_method
from fastgen.generation.sampling import sample_pixels

PROMPTS = ["a red square", "a small blue circle"]


@pytest.fixture(scope="module")
def tiny():
    from fastgen.networks import build_random

    torch.set_num_threads(1)
    return build_random("tiny_latent", seed=0)


def perturb(unet, seed=1, scale=0.02):
    """Move the weights a network trains (a LoRA's adapters only) a little, so it differs from its init (zero-initialised
    parts too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [p for p in unet.parameters() if p.requires_grad] or list(unet.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make(name, backbone):
    from fastgen.methods.dpm_solver import DPMSolverBaseline
    from fastgen.methods.lcm import LCM
    from fastgen.methods.tscd import TSCD
    from fastgen.methods.ufogen import UFOGen

    bb = copy.deepcopy(backbone)
    method = {
        "ufogen": lambda: UFOGen(bb, eval_teacher=False),
        "lcm": lambda: LCM(bb, guidance_embed_dim=32),
        "lcm_lora": lambda: LCM(bb, lora_rank=4, guidance_embed_dim=None, target_ema_decay=None),
        "tscd": lambda: TSCD(bb),
        "dpm_solver": lambda: DPMSolverBaseline(bb, guidance_scale=3.0),
    }[name]().eval()
    from fastgen.generation.export import sampling_unet

    perturb(sampling_unet(method))
    return method


@pytest.mark.parametrize("name, steps", [("ufogen", 1), ("ufogen", 4), ("lcm", 2), ("lcm_lora", 4), ("tscd", 2),
                                         ("dpm_solver", 4)])
def test_exported_pipeline_reproduces_the_sampler(tiny, tmp_path, name, steps):
    from diffusers import StableDiffusionPipeline

    method = make(name, tiny)
    out = export_method(method, tmp_path / "pipe", "pipeline")
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    config = __import__("json").loads((out / "fastgen_export.json").read_text())
    indices, seed = torch.arange(2), 3
    expected = (sample_pixels(method, PROMPTS, indices, steps, seed) + 1) / 2
    latents = eval_noise(indices, tuple(method.backbone.sample_shape), seed)
    got = pipe(PROMPTS, num_inference_steps=steps, latents=latents, generator=sampler_generators(indices, seed),
               output_type="pt", **config["call"]).images
    assert (got - expected).abs().max() < 1e-4
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # the two prompts/noises differ: not a constant image


def test_img2img_and_controlnet_pipelines_run_from_the_export(tiny, tmp_path):
    from diffusers import (StableDiffusionControlNetPipeline, StableDiffusionImg2ImgPipeline,
                           StableDiffusionPipeline)

    from fastgen.networks.controlnet import controlnet_for

    out = export_method(make("ufogen", tiny), tmp_path / "pipe", "pipeline")
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    image = torch.rand(1, 3, 32, 32)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    a = img2img(PROMPTS[:1], image=image, strength=0.6, num_inference_steps=4, guidance_scale=0.0,
                output_type="pt").images
    control = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet_for(pipe.unet, downsample=2))
    b = control(PROMPTS[:1], image=image, num_inference_steps=2, guidance_scale=0.0, output_type="pt").images
    assert a.shape == b.shape == (1, 3, 32, 32) and torch.isfinite(a).all() and torch.isfinite(b).all()


def test_unet_and_lora_formats_load(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from fastgen.generation.export import sampling_unet

    method = make("lcm_lora", tiny)
    unet = UNet2DConditionModel.from_pretrained(export_method(method, tmp_path / "unet", "unet"))
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    cond = method.backbone.encode_prompts(PROMPTS[:1])
    with torch.no_grad():
        want = sampling_unet(method)(x, t, encoder_hidden_states=cond).sample
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=cond).sample, want, atol=1e-5, rtol=1e-4)
        # the LoRA on the exported teacher pipeline gives the same network
        export_method(make("dpm_solver", tiny), tmp_path / "teacher", "pipeline")
        pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "teacher", local_files_only=True, safety_checker=None)
        pipe.unet.load_state_dict(method.teacher_unet.state_dict())
        pipe.load_lora_weights(export_method(method, tmp_path / "lora", "lora"))
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=cond).sample, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_method(make("ufogen", tiny), tmp_path / "x", "lora")


def test_what_a_pipeline_cannot_reproduce_is_refused_in_one_line(tiny, tmp_path):
    from fastgen.methods.ddgan import DDGAN
    from fastgen.networks import build_random

    with pytest.raises(ValueError, match="latent z"):
        export_method(DDGAN(copy.deepcopy(tiny), eval_teacher=False), tmp_path / "x", "pipeline")
    with pytest.raises(ValueError, match="no VAE"):
        from fastgen.methods.ufogen import UFOGen

        export_method(UFOGen(build_random("mnist_pixel"), eval_teacher=False), tmp_path / "x", "pipeline")
    with pytest.raises(ValueError, match="only a TSCD trained with method.unified_eta"):
        export_method(make("ufogen", tiny), tmp_path / "x", "pipeline", row="@unified")
    with pytest.raises(ValueError, match="format=pipeline only"):
        export_method(make("ufogen", tiny), tmp_path / "x", "unet", row="@unified")


def test_the_export_entry_writes_the_baseline_teacher_unet(tmp_path):
    from diffusers import UNet2DConditionModel
    from hydra import compose, initialize_config_dir

    from fastgen.runtime.config import CONFIG_PATH, register_resolvers
    from fastgen.export import export

    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("export", overrides=["experiment=dpm_solver_mnist", "experiment_name=dpm_solver_mnist",
                                           f"paths.output_dir={tmp_path}", f"paths.runs_dir={tmp_path}/runs",
                                           f"out={tmp_path}/unet", "format=unet"])
        assert UNet2DConditionModel.from_pretrained(export(cfg)).config.in_channels == 1
        with pytest.raises(ValueError, match="no VAE"):
            export(compose("export", overrides=[*cfg_overrides(tmp_path), "format=pipeline"]))
        with pytest.raises(ValueError, match="format='onnx'"):
            export(compose("export", overrides=[*cfg_overrides(tmp_path), "format=onnx"]))


def cfg_overrides(tmp_path):
    return ["experiment=dpm_solver_mnist", "experiment_name=dpm_solver_mnist", f"paths.output_dir={tmp_path}",
            f"paths.runs_dir={tmp_path}/runs", f"out={tmp_path}/pipe"]


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_the_unified_tscd_lora_in_a_tcd_pipeline_reproduces_the_unified_rows(tiny, tmp_path, steps):
    """TSCD's unified LoRA (`tscd@unified`): exported as a LoRA, loaded into the base pipeline with
    `load_lora_weights`, and sampled by the exported TCDScheduler with the recorded call, it gives fastgen.generate's
    `row=@unified` images from the same latents and generators; so does the one-folder `format=pipeline row=@unified`."""
    import json

    from diffusers import StableDiffusionPipeline, TCDScheduler

    from fastgen.generation.sampling import row_source
    from fastgen.methods.tscd import TSCD

    method = TSCD(copy.deepcopy(tiny), lora_rank=4, target_ema_decay=None, unified_eta=0.7).eval()
    perturb(method.backbone.unet)
    method.images_seen.fill_(1000)  # a trained method has the unified rows
    out = export_method(method, tmp_path / "lora", "lora")
    config = json.loads((out / "fastgen_export.json").read_text())
    assert config["scheduler"] == "TCDScheduler" and config["call"] == {"eta": 0.7, "guidance_scale": 0.0}
    export_method(make("dpm_solver", tiny), tmp_path / "base", "pipeline")  # the base model's pipeline
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base", local_files_only=True, safety_checker=None)
    pipe.unet.load_state_dict(method.teacher_unet.state_dict())
    pipe.load_lora_weights(out)
    pipe.scheduler = TCDScheduler.from_pretrained(out, subfolder="scheduler")
    indices, seed = torch.arange(2), 3
    with row_source(method, steps, "@unified").weights():
        expected = (sample_pixels(method, PROMPTS, indices, steps, seed) + 1) / 2
    latents = eval_noise(indices, tuple(method.backbone.sample_shape), seed)
    got = pipe(PROMPTS, num_inference_steps=steps, latents=latents, generator=sampler_generators(indices, seed),
               output_type="pt", **config["call"]).images
    assert (got - expected).abs().max() < 1e-4
    folder = export_method(method, tmp_path / "unified", "pipeline", row="@unified")
    config = json.loads((folder / "fastgen_export.json").read_text())
    assert config["scheduler"] == "TCDScheduler" and config["rows"] == "tscd@unified"
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    got = pipe(PROMPTS, num_inference_steps=steps, latents=latents, generator=sampler_generators(indices, seed),
               output_type="pt", **config["call"]).images
    assert (got - expected).abs().max() < 1e-4
    if steps > 1:  # TCD's re-noising and its last step to t = 0: not the DDIM rows' images
        assert (sample_pixels(method, PROMPTS, indices, steps, seed) / 2 + 0.5 - expected).abs().max() > 1e-3
