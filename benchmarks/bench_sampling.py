"""Sampling speed: each method's `sample()` + decode against its bare network work, and 1-step UFOGen against
25-step DPM-Solver++ with CFG, on one backbone and batch, measured in one run.

    python benchmarks/bench_sampling.py [--model tiny_latent] [--batch-size 8] [--repeats 5] [--threads 1]

Bare work for a method at `steps`: encoding the prompts (and the empty prompt when it uses CFG), NFE(steps)
forward passes of the bare UNet at the batch size (CFG counts twice), and the VAE decode -- each timed alone.
The printed overhead ratio is (sample + decode) / bare; 1.0 means the framework adds nothing; `all above` is
the ratio of the sums over every method and step count (steadier than single rows on a busy machine). Methods are built
from their `*_tiny` experiments (random init: speed does not depend on the weights). With `--model sd15_random`
and a GPU this is the SD1.5-size benchmark (add `--dtype bf16`).
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from fastgen.config import CONFIG_PATH, register_resolvers  # noqa: E402

EXPERIMENTS = {"ufogen": "ufogen_tiny", "ddgan": "ddgan_tiny", "siddm": "siddm_tiny", "lcm": "lcm_tiny",
               "tscd": "tscd_tiny"}


def build(experiment, model, tmp, device, overrides=()):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", f"experiment_name={experiment}",
                                           f"model={model}", f"paths.runs_dir={tmp}", f"paths.output_dir={tmp}/run",
                                           f"paths.cache_dir={tmp}/cache", *overrides])
    backbone = instantiate(cfg.model)
    return instantiate(cfg.method, backbone=backbone, _convert_="all").to(device).eval()


def timed(fn, repeats, device):
    """Median wall seconds of `fn()` over `repeats` calls after one untimed warm-up call."""
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


@torch.no_grad()
def measure(method, steps, batch, repeats, device):
    """(seconds of sample + decode, seconds of the bare work) for one batch."""
    bb = method.backbone
    noise = torch.randn(batch, *bb.sample_shape, device=device)
    prompts = [f"a photo of object {i}" for i in range(batch)]
    full = timed(lambda: bb.decode(method.sample(noise, prompts, steps, torch.Generator(device).manual_seed(0))),
                 repeats, device)
    nfe = method.nfe(steps)
    cfg = nfe > steps  # CFG: the empty prompt is encoded too
    encode = timed(lambda: bb.encode_prompts(prompts + ([""] * batch if cfg else [])), repeats, device)
    cond = bb.encode_prompts(prompts)
    t = torch.full((batch,), 999, device=device, dtype=torch.long)
    unet = getattr(method, "teacher_unet", None) if method.name == "dpm_solver" else bb.unet
    forward = timed(lambda: unet(noise, t, encoder_hidden_states=cond), repeats, device)
    decode = timed(lambda: bb.decode(noise), repeats, device)
    return full, encode + nfe * forward + decode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_latent")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_override = [f"model.dtype={args.dtype}"]
    print(f"device {device} ({torch.get_num_threads()} threads), model {args.model}, batch {args.batch_size}, "
          f"median of {args.repeats}")
    print(f"{'method':10s} {'steps':>5s} {'nfe':>4s} {'sample+decode ms':>17s} {'bare ms':>9s} {'overhead':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        walls, totals = {}, [0.0, 0.0]
        for name, experiment in EXPERIMENTS.items():
            method = build(experiment, args.model, tmp, device, dtype_override)
            for steps in method.supported_steps or (1, 2, 4, 8):
                full, bare = measure(method, steps, args.batch_size, args.repeats, device)
                walls[(name, steps)] = full
                totals[0] += full
                totals[1] += bare
                print(f"{name:10s} {steps:5d} {method.nfe(steps):4d} {full * 1e3:17.1f} {bare * 1e3:9.1f} "
                      f"{full / bare:9.3f}")
        print(f"{'all above':10s} {'':5s} {'':4s} {totals[0] * 1e3:17.1f} {totals[1] * 1e3:9.1f} "
              f"{totals[0] / totals[1]:9.3f}")
        baseline = build("dpm_solver_mnist", args.model, tmp, device, dtype_override)
        full, bare = measure(baseline, 25, args.batch_size, args.repeats, device)
        print(f"{'dpm_solver':10s} {25:5d} {baseline.nfe(25):4d} {full * 1e3:17.1f} {bare * 1e3:9.1f} {full / bare:9.3f}")
        print(f"\n1-step UFOGen vs 25-step DPM-Solver++ (CFG {baseline.guidance_scale}): "
              f"{baseline.nfe(25)} vs 1 network evaluations, wall ratio {full / walls[('ufogen', 1)]:.1f}x")


if __name__ == "__main__":
    main()
