"""`Backbone`: everything a method needs from a pretrained text-to-image diffusion model, in one module.

It bundles the UNet, the frozen text encoder and tokenizer, an optional frozen VAE, the noise
schedule and the prediction type, and offers the x0-space view every method works in
(k-diffusion's `Denoiser`): `denoise(unet, x_t, t, cond)` runs *any* UNet with this backbone's
prediction type and returns (x̂0, ε̂), so methods and samplers never branch on eps/v.
"""

from __future__ import annotations

import torch
from torch import nn

from fastgen.core import make_alphas_cumprod, prediction_to_x0_eps
from fastgen.networks.discriminators import UNetEncoderDiscriminator


class Backbone(nn.Module):
    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        schedule: dict,
        prediction_type: str = "epsilon",
        vae: nn.Module | None = None,
        vae_scaling_factor: float = 0.18215,
        max_prompt_length: int | None = None,
        name: str = "backbone",
    ):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None
        self.tokenizer = tokenizer
        self.schedule = dict(schedule)
        acp = make_alphas_cumprod(
            schedule["beta_schedule"], T=schedule["num_train_timesteps"],
            **{k: schedule[k] for k in ("beta_start", "beta_end", "rescale_betas_zero_snr") if k in schedule},
        )
        if acp[-1] == 0 and prediction_type == "epsilon":  # x̂0 = (x_T − σ_T ε̂)/α_T is undefined at α_T = 0
            raise ValueError("a zero-terminal-SNR schedule (rescale_betas_zero_snr) needs prediction_type "
                             "v_prediction or sample, not epsilon (Lin et al. 2024, Sec. 3.2)")
        self.register_buffer("alphas_cumprod", acp.float(), persistent=False)
        self.prediction_type = prediction_type
        self.vae_scaling_factor = vae_scaling_factor
        self.max_prompt_length = max_prompt_length or tokenizer.model_max_length
        self.name = name

    # -- frozen parts stay in eval mode whatever the LightningModule does --------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()
        if self.vae is not None:
            self.vae.eval()
        return self

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the space the UNet works in (latents for SD, pixels for MNIST)."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return (self.unet.config.in_channels, h, w)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of decoded images."""
        c, h, w = self.sample_shape
        if self.vae is None:
            return (c, h, w)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.in_channels, h * f, w * f)

    # -- text ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Last hidden state of the frozen text encoder, [B, L, D] (SD's conditioning), in float32 like the latents:
        a bf16 text encoder (`model.dtype`) must not hand bf16 to an fp32 UNet outside autocast (sampling, eval)."""
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_prompt_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.alphas_cumprod.device)
        return self.text_encoder(ids)[0].float()

    # -- pixels <-> model space ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> model space (scaled VAE latents, or the pixels themselves)."""
        if self.vae is None:
            return pixels
        pixels = pixels.to(self.vae.dtype)
        return (self.vae.encode(pixels).latent_dist.sample() * self.vae_scaling_factor).float()

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels in [-1, 1]."""
        if self.vae is None:
            return x0.clamp(-1, 1)
        x0 = (x0 / self.vae_scaling_factor).to(self.vae.dtype)
        return self.vae.decode(x0).sample.float().clamp(-1, 1)

    def batch_to_x0(self, batch: dict) -> torch.Tensor:
        return batch["latent"] if "latent" in batch else self.encode(batch["image"])

    def batch_to_cond(self, batch: dict) -> torch.Tensor:
        return batch["prompt_embeds"] if "prompt_embeds" in batch else self.encode_prompts(batch["prompt"])

    # -- the adversarial methods' discriminator ---------------------------------------------------------
    def build_discriminator(self, joint: bool = False) -> nn.Module:
        """A trainable discriminator D(x, t, cond, x_cond=None) -> logits [B] copied from the backbone's current network
        (so a pretrained network initialises D: build it before a method changes `unet`). `joint`: D also sees an
        `x_cond` shaped like x (DDGAN's x_t), concatenated on channels. For a UNet, its encoder half with a logit head
        (`UNetEncoderDiscriminator`); another backbone overrides this with its network's own (PointsBackbone)."""
        return UNetEncoderDiscriminator(self.unet, self.sample_shape[0] if joint else 0)

    # -- the x0-space denoiser -----------------------------------------------------------------------
    def denoise(self, unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **unet_kwargs):
        """Run `unet` at (x_t, t, cond) and convert its output to (x̂0, ε̂) in float32."""
        dtype = next(unet.parameters()).dtype
        out = unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype), **unet_kwargs).sample.float()
        return prediction_to_x0_eps(out, x_t.float(), t, self.alphas_cumprod, self.prediction_type)
