"""ControlNet on MNIST (issue 21): does a few-step sampler follow a control image, and does it still draw the digit?

    python benchmarks/controlnet_mnist.py --teacher-controlnet RUN/controlnet \
        [--ufogen CKPT --ufogen-controlnet DIR] [--lcm CKPT --lcm-controlnet DIR] [--n 50] [--out DIR]

For each of the first --n held-out digits d: the control is d's coarse mask (`fastgen.data.controls`, the control
the ControlNets were trained on; --control edges for the edge map) and the prompt asks for d itself. Per (method,
ControlNet, steps): control IoU (mean IoU between the control and the same map of the sample) and prompt accuracy (the
shipped digit classifier reads d). Each method samples with: no ControlNet (the IoU a sample gets by chance), the
teacher's ControlNet (trained with the diffusion loss, applied as is), and the method's own ControlNet (trained with
its objective on the frozen generator), where given. The teacher samples with DPM-Solver++ (CFG 2) at
--teacher-steps. Sample i: the evaluation's noise and sampler generator of index i at --seed (paired across rows).
Writes <out>/controlnet_mnist.csv (rows as they come) and <out>/controlnet_mnist.png (controls, then 8 samples per
row at the lowest step count of each method).
"""

import argparse
import contextlib
import time
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate
from torchvision.utils import make_grid, save_image

from fastgen.core.files import atomic_path, write_text_atomic
from fastgen.data.controls import control_iou, control_map
from fastgen.data.mnist import MNISTDataModule, digit_prompt
from fastgen.eval.evaluator.checkpoint import method_from_checkpoint
from fastgen.eval.models.digit_classifier import load_classifier, predict
from fastgen.networks.controlnet import attach_controlnet, load_controlnet
from fastgen.generation.sampling import sample_pixels


@torch.no_grad()
def run(method, controlnet, controls, prompts, steps, seed, batch=25):
    out = []
    for idx in torch.arange(len(prompts)).split(batch):
        ctx = attach_controlnet(method, controlnet, controls[idx]) if controlnet is not None else contextlib.nullcontext()
        with ctx:
            out.append(sample_pixels(method, prompts, idx, steps, seed))
    return torch.cat(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher-controlnet", required=True)
    parser.add_argument("--ufogen")
    parser.add_argument("--ufogen-controlnet")
    parser.add_argument("--lcm")
    parser.add_argument("--lcm-controlnet")
    parser.add_argument("--control", default="mask")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[8])
    parser.add_argument("--out", default="benchmarks/controlnet")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dm = MNISTDataModule()
    digits, labels = dm.train_labelled("heldout")
    digits, labels = digits[: args.n], labels[: args.n]
    controls = control_map(digits, args.control)
    prompts = [digit_prompt(int(d)) for d in labels]
    classifier = load_classifier()
    teacher_cn = load_controlnet(args.teacher_controlnet)

    runs = []  # (label, method, [(controlnet label, controlnet)], steps)
    config = None
    for name in ("ufogen", "lcm"):
        ckpt = getattr(args, name)
        if ckpt is None:
            continue
        method, _, config = method_from_checkpoint(ckpt)
        nets = [("none", None), ("teacher's", teacher_cn)]
        own = getattr(args, f"{name}_controlnet")
        if own is not None:
            nets.append(("own", load_controlnet(own)))
        runs.append((method.name, method, nets, args.steps))
    if config is None:
        raise SystemExit("give --ufogen and/or --lcm checkpoints")
    from fastgen.methods.dpm_solver import DPMSolverBaseline

    teacher = DPMSolverBaseline(instantiate(config["model"]), guidance_scale=2.0).eval()
    runs.append(("dpm_solver (teacher)", teacher, [("none", None), ("teacher's", teacher_cn)], args.teacher_steps))

    rows, picture = [], [controls[:8] * 2 - 1]
    for label, method, nets, step_counts in runs:
        for cn_label, controlnet in nets:
            for steps in step_counts:
                t0 = time.time()
                x = run(method, controlnet, controls, prompts, steps, args.seed)
                pred = predict(classifier, x)
                rows.append(dict(method=label, controlnet=cn_label, steps=steps, control=args.control, n=args.n,
                                 seed=args.seed, control_iou=control_iou(controls, x, args.control).mean().item(),
                                 prompt_accuracy=(pred == labels).float().mean().item(),
                                 seconds=round(time.time() - t0, 1)))
                print(rows[-1], flush=True)
                write_text_atomic(out / "controlnet_mnist.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.3f"))
                if steps == min(step_counts):
                    picture.append(x[:8])
    grid = make_grid(torch.cat(picture) * 0.5 + 0.5, nrow=8, padding=2, pad_value=0.5)
    with atomic_path(out / "controlnet_mnist.png", suffix=".png") as tmp:
        save_image(grid, tmp)


if __name__ == "__main__":
    main()
