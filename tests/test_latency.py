"""Latency: the median over timed calls, the weights of the sampling path alone, and the bench's quiet pass that
re-measures a leaderboard's rows one sampling path at a time."""

import time

import pytest
import torch

from fastgen.eval.metrics.latency import LATENCY_COLUMNS, LatencyMeter, called_weight_bytes
from fastgen.eval.evaluator.latency_pass import measure_leaderboard
from fastgen.eval.leaderboard.io import append_rows, read_leaderboard
from fastgen.methods.ufogen import UFOGen
from fastgen.networks import build_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_the_latency_is_the_median_per_image_over_the_timed_calls():
    meter = LatencyMeter("cpu", warmup=1)
    for seconds in (0.3, 0.02, 0.02, 0.2):  # an untimed warm-up, then one call slowed by something else
        meter.time(lambda s=seconds: time.sleep(s), 4)
    result = meter.results()
    assert set(result) == set(LATENCY_COLUMNS)
    assert 5.0 <= result["ms_per_image"] < 7.5 and result["images_per_s"] == pytest.approx(1000 / result["ms_per_image"])
    assert result["latency_batch"] == 4 and result["latency_repeats"] == 3
    assert result["latency_threads"] == torch.get_num_threads() == 1 and result["latency_device"].startswith("cpu:")
    assert result["peak_mem_mb"] is None  # no allocator statistics on the CPU
    assert LatencyMeter("cpu").results() == dict.fromkeys(LATENCY_COLUMNS)


def _bytes(*modules):
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def test_the_sampling_path_counts_only_the_networks_sampling_runs(tmp_path):
    method = UFOGen(build_random("mnist_pixel", cache_dir=str(tmp_path)), eval_teacher=False).eval()
    noise = torch.randn(2, *method.backbone.sample_shape)
    x0, weights = called_weight_bytes(method, lambda: method.sample(noise, ["a", "b"], 2))
    assert x0.shape == noise.shape
    # the EMA generator and the text encoder: not the online generator, nor the discriminator
    assert weights == _bytes(method.ema_unet, method.backbone.text_encoder)
    assert weights < _bytes(method) - _bytes(method.discriminator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is measured on CUDA only")
def test_peak_memory_leaves_out_networks_sampling_does_not_run():
    class Method(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(256, 256)
            self.discriminator = torch.nn.Linear(8192, 8192)  # 256 MiB, never run when sampling

    method = Method().cuda()
    meter = LatencyMeter("cuda", warmup=1, module=method)
    x = torch.randn(64, 256, device="cuda")
    for _ in range(3):
        meter.time(lambda: method.net(x), 64)
    peak = meter.results()["peak_mem_mb"]
    assert _bytes(method.net) / 2**20 <= peak < 8


def _row(experiment, method, steps, nfe, guidance, **extra):
    return {"run_id": f"{experiment}-{method}", "experiment": experiment, "method": method, "steps": steps,
            "nfe": nfe, "guidance": guidance, "fid": 100.0, "ms_per_image": 99.0, **extra}


def test_the_latency_pass_measures_each_sampling_path_once_and_fills_its_rows(tmp_path):
    board = tmp_path / "board.csv"
    append_rows(board, [
        _row("ufogen_mnist", "ufogen", 1, 1, 0.0, train_seed=0), _row("ufogen_mnist", "ufogen", 1, 1, 0.0, train_seed=1),
        _row("ufogen_mnist", "ufogen", 2, 2, 0.0), _row("ufogen_mnist", "ufogen@init", 2, 2, 0.0),
        _row("ufogen_mnist", "real_data", None, 0, 0.0, ms_per_image=None),
        _row("dpm_solver_mnist", "dpm_solver_sde", 2, 4, 2.0),
        _row("other_experiment", "other", 1, 1, 0.0),
    ])
    lines = []
    updated = measure_leaderboard(board, ["ufogen_mnist", "dpm_solver_mnist"],
                                  [f"paths.runs_dir={tmp_path}", "eval.batch_size=3"], repeats=2, warmup=1,
                                  log=lines.append)
    assert updated == 5 and len(lines) == 3  # ufogen at 1 and 2 steps (the control shares 2), the SDE baseline
    frame = read_leaderboard(board)
    timed = frame[frame["method"].isin(["ufogen", "ufogen@init", "dpm_solver_sde"])]
    assert (timed["latency_batch"] == 3).all() and (timed["latency_repeats"] == 2).all()
    assert (timed["latency_threads"] == 1).all() and timed["latency_device"].str.startswith("cpu:").all()
    assert (timed["ms_per_image"] != 99.0).all() and (timed["ms_per_image"] > 0).all()
    ufogen = frame[frame["experiment"] == "ufogen_mnist"].set_index(["method", "steps", "train_seed"], drop=False)
    one_step = frame[(frame["method"] == "ufogen") & (frame["steps"] == 1)]["ms_per_image"]
    assert one_step.nunique() == 1  # both training seeds: one sampling path
    assert ufogen[ufogen["method"] == "ufogen@init"]["ms_per_image"].tolist() == \
        frame[(frame["method"] == "ufogen") & (frame["steps"] == 2)]["ms_per_image"].tolist()
    # the data floor and rows of other experiments keep what they had
    assert frame[frame["method"] == "real_data"]["ms_per_image"].isna().all()
    assert frame[frame["method"] == "other"]["ms_per_image"].tolist() == [99.0]
    assert frame["fid"].tolist() == [100.0] * 7


def test_the_latency_pass_refuses_a_row_its_experiment_no_longer_samples(tmp_path):
    board = tmp_path / "board.csv"
    append_rows(board, [_row("ufogen_mnist", "ufogen", 2, 4, 0.0)])
    with pytest.raises(ValueError, match="NFE 4.*makes 2"):
        measure_leaderboard(board, ["ufogen_mnist"], [f"paths.runs_dir={tmp_path}", "eval.batch_size=2"], repeats=1)
    other = tmp_path / "other.csv"
    append_rows(other, [_row("ufogen_mnist", "lcm", 2, 2, 0.0)])
    with pytest.raises(ValueError, match="'lcm' is not its experiment's method 'ufogen'"):
        measure_leaderboard(other, ["ufogen_mnist"], [f"paths.runs_dir={tmp_path}", "eval.batch_size=2"], repeats=1)
