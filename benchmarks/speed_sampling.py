"""Sampling speed: each method's `sample()` + decode against its bare network work, and 1-step UFOGen against
25-step DPM-Solver++ with CFG, on one backbone and batch, measured in one run.

    python benchmarks/speed_sampling.py [--model tiny_latent] [--batch-sizes 8] [--repeats 5] [--threads 1]
    python benchmarks/speed_sampling.py --model sd15_random --dtype bf16 --methods ufogen --batch-sizes 1 8 \
        --variants eager channels_last compile      # SD1.5 size at 512 px: on a GPU

Bare work for a method at `steps`: encoding the prompts (and the empty prompt when it uses CFG), NFE(steps)
forward passes of the bare UNet at the batch size (CFG counts twice), and the VAE decode -- each timed alone.
The printed overhead ratio is (sample + decode) / bare; 1.0 means the framework adds nothing; `all eager method
rows` is the ratio of the sums over every method, batch and step count (steadier than single rows on a busy machine). Methods are built
from their `*_sd15` experiments with `debug=tiny` (random init: speed does not depend on the weights). With `--model sd15_random`
and a GPU this is the SD1.5-size benchmark (add `--dtype bf16`: text encoder and VAE in bf16, UNets under bf16
autocast, as `trainer.precision=bf16-mixed` runs them); ms/img and img/s are per generated image.
`--variants` are applied in order to the same models: `channels_last` converts every module and the noise to
channels-last memory format, `compile` then wraps every UNet and VAE decoder in `torch.compile` (compile time is in
the untimed warm-up call).
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
from fastgen.runtime.build import build_from_config  # noqa: E402

from fastgen.runtime.config import CONFIG_PATH, register_resolvers  # noqa: E402

EXPERIMENTS = {m: f"{m}_sd15" for m in ("ufogen", "ddgan", "siddm", "lcm", "tscd")}


def build(experiment, model, tmp, device, overrides=()):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", "debug=tiny", f"experiment_name={experiment}",
                                           f"model={model}", f"paths.runs_dir={tmp}", f"paths.output_dir={tmp}/run",
                                           f"paths.cache_dir={tmp}/cache", *overrides])
    method, _ = build_from_config(cfg)
    return method.to(device).eval()


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
def measure(method, steps, batch, repeats, device, memory_format=torch.contiguous_format):
    """(seconds of sample + decode, seconds of the bare work) for one batch."""
    bb = method.backbone
    noise = torch.randn(batch, *bb.sample_shape, device=device).contiguous(memory_format=memory_format)
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


def apply_variant(method, variant):
    """Converts `method` in place; returns the memory format its inputs should have."""
    if variant == "compile":
        for module in method.modules():
            if type(module).__name__ in ("UNet2DConditionModel", "UNet2DModel", "Decoder"):
                module.compile()
    if variant in ("channels_last", "compile"):
        method.to(memory_format=torch.channels_last)
        return torch.channels_last
    return torch.contiguous_format


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_latent")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--methods", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=["eager", "channels_last", "compile"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_override = [f"model.dtype={args.dtype}"]
    # bf16/fp16: frozen text encoder and VAE stored in that dtype, the UNets under autocast (as `bf16-mixed` trains)
    autocast = torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype),
                              enabled=args.dtype != "fp32")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{name}, model {args.model} {args.dtype}, median of {args.repeats}")
    print(f"{'method':10s} {'variant':13s} {'batch':>5s} {'steps':>5s} {'nfe':>4s} {'sample+decode ms':>17s} "
          f"{'bare ms':>9s} {'overhead':>9s} {'ms/img':>8s} {'img/s':>7s}")

    def row(name, variant, batch, steps, nfe, full, bare):
        print(f"{name:10s} {variant:13s} {batch:5d} {steps:5d} {nfe:4d} {full * 1e3:17.1f} {bare * 1e3:9.1f} "
              f"{full / bare:9.3f} {full * 1e3 / batch:8.2f} {batch / full:7.1f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        walls, totals = {}, [0.0, 0.0]
        names = [*args.methods, "dpm_solver"]
        for name in names:
            experiment = EXPERIMENTS.get(name, "dpm_solver_mnist")
            method = build(experiment, args.model, tmp, device, dtype_override)
            for variant in args.variants:
                memory_format = apply_variant(method, variant)
                for batch in args.batch_sizes:
                    for steps in (25,) if name == "dpm_solver" else method.supported_steps or (1, 2, 4, 8):
                        with autocast:
                            full, bare = measure(method, steps, batch, args.repeats, device, memory_format)
                        walls[(name, variant, batch, steps)] = full
                        if name != "dpm_solver" and variant == "eager":
                            totals[0] += full
                            totals[1] += bare
                        row(name, variant, batch, steps, method.nfe(steps), full, bare)
            if name == "dpm_solver":
                guidance, nfe_dpm = method.guidance_scale, method.nfe(25)
            del method
        if totals[1]:
            print(f"all eager method rows: sample+decode {totals[0] * 1e3:.1f} ms, bare {totals[1] * 1e3:.1f} ms, "
                  f"overhead {totals[0] / totals[1]:.3f}")
        if "ufogen" in args.methods:
            for variant in args.variants:
                for batch in args.batch_sizes:
                    ratio = walls[("dpm_solver", variant, batch, 25)] / walls[("ufogen", variant, batch, 1)]
                    print(f"1-step UFOGen vs 25-step DPM-Solver++ (CFG {guidance}), {variant}, batch {batch}: "
                          f"{nfe_dpm} vs 1 network evaluations, wall ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
