"""`run_eval`: evaluate one method at several step counts -> leaderboard rows. The one code path behind the
`FewStepEval` callback and `python -m fastgen.evaluate`.

For each `steps` in `eval.steps` (skipping those the method does not support):
  1. generate `eval.num_samples` images in batches of `eval.batch_size`: sample i gets prompt i of the fixed
     prompt set (`eval.prompts`, else `datamodule.eval_prompts(n, seed)`) and noise drawn from
     `torch.Generator().manual_seed(eval.seed + i)` on the CPU, and a stochastic sampler's per-step draws for
     sample i come from its own CPU generator seeded by a hash of (eval.seed, i) (`sampler_generators`) -- so
     sample i is the same for every batch size, device count and sharding, and paired across methods and step
     counts;
  2. decode (`backbone.decode`) to uint8 pixels, as if saved as PNG; the median per-image wall time of 1-2 over
     the batches is the latency (latency.py; measured alongside whatever else the machine runs: the bench
     re-measures its rows in a quiet pass, latency_pass.py);
  3. score every available metric (metrics.py) and write a sample grid PNG (grids.py).
With `eval.metrics: points` (the points testbed, fastgen/eval/evaluator/points.py) samples stay float points, the suite is
`PointsMetricSuite`, and the grid is a scatter plot: the branches marked "points".
Under DDP the sample indices are sharded across ranks, per-sample outputs are gathered in index order (so the
numbers equal a single process's), and only rank 0 writes files.
"""

import hashlib
import warnings

import torch

from fastgen.core import randn_per_sample
from fastgen.eval.evaluator.distributed import gather_in_index_order, is_rank_zero, max_over_ranks, shard_indices
from fastgen.eval.metrics.fingerprint import SamplingPrecision, device_name, git_commit, timestamp
from fastgen.eval.evaluator.grids import grid_indices, save_grid
from fastgen.eval.metrics.images import pixels_to_uint8
from fastgen.eval.metrics.latency import LatencyMeter
from fastgen.eval.leaderboard.io import COLUMNS, append_rows
from fastgen.eval.metrics.suite import MetricSuite
from fastgen.eval.metrics.reference import warn_resolution_mismatch
from fastgen.eval.evaluator.settings import eval_settings
from fastgen.methods.base import FewStepMethod, RowSource


def method_device(method):
    """The device a method samples on: its first parameter's (its backbone's network). Not LightningModule.device,
    which only `.to()` sets: a baseline built around a trained method's teacher is never moved itself."""
    return next(method.parameters()).device


def eval_prompts(datamodule, settings):
    """The evaluation prompts: the COCO reference's captions under eval.coco_root, else the first num_samples of
    the named prompt set, else the data module's."""
    if settings.coco_root:
        from fastgen.data.coco import coco_prompts

        return coco_prompts(settings)
    if settings.prompts is None:
        return list(datamodule.eval_prompts(settings.num_samples, seed=settings.seed))
    from fastgen.data.prompts import load_prompt_set

    return load_prompt_set(settings.prompts, n=settings.num_samples)


def eval_noise(indices, shape, seed):
    """Noise [len(indices), *shape]: sample i from torch.Generator().manual_seed(seed + i) (CPU, float32)."""
    generators = [torch.Generator().manual_seed(seed + int(i)) for i in indices]
    return randn_per_sample((len(generators), *shape), generators)


def sampler_generators(indices, seed):
    """One CPU generator per sample for a stochastic sampler's per-step draws, sample i's seeded by a 63-bit hash of
    (seed, i): a stream apart from every sample's initial noise (seeds seed + j)."""
    def sampler_seed(i):
        return int.from_bytes(hashlib.sha256(f"fastgen-sampler/{seed}/{i}".encode()).digest()[:8], "little") >> 1

    return [torch.Generator().manual_seed(sampler_seed(int(i))) for i in indices]


def sample_and_decode(method, prompts, batch, steps, seed):
    """Decoded images (model output range) of the samples with indices `batch`, each from its own noise and
    sampler generator; `prompts` is indexed by sample index."""
    noise = eval_noise(batch, tuple(method.backbone.sample_shape), seed).to(method_device(method))
    x0 = method.sample(noise, [prompts[i] for i in batch.tolist()], steps, generator=sampler_generators(batch, seed))
    return method.backbone.decode(x0)


def row_sources(method, steps):
    """A FewStepMethod's `row_sources(steps)`; any other sampler (the DPM-Solver++ baseline) has its own rows only."""
    return method.row_sources(steps) if isinstance(method, FewStepMethod) else [RowSource(("",))]


def prompt_order_key(suite):
    """Grid row order: by digit when prompt accuracy is on (MNIST prompts), else first appearance."""
    if suite.digits is None:
        return None
    from fastgen.data.mnist import label_from_prompt

    return label_from_prompt


