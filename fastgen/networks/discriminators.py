"""Discriminators of the adversarial methods, with one call signature: `D(x, t, cond, x_cond=None) -> logits [B]`.

A method gets one from its backbone, `Backbone.build_discriminator(joint)`: the backbone decides which of these
belongs to its network, so no method names a network class.

`UNetEncoderDiscriminator` is the UFOGen/SIDDM design: the encoder half of a (pretrained) diffusion
UNet — conv_in, time embedding, down blocks and mid block, text-conditioned through their
cross-attention — plus a small head (GroupNorm, SiLU, 1x1 conv to one channel, spatial mean).
`x_cond` (DDGAN's joint discriminator sees x_t next to x_{t-1}) is concatenated on channels; its
input weights start at zero, so the pretrained encoder's features are unchanged at initialisation.

`MLPDiscriminator` is the same design for the points MLP (fastgen/networks/mlp.py): a copy of its trunk — time
and text embedding, input projection, residual blocks — plus a head (LayerNorm, SiLU, linear to one logit);
`x_cond` is concatenated on features, with zero-initialised input weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastgen.networks.encoder_heads import head_logits, mlp_logit_head, unet_encoder_features, unet_logit_head


def _widened(layer: nn.Module, extra: int, make) -> nn.Module:
    """A copy of input layer `layer` taking `extra` more input channels whose weights start at zero."""
    if not extra:
        return layer
    widened = make(layer)
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, : layer.weight.shape[1]] = layer.weight
        widened.bias.copy_(layer.bias)
    return widened


def _check_x_cond(cond_channels: int, x_cond) -> None:
    if (x_cond is None) != (cond_channels == 0):
        raise ValueError(f"this discriminator takes x_cond with {cond_channels} channels; got {x_cond is not None}")


class UNetEncoderDiscriminator(nn.Module):
    def __init__(self, unet: nn.Module, cond_channels: int = 0):
        super().__init__()
        unet = copy.deepcopy(unet)
        conv = unet.conv_in
        self.conv_in = _widened(conv, cond_channels, lambda c: nn.Conv2d(
            c.in_channels + cond_channels, c.out_channels, c.kernel_size, padding=c.padding))
        self.cond_channels = cond_channels
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.down_blocks, self.mid_block = unet.down_blocks, unet.mid_block
        self.head = unet_logit_head(unet.config.block_out_channels[-1], unet.config.norm_num_groups)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, x_cond: torch.Tensor | None = None):
        _check_x_cond(self.cond_channels, x_cond)
        h = unet_encoder_features(self, torch.cat([x, x_cond], 1) if x_cond is not None else x, t, cond)
        return head_logits(self.head, h)


class MLPDiscriminator(nn.Module):
    def __init__(self, mlp: nn.Module, cond_channels: int = 0):
        super().__init__()
        trunk = copy.deepcopy(mlp)
        del trunk.norm_out, trunk.proj_out  # the generator's output layers; D has its own head
        trunk.proj_in = _widened(trunk.proj_in, cond_channels,
                                 lambda p: nn.Linear(p.in_features + cond_channels, p.out_features))
        self.body, self.cond_channels = trunk, cond_channels
        self.head = mlp_logit_head(mlp.config.hidden_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, x_cond: torch.Tensor | None = None):
        _check_x_cond(self.cond_channels, x_cond)
        h = self.body.trunk(torch.cat([x, x_cond], 1) if x_cond is not None else x, t, cond)
        return head_logits(self.head, h)
