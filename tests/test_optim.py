"""The warmup-stable-decay learning-rate schedule, and that it survives a scheduler state round trip."""

import math

import pytest
import torch

from fastgen.methods.optim import adamw_with_schedule, wsd_multiplier


def test_wsd_multiplier_closed_form():
    assert wsd_multiplier(0, warmup_steps=4) == pytest.approx(0.25)
    assert wsd_multiplier(3, warmup_steps=4) == 1.0
    assert wsd_multiplier(10_000, warmup_steps=4) == 1.0  # no decay configured: constant
    kw = {"warmup_steps": 4, "decay_start": 100, "decay_steps": 50}
    assert wsd_multiplier(99, **kw) == 1.0
    assert wsd_multiplier(100, **kw) == 1.0
    assert wsd_multiplier(125, **kw) == pytest.approx(0.5)
    assert wsd_multiplier(100 + 10, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 50)))
    assert wsd_multiplier(150, **kw) == pytest.approx(0.0, abs=1e-12)
    assert wsd_multiplier(400, **kw) == pytest.approx(0.0, abs=1e-12)


def test_resumed_scheduler_continues_the_decay():
    """A scheduler rebuilt from a saved state (as Lightning does on resume) is at the same point of the curve."""
    def build():
        p = torch.nn.Parameter(torch.zeros(1))
        return adamw_with_schedule([p], 1e-3, (0.9, 0.999), 0.0, warmup_steps=2, decay_start=5, decay_steps=10)

    opt, sched = build()
    for _ in range(8):
        opt.step()
        sched.step()
    opt2, sched2 = build()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * wsd_multiplier(8, 2, 5, 10))
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * wsd_multiplier(9, 2, 5, 10))