@torch.no_grad()
def generate(method, prompts, indices, steps, settings, meter):
    """uint8 images [len(indices), C, H, W] (CPU) for the given sample indices, timing each batch with `meter`.

    A network sharded by FSDP samples collectively, so every rank makes as many sampling calls as the busiest
    one: a rank with fewer batches first samples one extra noise (result dropped), as the meter's warm-up."""
    def run(batch):
        return sample_and_decode(method, prompts, batch, steps, settings.seed)

    batches = list(indices.split(settings.batch_size))
    extra = max_over_ranks(len(batches)) - len(batches)
    calls = [torch.zeros(1, dtype=torch.long)] * extra + batches  # an extra call samples index 0, dropped below
    stored = (lambda x: x.float()) if settings.metrics == "points" else pixels_to_uint8  # points: floats as sampled
    images = [stored(meter.time(lambda b=batch: run(b), len(batch))).cpu() for batch in calls]
    if settings.latency.enabled and calls and not meter.measured:  # one batch was all warm-up: time it again
        meter.time(lambda: run(calls[-1]), len(calls[-1]))
    images = images[extra:]
    return torch.cat(images) if images else torch.empty(0, dtype=torch.uint8)


def score_sharded(suite, images, indices, prompts, batch_size, names=None):
    """Score this rank's images, gather every rank's per-sample outputs in index order, and summarise them."""
    names = suite.available if names is None else names
    local = {name: [] for name in names}
    for start in range(0, len(images), batch_size):
        batch_prompts = [prompts[i] for i in indices[start:start + batch_size].tolist()]
        for name, value in suite.score(images[start:start + batch_size], batch_prompts, names).items():
            local[name].append(value)
    gathered = {name: gather_in_index_order(indices, torch.cat(values) if values else torch.empty(0))
                for name, values in local.items()}
    return suite.summarise(gathered)


def gather_grid(images, indices, prompts, order_key):
    """(grid images in grid order, images per row), gathered from every rank."""
    chosen, per_row = grid_indices(prompts, order_key=order_key)
    position = {index: k for k, index in enumerate(chosen)}
    mine = [j for j, i in enumerate(indices.tolist()) if i in position]
    order = torch.tensor([position[indices[j].item()] for j in mine], dtype=torch.long)
    return gather_in_index_order(order, images[mine]), per_row


def base_row(settings, prompts, suite, **fields):
    """A row with every COLUMN, the fingerprint filled in (protocol: fingerprint.PROTOCOL_COLUMNS), metrics empty;
    `fields` (method, steps, guidance, the precision sampling ran in, ...) complete it."""
    from fastgen.data.prompts import prompts_sha256

    row = dict.fromkeys(COLUMNS)
    row.update(num_samples=settings.num_samples, prompts_sha256=prompts_sha256(prompts), seed=settings.seed,
               git_commit=git_commit(), timestamp=timestamp(), **suite.fingerprint())
    row.update(fields)
    return row


def run_eval(method, datamodule, cfg=None, *, out_dir=None, experiment="", run_id="", checkpoint="",
             train_seed=None, grid_tag="", suite=None, label=None):
    """Evaluate `method` at every supported step count in `cfg.steps`; returns one row per step count and row
    source (`method.row_sources`: e.g. TSCD's N-step row from its k = N stage and its final model's row
    `tscd@final`; rows of one source share their samples, its note is appended to `checkpoint`).

    `cfg` is the `eval` config node (or a dict, or None for defaults). Rows are appended to `cfg.leaderboard`
    and grids written to `<out_dir>/samples/` by rank 0. `suite` reuses already-loaded metrics. `label` names
    the rows' method (default: `method.name`), e.g. `ufogen@init` for an untrained method as a control.
    """
    label = label or method.name
    settings = eval_settings(cfg)
    prompts = eval_prompts(datamodule, settings)
    device = method_device(method)
    suite = suite or MetricSuite.load(settings, datamodule, device)
    indices = shard_indices(settings.num_samples)
    was_training = method.training
    method.eval()
    rows = []
    try:
        for steps in settings.steps:
            if method.supported_steps is not None and steps not in method.supported_steps:
                continue
            for source in row_sources(method, steps):
                meter = LatencyMeter(device, warmup=settings.latency.warmup, module=method)
                with source.weights(), SamplingPrecision(method) as precision:  # precision: read off the modules that ran
                    images = generate(method, prompts, indices, steps, settings, meter)
                if settings.metrics != "points":  # points: no resolution
                    warn_resolution_mismatch(suite.reference, images)
                first = f"{label}{source.suffixes[0]}"
                row = base_row(
                    settings, prompts, suite, run_id=run_id or f"{label}-{timestamp()}", experiment=experiment,
                    method=first, backbone=getattr(method.backbone, "name", type(method.backbone).__name__),
                    dataset=getattr(datamodule, "name", type(datamodule).__name__),
                    checkpoint=f"{checkpoint} [{source.note}]".lstrip() if source.note else checkpoint, steps=steps,
                    train_seed=train_seed,
                    nfe=method.nfe(steps), guidance=float(method.guidance_scale),
                    precision=precision.name, device=device_name(device),
                )
                row.update(score_sharded(suite, images, indices, prompts, settings.batch_size))
                if settings.latency.enabled:
                    row.update(meter.results())
                name = f"{first}-{steps}step{'-' + grid_tag if grid_tag else ''}.png"
                if settings.grids and settings.metrics == "points":  # points: one scatter plot of every sample
                    points = gather_in_index_order(indices, images)
                    if out_dir is not None and is_rank_zero():
                        path = f"{out_dir}/samples/{name}"
                        row["grid"] = str(suite.save_scatter(points, prompts, path, f"{first}, {steps} steps"))
                elif settings.grids:
                    grid, per_row = gather_grid(images, indices, prompts, prompt_order_key(suite))
                    if out_dir is not None and is_rank_zero():
                        row["grid"] = str(save_grid(grid, f"{out_dir}/samples/{name}", per_row))
                rows += [{**row, "method": f"{label}{suffix}"} for suffix in source.suffixes]  # same samples
    finally:
        method.train(was_training)
    if settings.leaderboard and rows and is_rank_zero():
        append_rows(settings.leaderboard, rows)
    return rows


