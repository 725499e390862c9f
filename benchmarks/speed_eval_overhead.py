"""Evaluation overhead: wall time of `run_eval` against the bare work it must do (sampling + decode + Inception
features + FID from features), on a tiny setup: the MNIST pixel UNet at random init sampled with DPM-Solver++
(CFG), real MNIST prompts and held-out reference.

    python benchmarks/speed_eval_overhead.py [--num-samples 100] [--batch-size 50] [--steps 1 4] [--threads 1]

Both sides use the same cached reference statistics (computed once before timing). run_eval additionally
builds rows and fingerprints, scores prompt accuracy, writes grids and the leaderboard: the ratio printed is
run_eval / bare (1.0 = no overhead).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from fastgen.data.mnist import MNISTDataModule  # noqa: E402
from fastgen.eval.metrics.fid import fid_from_features  # noqa: E402
from fastgen.eval.metrics.images import pixels_to_uint8  # noqa: E402
from fastgen.eval.metrics.suite import MetricSuite  # noqa: E402
from fastgen.eval.evaluator.run_eval import eval_noise, eval_prompts, run_eval  # noqa: E402
from fastgen.eval.evaluator.settings import eval_settings  # noqa: E402
from fastgen.methods.dpm_solver import DPMSolverBaseline  # noqa: E402
from fastgen.networks import build_random  # noqa: E402


@torch.no_grad()
def bare(method, prompts, settings, suite):
    """Sampling + decode + Inception features + FID, nothing else."""
    for steps in settings.steps:
        features = []
        for start in range(0, settings.num_samples, settings.batch_size):
            idx = torch.arange(start, min(start + settings.batch_size, settings.num_samples))
            x0 = method.sample(eval_noise(idx, method.backbone.sample_shape, settings.seed), prompts[start:start + len(idx)],
                               steps)
            features.append(suite.inception(pixels_to_uint8(method.backbone.decode(x0))))
        fid_from_features(torch.cat(features), suite.reference.features)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"num_samples": args.num_samples, "batch_size": args.batch_size, "steps": args.steps,
               "clip": {"enabled": False}, "aesthetic": {"enabled": False}, "prompt_accuracy": {"enabled": True},
               "fid": {"kid_subsets": 100}, "cache_dir": f"{tmp}/cache", "leaderboard": f"{tmp}/board.csv"}
        settings = eval_settings(cfg)
        datamodule = MNISTDataModule()
        method = DPMSolverBaseline(build_random("mnist_pixel", cache_dir=f"{tmp}/cache"), guidance_scale=2.0).eval()
        suite = MetricSuite.load(settings, datamodule)  # computes and caches the reference once
        prompts = eval_prompts(datamodule, settings)
        bare(method, prompts, settings, suite)  # warm-up (JIT profiling, allocator)

        start = time.perf_counter()
        bare(method, prompts, settings, suite)
        bare_s = time.perf_counter() - start
        start = time.perf_counter()
        run_eval(method, datamodule, settings, out_dir=tmp, suite=suite)
        full_s = time.perf_counter() - start
    print(f"{args.num_samples} samples x steps {args.steps}, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"bare sampling + features + FID: {bare_s:.2f} s")
    print(f"run_eval:                       {full_s:.2f} s")
    print(f"overhead ratio run_eval / bare: {full_s / bare_s:.3f}")


if __name__ == "__main__":
    main()
