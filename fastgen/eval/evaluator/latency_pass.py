"""The quiet latency pass: re-measure the latency columns of a leaderboard's rows in one process, one sampling
path at a time, after every training and evaluation job has finished (`python -m fastgen.bench` runs it last).

A row's sampling path is (experiment, sampler, steps): the experiment's config is composed as
`python -m fastgen.fit experiment=<experiment> <overrides>` would compose it and its method built; a
`dpm_solver` / `dpm_solver_sde` row samples the experiment's teacher with DPM-Solver++ at the row's guidance
(`DPMSolverBaseline`), a `<method>@init` control the method's `control()`, any other row the method itself
(`<method>@final` rows included). The weights are the method's initialisation, not a row's trained checkpoint:
sampling time and memory depend on the architecture, sampler, steps, guidance and batch, not on weight values. Each path runs `warmup` untimed and `repeats` timed
calls of `sample_and_decode` on the evaluation's first `eval.batch_size` prompts and noises (`LatencyMeter`:
median ms/image); every row of that path (each training seed, the control) gets the same LATENCY_COLUMNS.
A row whose NFE differs from the rebuilt sampler's is an error: the experiment changed since the row was written.
"""

from __future__ import annotations

import tempfile

import torch

from fastgen.eval.leaderboard.io import read_leaderboard, update_rows
from fastgen.eval.metrics.latency import LatencyMeter
from fastgen.eval.leaderboard.table import CONTROL


def own_label(label: str) -> str:
    """A method's row label without the suffix that names other weights or the same network's other sampler
    (`<method>@final`, TSCD's `@dmd`, `@unified`: same architecture and cost per step); a control keeps its own."""
    return label if label.endswith(CONTROL) else label.partition("@")[0]


def compose_experiment(experiment: str, overrides=(), output_dir: str = "."):
    """The config `python -m fastgen.fit experiment=<experiment> *overrides` runs (inside a Hydra app or not)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fastgen.runtime.config import CONFIG_PATH, register_resolvers

    register_resolvers()
    overrides = [f"experiment={experiment}", f"experiment_name={experiment}", f"paths.output_dir={output_dir}",
                 *overrides]
    if GlobalHydra.instance().is_initialized():  # e.g. inside `python -m fastgen.bench` (same config directory)
        return compose("config", overrides=overrides)
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=overrides)


def row_sampler(method, label: str, guidance: float):
    """The module that samples the rows of `method`'s experiment labelled `label`: a baseline's, the method's
    control (`<method>@init`: `method.control()`), or the method itself (also its `@final` rows: same architecture
    and sampler, other weights)."""
    from fastgen.eval.evaluator.baseline import teacher_baseline
    from fastgen.methods.dpm_solver import SOLVERS

    solvers = {row_name: algorithm for algorithm, row_name in SOLVERS.items()}
    if label in solvers:
        return teacher_baseline(method, guidance, solvers[label])
    if label == f"{method.name}{CONTROL}":
        return method.control()
    if own_label(label) != method.name:
        raise ValueError(f"a leaderboard row's method {label!r} is not its experiment's method {method.name!r}")
    return method


def path_label(method, label: str) -> str:
    """The sampling path a row labelled `label` is timed on: a `@final` row's is its method's (same sampler, other
    weights), and so is a control's whose `control()` is the method itself (UFOGen, DDGAN, SIDDM)."""
    label = own_label(label)
    if label == f"{method.name}{CONTROL}" and method.control() is method:
        return method.name
    return label


@torch.no_grad()
def measure_path(sampler, prompts, steps: int, seed: int, batch_size: int, device, warmup: int, repeats: int):
    """The LATENCY_COLUMNS of `sampler` at `steps` on the samples 0..batch_size-1."""
    from fastgen.eval.evaluator.run_eval import sample_and_decode

    meter = LatencyMeter(device, warmup=warmup, module=sampler)
    batch = torch.arange(batch_size)
    for _ in range(warmup + repeats):
        meter.time(lambda: sample_and_decode(sampler, prompts, batch, steps, seed), batch_size)
    return meter.results()


def measure_leaderboard(leaderboard, experiments, overrides=(), *, repeats: int = 5, warmup: int = 1,
                        threads: int | None = None, device=None, log=print) -> int:
    """Re-measure the latency of every row of `leaderboard` whose experiment is in `experiments` (the data-floor
    rows have none) and write it into those rows. Returns the number of rows updated."""

    from fastgen.runtime.build import build_from_config
    from fastgen.eval.evaluator.run_eval import eval_prompts
    from fastgen.eval.evaluator.settings import eval_settings

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(int(threads))
    frame = read_leaderboard(leaderboard)
    frame = frame[frame["experiment"].isin(list(experiments)) & (frame["method"] != "real_data")]
    results = {}  # (experiment, path label, steps, guidance) -> LATENCY_COLUMNS
    paths_of = {}  # (experiment, row's method) -> path label
    with tempfile.TemporaryDirectory() as tmp:
        for experiment, rows in frame.groupby("experiment", sort=False):
            cfg = compose_experiment(experiment, overrides, output_dir=tmp)
            settings = eval_settings(cfg.eval)
            method, datamodule = build_from_config(cfg)
            method = method.to(device).eval()
            prompts = eval_prompts(datamodule, settings)
            batch_size = min(settings.batch_size, settings.num_samples)
            rows = rows.assign(sampler=[path_label(method, label) for label in rows["method"]])
            paths_of.update({(experiment, label): sampler for label, sampler in zip(rows["method"], rows["sampler"])})
            paths = rows.drop_duplicates(["sampler", "steps", "guidance"])
            for label, steps, guidance, nfe in paths[["sampler", "steps", "guidance", "nfe"]].itertuples(index=False):
                sampler = row_sampler(method, label, float(guidance))
                steps = int(steps)
                if sampler.nfe(steps) != int(nfe):
                    raise ValueError(f"{experiment} {label} at {steps} steps: the row says NFE {int(nfe)}, the "
                                     f"experiment's sampler makes {sampler.nfe(steps)} (its config changed since)")
                key = (experiment, label, steps, float(guidance))
                results[key] = measure_path(sampler, prompts, steps, settings.seed, batch_size, device, warmup,
                                            repeats)
                log(f"[latency] {experiment} {label} {steps} steps: {results[key]['ms_per_image']:.3f} ms/image "
                    f"(batch {batch_size}, median of {repeats}, {results[key]['latency_device']}, "
                    f"{results[key]['latency_threads']} threads)")
            del method

    def update(row):
        if not row.get("steps") or not row.get("guidance"):
            return row
        label = paths_of.get((row["experiment"], row["method"]), row["method"])
        key = (row["experiment"], label, int(float(row["steps"])), float(row["guidance"]))
        return {**row, **results[key]} if key in results else row

    update_rows(leaderboard, update)
    return len(frame)