def _image_floor_metrics(datamodule, settings, suite):
    """(metrics, n): FID/KID and aesthetic score of the first n = num_samples training images (all of them if
    there are fewer, with a warning); the digit classifier's accuracy on the first num_samples held-out images."""
    n = settings.num_samples
    available = datamodule.split_size("train") if hasattr(datamodule, "split_size") else n
    if available < n:
        warnings.warn(f"the real_data floor uses all {available} training images (eval.num_samples={n}): its FID is "
                      f"biased higher than that of rows at n={n}", stacklevel=3)
        n = available
    images = datamodule.reference_images(split="train", n=n)
    indices = shard_indices(n)
    image_only = [name for name in suite.available if name in ("inception", "aesthetic")]
    metrics = score_sharded(suite, images[indices], indices, [""] * len(images), settings.batch_size, image_only)
    if suite.digits is not None:
        from fastgen.eval.models.digit_classifier import predict

        pixels, labels = datamodule.train_labelled("heldout")
        pixels, labels = pixels[:settings.num_samples], labels[:settings.num_samples]
        metrics["prompt_accuracy"] = float((predict(suite.digits.model, pixels) == labels).float().mean())
    return metrics, n


def real_data_row(datamodule, cfg=None, *, experiment="", run_id="real_data", suite=None):
    """The data floor: the first num_samples *training* images scored against the evaluation's reference.

    FID/KID here are what a generator reproducing its training data exactly would get at this sample count: not
    0 (FID is biased at small N) and, against the COCO reference (`eval.coco_root`), also the gap between the
    training data and COCO val -- the training data, not COCO train2017, is what a fine-tuned model can match.
    With fewer training images than num_samples all are used and `num_samples` says how many (one warning).
    `prompt_accuracy` is the digit classifier's accuracy on the first num_samples held-out images -- the
    ceiling of that metric. CLIP and aesthetic scores need captions / are image-only: the aesthetic score of
    the training images is reported, CLIP score is left empty. A data module without images (a latent cache)
    has no floor: None, with a warning. With `eval.metrics: points` the floor is, per prompt, as many training
    points as the evaluation samples, scored exactly as samples are (fastgen/eval/evaluator/points.py).
    """
    settings = eval_settings(cfg)
    if settings.metrics != "points" and not hasattr(datamodule, "reference_images"):
        warnings.warn(f"no real_data floor row: {type(datamodule).__name__} holds no images", stacklevel=2)
        return None
    suite = suite or MetricSuite.load(settings, datamodule)
    if settings.metrics == "points":  # points: training points scored as samples of the evaluation's prompts
        metrics, n = suite.real_data_metrics(eval_prompts(datamodule, settings)), settings.num_samples
    else:
        metrics, n = _image_floor_metrics(datamodule, settings, suite)
    row = base_row(settings, eval_prompts(datamodule, settings), suite, run_id=run_id, experiment=experiment,
                   method="real_data", backbone="", dataset=getattr(datamodule, "name", ""), checkpoint="",
                   steps=None, nfe=0, guidance=0.0, precision="", device="", num_samples=n)
    row.update(metrics)
    if settings.leaderboard and is_rank_zero():
        append_rows(settings.leaderboard, [row])
    return row
