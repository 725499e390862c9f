"""Stub networks with known outputs for the oracle tests, and the v-prediction conversions written out by hand."""

import torch
from torch import nn


def prompt_feature(cond):
    """A fixed random projection of the token-averaged prompt embedding [B, L, E] -> [B] (the plain mean of a
    LayerNorm-ed text encoder's output is ~0 for every prompt, so it could not tell a prompt from the empty one)."""
    direction = torch.randn(cond.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return cond.double().mean(dim=1) @ direction


class StubNet(nn.Module):
    """out = a·x + b·prompt_feature(cond) + c·t/1000 + d·mean(timestep_cond): a known function of every input, with
    the UNet call convention (`.sample`). `by_hand` computes it in float64."""

    def __init__(self, a, b, c=0.0, d=0.0):
        super().__init__()
        self.coef = (a, b, c, d)
        self.unused = nn.Parameter(torch.zeros(()))  # a dtype for Backbone.denoise

    def by_hand(self, x, t, cond, timestep_cond=None):
        a, b, c, d = self.coef
        x = x.double()
        col = lambda v: v.double().reshape(-1, *([1] * (x.ndim - 1)))  # noqa: E731
        out = a * x + b * col(prompt_feature(cond)) + c * col(torch.as_tensor(t).expand(len(x))) / 1000
        return out + d * col(timestep_cond.double().mean(dim=1)) if timestep_cond is not None else out

    def forward(self, x, t, encoder_hidden_states, timestep_cond=None):
        out = self.by_hand(x, t, encoder_hidden_states, timestep_cond).to(x.dtype)
        return type("Out", (), {"sample": out})()


def acp_at(acp, t):
    """ᾱ_t as a column [B, 1] for t [B] (or an int), ᾱ_{−1} = 1."""
    t = torch.as_tensor(t)
    return torch.where(t >= 0, acp[t.clamp(min=0)], torch.ones_like(acp[0])).reshape(-1, 1)


def v_to_x0_eps(out, x, t, acp):
    """x̂0 = α_t x − σ_t v̂, ε̂ = σ_t x + α_t v̂ (v-prediction, Salimans & Ho 2022) for points [B, D]."""
    a = acp_at(acp, t)
    return a.sqrt() * x - (1 - a).sqrt() * out, (1 - a).sqrt() * x + a.sqrt() * out
