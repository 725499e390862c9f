"""`PointsMLP`: a text-conditioned denoiser for points [B, D] with the diffusers UNet's call convention.

`forward(sample, timestep, encoder_hidden_states, timestep_cond=None) -> .sample` and the UNet's
`time_cond_proj_dim` / `time_embedding.cond_proj` (diffusers' `TimestepEmbedding`), so everything a method does to
a UNet works on it unchanged: `save_pretrained`/`from_pretrained` (it is a `ModelMixin, ConfigMixin`), DDGAN's
latent z and LCM's guidance embedding through `timestep_cond`, peft LoRA (`add_adapter`) on the module names LCM-LoRA targets
(`ff.net.0.proj`, `ff.net.2`, `time_emb_proj`, `proj_in`, `proj_out`).

Architecture: the prompt's text-encoder tokens [B, L, E] are mean-pooled (the CLIP text encoder is causal, so every
position after the caption has seen all of it) and projected (`text_proj`), then added to the time embedding, as
SDXL adds its pooled text embedding; proj_in (D -> H), `num_layers` residual feed-forward blocks, each
h + FF(LN(h) + time_emb_proj(SiLU(emb))) (a UNet resnet block's additive time embedding, without convolutions),
then LayerNorm, SiLU and proj_out (H -> D, zero-initialised, so an untrained network predicts 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class PointsMLPOutput(BaseOutput):
    sample: torch.Tensor


class PointsBlock(nn.Module):
    """h + FF(LN(h) + time_emb_proj(SiLU(emb)))."""

    def __init__(self, dim: int, ff_mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.time_emb_proj = nn.Linear(dim, dim)
        self.ff = FeedForward(dim, mult=ff_mult, activation_fn="gelu")

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.ff(self.norm(h) + self.time_emb_proj(F.silu(emb)))


class PointsMLP(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Denoiser of points [B, in_channels] at timestep t, conditioned on text tokens [B, L, cross_attention_dim]."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 2,
        hidden_dim: int = 64,
        num_layers: int = 3,
        cross_attention_dim: int = 32,
        ff_mult: int = 2,
        time_cond_proj_dim: int | None = None,
    ):
        super().__init__()
        self.time_proj = Timesteps(hidden_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_dim, hidden_dim, cond_proj_dim=time_cond_proj_dim)
        self.text_proj = nn.Linear(cross_attention_dim, hidden_dim)
        self.proj_in = nn.Linear(in_channels, hidden_dim)
        self.blocks = nn.ModuleList(PointsBlock(hidden_dim, ff_mult) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, in_channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def embedding(self, timestep, encoder_hidden_states, batch: int, timestep_cond=None) -> torch.Tensor:
        """Time embedding (+ cond_proj(timestep_cond)) plus the pooled, projected text: [B, H]."""
        dtype = self.proj_in.weight.dtype
        t = torch.as_tensor(timestep, device=self.proj_in.weight.device)
        t = (t[None] if t.ndim == 0 else t).expand(batch)
        cond = None if timestep_cond is None else timestep_cond.to(dtype)
        temb = self.time_embedding(self.time_proj(t).to(dtype), cond)
        return temb + self.text_proj(encoder_hidden_states.to(dtype).mean(dim=1))

    def trunk(self, sample, timestep, encoder_hidden_states, timestep_cond=None) -> torch.Tensor:
        """Hidden state [B, H] after the blocks (what a discriminator built from this network reads)."""
        if sample.ndim != 2 or sample.shape[1] != self.proj_in.in_features:
            raise ValueError(f"PointsMLP takes points [B, {self.proj_in.in_features}], got shape {tuple(sample.shape)}")
        emb = self.embedding(timestep, encoder_hidden_states, sample.shape[0], timestep_cond)
        h = self.proj_in(sample.to(emb.dtype))
        for block in self.blocks:
            h = block(h, emb)
        return h

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, return_dict: bool = True):
        out = self.proj_out(F.silu(self.norm_out(self.trunk(sample, timestep, encoder_hidden_states, timestep_cond))))
        return PointsMLPOutput(sample=out) if return_dict else (out,)
