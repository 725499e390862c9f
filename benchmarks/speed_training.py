"""Training-step overhead: each method's Lightning training step against the network work inside it, measured in
one run on the MNIST experiments (committed teacher, real digits) by default.

    python benchmarks/speed_training.py [--batch-size 32] [--steps 12] [--warmup 3] [--threads 1]
    python benchmarks/speed_training.py --experiments ufogen_sd15 --batch-size 8 --random-images 64 \
        --overrides model=sd15_random      # SD1.5 size at 512 px, bf16-mixed: on a GPU

`--random-images N` writes N random 3-channel images at the experiment's `data.resolution` into an image-text
folder and points `data.root` at it (speed does not depend on the pixels). On a GPU the timers synchronise the
device, and the step's images/s and peak allocated memory are printed too.

Inside every timed training step the benchmark adds up
  forward   -- wall time inside the top-level networks' forward (UNet, discriminator, teacher, target, text encoder,
               VAE; forward hooks, nested calls counted once),
  backward  -- wall time inside `LightningModule.backward` (what `manual_backward` and automatic optimisation call),
  optimizer -- wall time inside `optimizer.step` (step hooks),
and prints the median over steps of the step's wall time over their sum: the overhead ratio of everything else (noise and timestep
draws, forward-process arithmetic, losses, EMA updates, logging, the Lightning loop). 1.0 = no overhead.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from fastgen.runtime.build import build_from_config  # noqa: E402

from fastgen.runtime.config import CONFIG_PATH, register_resolvers  # noqa: E402

EXPERIMENTS = ["ufogen_mnist", "ddgan_mnist", "siddm_mnist", "lcm_mnist", "lcm_lora_mnist", "tscd_mnist",
               "teacher_mnist"]
NETWORKS = ["backbone.unet", "backbone.text_encoder", "backbone.vae", "discriminator", "teacher_unet", "target_unet"]


class WorkMeter(L.Callback):
    """Per training step: wall time, and the time inside network forwards, backward and optimizer steps."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.depth, self.started = warmup, 0, 0.0
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        self.steps = []  # (wall, forward, backward, optimizer) per timed step

    def _enter(self, *_):
        if self.depth == 0:
            self.sync()
            self.t0 = time.perf_counter()
        self.depth += 1

    def _exit(self, *_):
        self.depth -= 1
        if self.depth == 0:
            self.sync()
            self.parts["forward"] += time.perf_counter() - self.t0

    def attach(self, method):
        for path in NETWORKS:
            module = method
            for name in path.split("."):
                module = getattr(module, name, None)
            if isinstance(module, torch.nn.Module):
                module.register_forward_pre_hook(self._enter)
                module.register_forward_hook(self._exit)
        backward = method.backward

        def timed_backward(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            backward(*args, **kwargs)
            self.sync()
            self.parts["backward"] += time.perf_counter() - start

        method.backward = timed_backward

    def _network_time(self):
        return self.parts["forward"] + self.parts["backward"]

    def _step_begins(self, *_):
        self.sync()
        self.opt_t0, self.opt_net0 = time.perf_counter(), self._network_time()

    def _step_ends(self, *_):
        # automatic optimisation runs forward and backward inside optimizer.step(closure): not optimizer time
        self.sync()
        inside = self._network_time() - self.opt_net0
        self.parts["optimizer"] += time.perf_counter() - self.opt_t0 - inside

    def on_fit_start(self, trainer, pl_module):
        for opt in trainer.optimizers:
            opt.register_step_pre_hook(self._step_begins)
            opt.register_step_post_hook(self._step_ends)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.parts = dict.fromkeys(self.parts, 0.0)
        self.sync()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sync()
        if batch_idx >= self.warmup:
            self.steps.append((time.perf_counter() - self.started, *self.parts.values()))


def write_random_images(root, n, resolution):
    """An image-text folder of `n` random RGB images (speed benchmarks only)."""
    import json

    import numpy as np
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i in range(n):
            pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, f"{i}.png"))
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"a photo of thing {i}"}) + "\n")


def run(experiment, batch_size, steps, warmup, tmp, overrides=(), random_images=0):
    """Medians over the timed steps: (wall, forward, backward, optimizer) seconds, overhead ratio, peak GiB."""
    register_resolvers()
    overrides = [f"experiment={experiment}", f"experiment_name={experiment}", f"paths.runs_dir={tmp}",
                 f"paths.output_dir={tmp}/{experiment}", f"data.batch_size={batch_size}", "eval=none", "logger=none",
                 *overrides]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
        if random_images:
            folder = f"{tmp}/images-{cfg.data.resolution}"
            write_random_images(folder, random_images, cfg.data.resolution)
            cfg = compose("config", overrides=[*overrides, f"data.root={folder}"])
    method, datamodule = build_from_config(cfg)
    cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    meter = WorkMeter(warmup, cuda)
    meter.attach(method)
    optimizers_per_step = method.optimizer_steps_per_training_step
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(max_steps=round((warmup + steps) * optimizers_per_step), accelerator="gpu" if cuda else "cpu",
                        devices=1, precision=cfg.trainer.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[meter])
    trainer.fit(method, datamodule=datamodule)
    ratios = [wall / (fwd + bwd + opt) for wall, fwd, bwd, opt in meter.steps]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return [statistics.median(column) for column in zip(*meter.steps)] + [statistics.median(ratios), peak]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every experiment")
    parser.add_argument("--random-images", type=int, default=0, help="train on N random images (image-folder data)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"{device}, batch {args.batch_size}, median of {args.steps} steps after {args.warmup} warm-up steps, "
          f"overrides {args.overrides}")
    print(f"{'experiment':16s} {'step ms':>8s} {'forward':>8s} {'backward':>9s} {'optim':>6s} {'overhead':>9s} "
          f"{'img/s':>7s} {'ms/img':>7s} {'peak GiB':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in args.experiments:
            wall, fwd, bwd, opt, ratio, peak = run(experiment, args.batch_size, args.steps, args.warmup, tmp,
                                                   args.overrides, args.random_images)
            print(f"{experiment:16s} {wall * 1e3:8.0f} {fwd * 1e3:8.0f} {bwd * 1e3:9.0f} {opt * 1e3:6.0f} {ratio:9.3f} "
                  f"{args.batch_size / wall:7.1f} {wall * 1e3 / args.batch_size:7.1f} {peak:9.2f}")


if __name__ == "__main__":
    main()
