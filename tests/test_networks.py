"""Backbones: the real CLIP tokenizer offline, the x0 wrapper, and the SD1.5 loading path on tiny weights."""

import pytest
import torch
from hydra.utils import instantiate

from fastgen.core import q_sample
from fastgen.networks import MissingWeightsError, build_pretrained, build_random, save_backbone
from fastgen.networks.clip_tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from fastgen.networks.discriminators import UNetEncoderDiscriminator


def test_clip_tokenizer_is_the_real_one(tmp_path):
    tok = build_clip_tokenizer(str(tmp_path))
    assert len(tok) == CLIP_VOCAB_SIZE
    ids = tok(["a handwritten digit seven"]).input_ids[0]
    # <|startoftext|> a handwritten digit seven <|endoftext|>, ids of OpenAI's CLIP vocabulary
    assert ids == [49406, 320, 35192, 27472, 5757, 49407]


def test_denoise_recovers_x0_when_eps_is_exact(tmp_path):
    backbone = build_random("mnist_pixel", cache_dir=str(tmp_path))
    x0, noise = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    t = torch.tensor([10, 700])
    x_t = q_sample(x0, t, noise, backbone.alphas_cumprod)

    class Oracle(torch.nn.Module):  # an "eps-prediction UNet" that returns the true noise
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": noise + self.w})()

    x0_hat, eps_hat = backbone.denoise(Oracle(), x_t, t, torch.zeros(2, 16, 32))
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.equal(eps_hat, noise)


def test_bf16_text_encoder_conditions_an_fp32_unet_outside_autocast(tmp_path):
    """model.dtype=bf16 stores the frozen text encoder and VAE in bf16; sampling and evaluation run outside
    autocast, so the prompt embeddings must come back in the trainable UNet's float32."""
    backbone = build_random("tiny_latent", dtype="bf16", cache_dir=str(tmp_path))
    assert backbone.text_encoder.dtype == torch.bfloat16 and backbone.unet.dtype == torch.float32
    cond = backbone.encode_prompts(["a photo of a cat", ""])
    assert cond.dtype == torch.float32
    x = torch.randn(2, *backbone.sample_shape)
    x0_hat, _ = backbone.denoise(backbone.unet, x, torch.tensor([999, 500]), cond)
    assert x0_hat.dtype == torch.float32 and torch.isfinite(backbone.decode(x0_hat)).all()


def test_sd15_loading_path_offline_on_tiny_weights(tmp_path, experiment_cfg):
    """`model=sd15 model.pretrained=DIR` loads a diffusers-layout directory with from_pretrained."""
    original = build_random("tiny_latent", cache_dir=str(tmp_path))
    save_backbone(original, tmp_path / "tiny_sd")
    cfg = experiment_cfg("teacher_mnist", "model=sd15", f"model.pretrained={tmp_path / 'tiny_sd'}")
    loaded = instantiate(cfg.model)
    assert loaded.vae is not None and loaded.image_shape == (3, 32, 32)
    assert torch.equal(loaded.alphas_cumprod, original.alphas_cumprod)
    prompts = ["a photo of a cat", ""]
    assert torch.allclose(loaded.encode_prompts(prompts), original.encode_prompts(prompts))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([999, 3])
    c = original.encode_prompts(prompts)
    assert torch.allclose(loaded.denoise(loaded.unet, x, t, c)[0], original.denoise(original.unet, x, t, c)[0], atol=1e-5)
    assert loaded.decode(x).shape == (2, 3, 32, 32)


def test_missing_weights_name_the_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"model\.pretrained=/path/to/stable-diffusion-v1-5"):
        build_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match="missing unet/config.json, text_encoder/config.json, vae/config.json"):
        build_pretrained(str(tmp_path / "half"))


def test_discriminator_starts_from_the_unet_encoder_and_sees_x_cond_only_when_joint(tmp_path):
    backbone = build_random("mnist_pixel", cache_dir=str(tmp_path))
    cond = backbone.encode_prompts(["a handwritten digit one"] * 2)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([5, 900])
    marginal = UNetEncoderDiscriminator(backbone.unet)
    joint = UNetEncoderDiscriminator(backbone.unet, cond_channels=1)
    assert torch.equal(marginal.down_blocks[0].resnets[0].conv1.weight, backbone.unet.down_blocks[0].resnets[0].conv1.weight)
    joint.head.load_state_dict(marginal.head.state_dict())
    # zero-initialised x_cond weights: the joint D starts as the marginal one
    assert torch.allclose(joint(x, t, cond, x_cond=torch.randn_like(x)), marginal(x, t, cond), atol=1e-5)
    with pytest.raises(ValueError, match="x_cond"):
        marginal(x, t, cond, x_cond=x)


def test_zero_terminal_snr_backbone_refuses_epsilon_prediction():
    from fastgen.networks.architectures import ARCHITECTURES
    from fastgen.networks.backbone import Backbone

    spec = ARCHITECTURES["mnist_pixel"]
    schedule = {**spec["schedule"], "rescale_betas_zero_snr": True}
    with pytest.raises(ValueError, match="v_prediction"):
        Backbone(unet=torch.nn.Identity(), text_encoder=torch.nn.Identity(), tokenizer=type("T", (), {"model_max_length": 8})(),
                 schedule=schedule, prediction_type="epsilon")
