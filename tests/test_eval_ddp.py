"""run_eval under a 2-process CPU DDP (gloo) gives the same metrics as one process on the same samples."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastgen.eval.run_eval import run_eval
from test_eval_fakes import FakeDataModule, FakeMethod

CFG = {"num_samples": 6, "batch_size": 2, "steps": [1], "clip": {"enabled": False},
       "aesthetic": {"enabled": False}, "fid": {"kid_subsets": 3}, "latency": {"enabled": False}}
METRICS = ("fid", "kid", "prompts_sha256", "reference_sha256")


def _worker(rank, world, port, tmp):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        method = FakeMethod()
        rows = run_eval(method, FakeDataModule(), {**CFG, "cache_dir": f"{tmp}/ddp_cache",
                                                   "leaderboard": f"{tmp}/ddp.csv"}, out_dir=f"{tmp}/ddp_run")
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump({"row": {k: rows[0][k] for k in METRICS}, "sampled": sum(n for n, _ in method.calls)}, f)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    single = run_eval(FakeMethod(), FakeDataModule(), {**CFG, "cache_dir": str(tmp_path / "cache")})[0]
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["sampled"] for r in results] == [3, 3]  # the 6 samples are sharded
    for result in results:
        for key in METRICS:
            assert result["row"][key] == single[key] or abs(result["row"][key] - single[key]) < 1e-6 * abs(single[key])
    assert (tmp_path / "ddp.csv").read_text().count("\n") == 2  # header + one row, written by rank 0 only
    assert len(list((tmp_path / "ddp_run" / "samples").iterdir())) == 1
