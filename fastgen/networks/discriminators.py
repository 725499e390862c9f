"""Discriminators of the adversarial methods, with one call signature: `D(x, t, cond, x_cond=None) -> logits [B]`.

`UNetEncoderDiscriminator` is the UFOGen/SIDDM design: the encoder half of a (pretrained) diffusion
UNet — conv_in, time embedding, down blocks and mid block, text-conditioned through their
cross-attention — plus a small head (GroupNorm, SiLU, 1x1 conv to one channel, spatial mean).
`x_cond` (DDGAN's joint discriminator sees x_t next to x_{t-1}) is concatenated on channels; its
input weights start at zero, so the pretrained encoder's features are unchanged at initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class UNetEncoderDiscriminator(nn.Module):
    def __init__(self, unet: nn.Module, cond_channels: int = 0):
        super().__init__()
        unet = copy.deepcopy(unet)
        conv = unet.conv_in
        if cond_channels:
            widened = nn.Conv2d(conv.in_channels + cond_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
            with torch.no_grad():
                widened.weight.zero_()
                widened.weight[:, : conv.in_channels] = conv.weight
                widened.bias.copy_(conv.bias)
            conv = widened
        self.conv_in, self.cond_channels = conv, cond_channels
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.down_blocks, self.mid_block = unet.down_blocks, unet.mid_block
        width = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(
            nn.GroupNorm(unet.config.norm_num_groups, width), nn.SiLU(), nn.Conv2d(width, 1, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, x_cond: torch.Tensor | None = None):
        if (x_cond is None) != (self.cond_channels == 0):
            raise ValueError(f"this discriminator takes x_cond with {self.cond_channels} channels; got {x_cond is not None}")
        dtype = self.conv_in.weight.dtype
        h = self.conv_in(torch.cat([x, x_cond], 1) if x_cond is not None else x).to(dtype)
        emb = self.time_embedding(self.time_proj(t.expand(x.shape[0])).to(dtype))
        cond = cond.to(dtype)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(h, temb=emb, encoder_hidden_states=cond)
            else:
                h, _ = block(h, temb=emb)
        h = self.mid_block(h, emb, encoder_hidden_states=cond)
        return self.head(h).float().mean(dim=(1, 2, 3))
