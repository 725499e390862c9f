"""Image-to-image on MNIST (issue 21): held-out digits re-drawn as another digit at several strengths.

    python benchmarks/img2img_mnist.py --ckpt runs/ufogen_mnist/checkpoints/last.ckpt [--n 100] [--out DIR]

For each held-out digit d (the first --n of the held-out split) the prompt asks for (d + 5) mod 10. Each method samples
with `fastgen.generation.sampling.img2img` from the digit at strengths 0.2 ... 1.0 (sample i: the evaluation's noise
and sampler generator of index i at --seed, default 0). Per (method, steps, strength): prompt accuracy (the shipped digit
classifier reads the asked digit), source kept (it still reads d), SSIM and mean |x - input| (pixels in [-1, 1]) to
the input digit. Methods: the checkpoint (UFOGen) at 1/2/4 steps, the teacher with DPM-Solver++ (CFG 2) at 8 and 25
(`--steps`, `--teacher-steps`). Rows are written as they come.
Writes <out>/img2img_mnist.csv and <out>/img2img_mnist.png (input row, then one row per method at each strength).
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as ssim
from torchvision.utils import make_grid, save_image

from fastgen.core.files import atomic_path, write_text_atomic
from fastgen.data.mnist import MNISTDataModule, digit_prompt
from fastgen.eval.evaluator.checkpoint import method_from_checkpoint
from fastgen.eval.models.digit_classifier import load_classifier, predict
from fastgen.eval.evaluator.run_eval import eval_noise, sampler_generators
from fastgen.generation.sampling import img2img

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)


def teacher_baseline(backbone):
    from fastgen.methods.dpm_solver import DPMSolverBaseline

    return DPMSolverBaseline(backbone, guidance_scale=2.0).eval()


@torch.no_grad()
def run(method, x0, labels, steps, strength, batch=50, seed=0):
    targets = (labels + 5) % 10
    prompts = [digit_prompt(int(t)) for t in targets]
    out = []
    for start in range(0, len(x0), batch):
        idx = torch.arange(start, min(start + batch, len(x0)))
        noise = eval_noise(idx, x0.shape[1:], seed)
        out.append(img2img(method, x0[idx], [prompts[i] for i in idx], steps, strength, noise,
                           sampler_generators(idx, seed)).clamp(-1, 1))
    return torch.cat(out), targets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="the checkpoint's step counts")
    parser.add_argument("--teacher-steps", type=int, nargs="*", default=[8, 25],
                        help="DPM-Solver++ step counts (none: no teacher rows)")
    parser.add_argument("--name", default="img2img_mnist", help="basename of the CSV and PNG written")
    parser.add_argument("--seed", type=int, default=0, help="sample i: the evaluation's noise of index i at this seed")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    dm = MNISTDataModule()
    dm.setup()
    images, labels = dm.train_labelled("heldout")
    x0, labels = images[: args.n], labels[: args.n]
    classifier = load_classifier()
    ufogen = method_from_checkpoint(args.ckpt)[0]
    teacher_unet = getattr(ufogen, "teacher_unet", None)
    import copy

    teacher_bb = copy.deepcopy(ufogen.backbone)
    if teacher_unet is not None:
        teacher_bb.unet = teacher_unet
    teacher = teacher_baseline(teacher_bb)
    runs = [(ufogen.name, ufogen, s) for s in args.steps] + [("dpm_solver (teacher)", teacher, s) for s in args.teacher_steps]
    rows, picture = [], [x0[:8]]
    for name, method, steps in runs:
        for strength in STRENGTHS:
            t0 = time.time()
            x, targets = run(method, x0, labels, steps, strength, seed=args.seed)
            pred = predict(classifier, x)
            rows.append(dict(method=name, steps=steps, strength=strength, seed=args.seed,
                             start_t=method.start_time(strength),
                             prompt_accuracy=(pred == targets).float().mean().item(),
                             source_kept=(pred == labels).float().mean().item(),
                             ssim=ssim(x, x0, data_range=2.0).item(), l1=(x - x0).abs().mean().item(),
                             seconds=round(time.time() - t0, 1)))
            print(rows[-1], flush=True)
            write_text_atomic(out / f"{args.name}.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.3f"))
            if steps == min(args.steps) or steps == min(args.teacher_steps, default=None):
                picture.append(x[:8])
    grid = make_grid(torch.cat([p.cpu() for p in picture]) * 0.5 + 0.5, nrow=8, padding=2, pad_value=0.5)
    with atomic_path(out / f"{args.name}.png", suffix=".png") as tmp:
        save_image(grid, tmp)


if __name__ == "__main__":
    main()
