"""AdamW with a warmup-stable-decay learning-rate schedule (WSD; Hu et al. 2024, MiniCPM, arXiv 2404.06395 §4).

The multiplier rises linearly to 1 over `warmup_steps`, stays at 1, and — when `decay_start` is set — falls
along a half cosine to 0 over the `decay_steps` after it. The constant phase means a run can be extended
before deciding where to anneal; the final decay is what turns a noisy constant-lr model into a clean one.
"""

from __future__ import annotations

import math

import torch


def wsd_multiplier(step: int, warmup_steps: int, decay_start: int | None = None, decay_steps: int = 0) -> float:
    """Learning-rate factor at optimizer step `step` (0-based)."""
    factor = min(1.0, (step + 1) / max(1, warmup_steps))
    if decay_start is not None and step >= decay_start:
        progress = min(1.0, (step - decay_start) / max(1, decay_steps))
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def adamw_with_schedule(params, lr: float, betas, weight_decay: float, warmup_steps: int,
                        decay_start: int | None = None, decay_steps: int = 0):
    """AdamW over the trainable `params` and its per-step WSD scheduler."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: wsd_multiplier(step, warmup_steps, decay_start, decay_steps))
    return opt, sched
