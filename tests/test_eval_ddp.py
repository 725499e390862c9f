"""run_eval under a 2-process CPU DDP (gloo) gives the same metrics as one process on the same samples."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port

from fastgen.eval.evaluator.run_eval import run_eval
from fakes import FakeDataModule, FakeMethod

CFG = {"num_samples": 6, "batch_size": 2, "steps": [1], "clip": {"enabled": False},
       "aesthetic": {"enabled": False}, "fid": {"kid_subsets": 3}, "latency": {"enabled": False}}
METRICS = ("fid", "kid", "prompts_sha256", "reference_sha256")


def _worker(rank, world, port, tmp, cfg):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        method = FakeMethod()
        rows = run_eval(method, FakeDataModule(), {**cfg, "cache_dir": f"{tmp}/ddp_cache",
                                                   "leaderboard": f"{tmp}/ddp.csv"}, out_dir=f"{tmp}/ddp_run")
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump({"row": {k: rows[0][k] for k in METRICS}, "calls": method.calls}, f)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    single = run_eval(FakeMethod(), FakeDataModule(), {**CFG, "cache_dir": str(tmp_path / "cache")})[0]
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), CFG), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [sum(n for n, _ in r["calls"]) for r in results] == [3, 3]  # the 6 samples are sharded
    for result in results:
        for key in METRICS:
            assert result["row"][key] == single[key] or abs(result["row"][key] - single[key]) < 1e-6 * abs(single[key])
    assert (tmp_path / "ddp.csv").read_text().count("\n") == 2  # header + one row, written by rank 0 only
    assert len(list((tmp_path / "ddp_run" / "samples").iterdir())) == 1


def test_every_rank_makes_as_many_sampling_calls(tmp_path):
    """5 samples in batches of 2 on 2 ranks: rank 0 samples 2 + 1, rank 1 one extra noise first and then its 2 (a
    sharded FSDP network samples collectively; a rank calling less often would leave the other waiting forever)."""
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), {**CFG, "num_samples": 5}), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(r["calls"]) for r in results] == [2, 2]
    assert results[0]["calls"] == [[2, 1], [1, 1]] and results[1]["calls"] == [[1, 1], [2, 1]]
