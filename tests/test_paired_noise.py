"""Paired samples: every random draw of sample i (initial noise and each stochastic sampler's per-step draws)
derives from (eval.seed, i), so sample i is the same whatever batch, shard or rank generates it."""

import pytest
import torch
from hydra.utils import instantiate

from fastgen.core import randn_per_sample
from fastgen.eval.evaluator.baseline import teacher_baseline
from fastgen.eval.metrics.latency import LatencyMeter
from fastgen.eval.evaluator.run_eval import generate
from fastgen.eval.evaluator.settings import eval_settings

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPTS = [f"a handwritten digit {d}" for d in ("zero", "one", "two", "three", "four", "five", "six", "seven")]


def _build(experiment_cfg, experiment):
    cfg = experiment_cfg(experiment)
    return instantiate(cfg.method, backbone=instantiate(cfg.model), _convert_="all").eval()


def _generate(method, indices, steps, batch_size):
    settings = eval_settings({"batch_size": batch_size, "seed": 5, "latency": {"enabled": False}})
    return generate(method, PROMPTS, indices, steps, settings, LatencyMeter("cpu", warmup=0))


def _check_paired(method, steps):
    whole = _generate(method, torch.arange(8), steps, batch_size=8)
    in_threes = _generate(method, torch.arange(8), steps, batch_size=3)
    two_ranks = torch.cat([_generate(method, torch.arange(0, 4), steps, 3), _generate(method, torch.arange(4, 8), steps, 3)])
    one = _generate(method, torch.tensor([6]), steps, batch_size=1)
    for other in (in_threes, two_ranks):
        # pixels equal up to one uint8 level (a different batch may change float summation order in the UNet)
        assert (whole.int() - other.int()).abs().max() <= 1
    assert (whole[6].int() - one[0].int()).abs().max() <= 1
    assert not torch.equal(whole[0], whole[1])


# ufogen: re-noising; ddgan/siddm: latent z and posterior noise; lcm: re-noising; tscd: TCD's gamma noise; dmd: none
@pytest.mark.parametrize("experiment, steps", [("ufogen_mnist", 2), ("ddgan_mnist", 4), ("siddm_mnist", 4),
                                               ("lcm_mnist", 2), ("tscd_mnist", 2), ("dmd_mnist", 1),
                                               ("teacher_mnist", 2)])
def test_a_method_sample_does_not_depend_on_its_batch_or_shard(experiment_cfg, experiment, steps):
    _check_paired(_build(experiment_cfg, experiment), steps)


@pytest.mark.parametrize("solver", ["sde-dpmsolver++", "dpmsolver++"])
def test_a_baseline_sample_does_not_depend_on_its_batch_or_shard(experiment_cfg, solver):
    method = _build(experiment_cfg, "dpm_solver_mnist")
    _check_paired(teacher_baseline(method, 2.0, solver), 2)


def test_per_sample_generators_draw_each_row_from_its_own_stream():
    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = randn_per_sample((3, 2, 4), gens([7, 8, 9]))
    assert torch.equal(batch[1], torch.randn(2, 4, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(randn_per_sample((1, 2, 4), gens([9]))[0], batch[2])
    one = torch.Generator().manual_seed(7)  # one generator: the batch in one draw (diffusers' convention)
    assert torch.equal(randn_per_sample((3, 2, 4), one), torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="one generator per sample"):
        randn_per_sample((3, 2), gens([1, 2]))
