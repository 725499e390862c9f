"""A denoiser's encoder features and a logit head on them: the discriminators' building blocks, and the classifier
DMD2 puts on its fake-score network (Yin et al. 2024, arXiv 2405.14867, Sec. 4.3), which reads the features of the
very network it shares (no copy).

`encoder_features(network, x, t, cond)`: for a diffusers UNet the encoder half — conv_in, time embedding, down
blocks, mid block (text through their cross-attention) — returning the mid-block output [B, C, h, w]; for the
points MLP its trunk's hidden state [B, H]. `EncoderLogitHead(network)`: GroupNorm (LayerNorm for the MLP), SiLU
and a 1x1 convolution (linear) to one channel, averaged over space: logits [B].
"""

from __future__ import annotations

import torch
from torch import nn


def unet_encoder_features(net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The mid-block output of the encoder half of `net` (a diffusers UNet, or a module holding its conv_in,
    time_proj, time_embedding, down_blocks and mid_block)."""
    dtype = net.conv_in.weight.dtype
    h = net.conv_in(x).to(dtype)
    emb = net.time_embedding(net.time_proj(t.expand(x.shape[0])).to(dtype))
    cond = cond.to(dtype)
    for block in net.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, _ = block(h, temb=emb, encoder_hidden_states=cond)
        else:
            h, _ = block(h, temb=emb)
    return net.mid_block(h, emb, encoder_hidden_states=cond)


def _is_points_mlp(network: nn.Module) -> bool:
    from fastgen.networks.mlp import PointsMLP

    return isinstance(network, PointsMLP)


def encoder_features(network: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The features a logit head reads: the points MLP's trunk output, or a UNet's mid-block output."""
    if _is_points_mlp(network):
        return network.trunk(x, t, cond)
    return unet_encoder_features(network, x, t, cond)


def unet_logit_head(width: int, groups: int) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(groups, width), nn.SiLU(), nn.Conv2d(width, 1, kernel_size=1))


def mlp_logit_head(width: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 1))


def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Logits [B]: the head's output averaged over every non-batch dimension."""
    return head(features).float().flatten(1).mean(dim=1)


class EncoderLogitHead(nn.Module):
    """A trainable logit head sized for `network`'s encoder features; `forward(network, x, t, cond)` reads them from
    the network it is given (its weights are not part of this module)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        if _is_points_mlp(network):
            self.head = mlp_logit_head(network.config.hidden_dim)
        else:
            self.head = unet_logit_head(network.config.block_out_channels[-1], network.config.norm_num_groups)

    def forward(self, network: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return head_logits(self.head, encoder_features(network, x, t, cond))
