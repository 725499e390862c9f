"""`python -m fastgen.bench suite=mnist [bench.seeds=[0,1,2]] [bench.jobs=2]`: a whole leaderboard in one command.

A suite (`fastgen/configs/suite/NAME.yaml`) names a teacher experiment, a baseline experiment and the method
experiments. The bench plans one *cell* per run and executes each as its own subprocess:

1. the teacher (`python -m fastgen.fit experiment=<teacher>`), only when no trained or committed teacher is
   found (`suite.teacher_ready`) or `bench.retrain_teacher=true`; every other cell waits for it;
2. the baseline (`python -m fastgen.evaluate experiment=<baseline>`): DPM-Solver++ rows and the data floor;
3. every method experiment once per training seed, as run `bench_<suite>/<experiment>-seed<S>`, with its
   end-of-training evaluation appending rows to `suite.leaderboard` (its own rows only: the baseline's are the
   baseline cell's).
4. the controls (`suite.controls`): a method experiment evaluated untrained (`python -m fastgen.evaluate
   experiment=<experiment> label=<method>@init`): the teacher sampled the method's way, the row that shows
   what training adds;
5. the latency pass (`bench.latency`), after every cell and alone: the cells, which may share the machine, run
   with `eval.latency.enabled=false`; then this process re-measures the latency columns of every row of the
   suite's experiments one sampling path at a time (`fastgen/eval/evaluator/latency_pass.py`: median of
   `bench.latency.repeats` batches at `eval.batch_size`, with device, threads and batch in the row).
   It runs again whenever a cell ran; `bench.latency.only=true` runs it alone on the current leaderboard.

A suite with `variants` (name -> overrides, e.g. the points suite's two data shapes) runs every cell once per
variant with its overrides, named `<cell>-<variant>`; `leaderboard`, `teacher_ready` and `readme` may then be
mappings by variant (each variant its own leaderboard), and a variant's teacher runs as `<teacher>_<variant>`.

Finished cells are recorded in `runs/bench_<suite>/state.json` (written atomically) and skipped when the
bench is started again; an interrupted training cell resumes from its last checkpoint (`ckpt_path=last`).
A cell that runs again replaces its earlier leaderboard rows; to redo one, delete its entry in the state file
and its run folder (left in place, the run resumes from its last checkpoint).
Each cell's output goes to `runs/bench_<suite>/logs/<cell>.log`; the bench prints one line per event and a
status line every `STATUS_EVERY_S`. At the end the leaderboard's Markdown tables and plots are written, and
the suite's README block (`suite.readme`) is rewritten from the CSV (`python -m fastgen.leaderboard`). Up to `bench.jobs` cells run at once, each with `bench.threads` OpenMP
threads (default: cores // jobs) -- on a small CPU machine two single-threaded jobs beat one two-threaded one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
from filelock import FileLock
from omegaconf import DictConfig

from fastgen.core.files import write_text_atomic
from fastgen.runtime.config import CONFIG_PATH, register_resolvers
from fastgen.eval.leaderboard.io import drop_rows
from fastgen.eval.leaderboard.table import CONTROL

register_resolvers()
STATUS_EVERY_S = 300
POLL_S = 2.0


@dataclass
class Cell:
    name: str          # unique within the suite; also the log file's name
    command: list[str]
    kind: str          # teacher | baseline | method | control
    replaces: Callable[[dict], bool] | None = None  # leaderboard rows of an earlier run of this cell
    leaderboard: str | None = None  # the CSV its rows go to (and `replaces` applies to); None: run_cells' own


def per_variant(value, variant: str):
    """A suite value given once, or per variant as a mapping {variant: value}."""
    return value[variant] if isinstance(value, (dict, DictConfig)) else value


def plan(cfg: DictConfig) -> list[Cell]:
    """The suite's cells in execution order: teachers that have to be trained, baselines, methods (by seed), controls."""
    suite, bench = cfg.suite, cfg.bench
    python = [sys.executable, "-m"]
    no_latency = ["eval.latency.enabled=false"] if bench.latency.enabled else []  # the latency pass measures it
    teachers, baselines, methods, controls = [], [], [], []
    variants = suite.get("variants") or {"": []}
    for variant, variant_overrides in variants.items():
        tag = f"-{variant}" if variant else ""
        overrides = [*variant_overrides, *bench.overrides]
        board = per_variant(suite.leaderboard, variant)
        teacher_ready = per_variant(suite.get("teacher_ready"), variant)
        if suite.get("teacher") and (bench.retrain_teacher or not Path(teacher_ready).is_file()):
            run_name = [f"run_name={suite.teacher}_{variant}"] if variant else []
            teachers.append(Cell(f"{suite.teacher}{tag}", [*python, "fastgen.fit", f"experiment={suite.teacher}",
                                                           "ckpt_path=last", *run_name, *overrides], "teacher"))
        if suite.get("baseline"):
            baselines.append(Cell(f"{suite.baseline}{tag}", [*python, "fastgen.evaluate", f"experiment={suite.baseline}",
                                                             f"eval.leaderboard={board}", *variant_overrides, *no_latency],
                                  "baseline",
                                  replaces=lambda row, baseline=suite.baseline: row["experiment"] == baseline,
                                  leaderboard=board))
        # with a baseline cell, the method runs leave the baseline rows to it (no copies of them per method)
        no_baseline = ["eval.baseline_steps=[]"] if suite.get("baseline") else []
        for seed in bench.seeds:
            for experiment in suite.methods:
                name = f"{experiment}{tag}-seed{seed}"
                run_name = f"bench_{suite.name}/{name}"
                methods.append((seed, Cell(name, [*python, "fastgen.fit", f"experiment={experiment}", f"seed={seed}",
                                                  f"run_name={run_name}", "ckpt_path=last", f"eval.leaderboard={board}",
                                                  *no_baseline, *no_latency, *overrides], "method",
                                           replaces=lambda row, prefix=f"{run_name}-": row["run_id"].startswith(prefix),
                                           leaderboard=board)))
        for experiment in suite.get("controls") or []:
            label = experiment.removesuffix(f"_{suite.name}") + CONTROL
            controls.append(Cell(f"{experiment}{tag}-init", [*python, "fastgen.evaluate", f"experiment={experiment}",
                                                             f"label={label}", "real_data=false",
                                                             f"eval.leaderboard={board}", *no_latency, *overrides],
                                 "control",
                                 replaces=lambda row, label=label: row["method"] == label, leaderboard=board))
    methods = [cell for _, cell in sorted(methods, key=lambda pair: list(bench.seeds).index(pair[0]))]  # seed-major
    return teachers + baselines + methods + controls


class State:
    """Finished cells of one suite: {cell name: {"seconds": ..., "finished": ...}} in a JSON file.

    Each finish re-reads the file under a lock before writing, so two benches running different cells of one
    suite (e.g. other `suite.methods`) keep each other's entries."""

    def __init__(self, path: Path):
        self.path = path
        self.done = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def finish(self, cell: Cell, seconds: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.path}.lock"):
            self.done = {**self._read(), **self.done}
            self.done[cell.name] = {"seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_text_atomic(self.path, json.dumps(self.done, indent=1))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_cells(cells: list[Cell], state: State, log_dir: Path, jobs: int = 1, threads: int | None = None,
              leaderboard: Path | None = None) -> list[Cell]:
    """Run the cells not yet in `state`, up to `jobs` at once (the teacher alone, before the rest).

    A cell that runs again (its state lost, or deleted to redo it) first removes the rows its earlier run left
    in `leaderboard`, so the leaderboard holds one run per cell. Returns the cells that failed (their logs say
    why); the others are recorded in `state` as they finish.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending = [c for c in cells if c.name not in state.done]
    for cell in cells:
        if cell.name in state.done:
            print(f"[bench] skip {cell.name} (finished {state.done[cell.name]['finished']})", flush=True)
    running: dict[subprocess.Popen, tuple[Cell, float]] = {}
    failed: list[Cell] = []
    start = last_status = time.monotonic()
    total = len(pending)
    try:
        while pending or running:
            teacher_running = any(c.kind == "teacher" for c, _ in running.values())
            while pending and len(running) < jobs and not teacher_running:  # the teacher (first) runs alone
                cell = pending.pop(0)
                board = cell.leaderboard or leaderboard
                if cell.replaces and board and (dropped := drop_rows(board, cell.replaces)):
                    print(f"[bench] {cell.name} runs again: its {dropped} earlier rows leave {board}", flush=True)
                log = open(log_dir / f"{cell.name}.log", "ab")
                proc = subprocess.Popen(cell.command, stdout=log, stderr=subprocess.STDOUT, env=env)
                log.close()
                running[proc] = (cell, time.monotonic())
                print(f"[bench] start {cell.name}: {' '.join(cell.command[2:])}  (log: {log_dir / cell.name}.log)",
                      flush=True)
                teacher_running = cell.kind == "teacher"
            time.sleep(POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                cell, began = running.pop(proc)
                seconds = time.monotonic() - began
                if proc.returncode == 0:
                    state.finish(cell, seconds)
                    verdict = "done"
                else:
                    failed.append(cell)
                    if cell.kind == "teacher":
                        pending.clear()  # nothing else can run without it
                    verdict = f"FAILED (exit {proc.returncode}; see {log_dir / cell.name}.log)"
                finished = total - len(pending) - len(running)
                print(f"[bench] {verdict} {cell.name} in {_clock(seconds)} · {finished}/{total} cells · "
                      f"elapsed {_clock(time.monotonic() - start)}", flush=True)
            if running and time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                now = ", ".join(f"{c.name} ({_clock(last_status - t)})" for c, t in running.values())
                print(f"[bench] elapsed {_clock(last_status - start)} · running {now} · {len(pending)} waiting",
                      flush=True)
    except KeyboardInterrupt:
        for proc in running:
            proc.terminate()
        print("[bench] interrupted: finished cells are kept; run the same command again to resume", flush=True)
        raise
    return failed


def _default_threads(jobs: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def suite_experiments(suite) -> list[str]:
    """The experiments whose rows the suite writes (baseline, methods, controls)."""
    return list(dict.fromkeys([*([suite.baseline] if suite.get("baseline") else []), *suite.methods,
                               *(suite.get("controls") or [])]))


def latency_pass(cfg: DictConfig, state: State, boards: dict[str, str]) -> None:
    """Re-measure the latency of the suite's rows in this process, alone (fastgen/eval/evaluator/latency_pass.py), each
    variant's leaderboard with that variant's overrides."""
    from fastgen.eval.evaluator.latency_pass import measure_leaderboard

    latency = cfg.bench.latency
    threads = latency.threads or len(os.sched_getaffinity(0))
    start = time.monotonic()
    rows = 0
    for variant, board in boards.items():
        if not Path(board).is_file():
            continue
        print(f"[bench] latency pass over {board}: one sampling path at a time, {threads} threads, "
              f"median of {latency.repeats}", flush=True)
        variant_overrides = list((cfg.suite.get("variants") or {}).get(variant) or [])
        rows += measure_leaderboard(board, suite_experiments(cfg.suite), [*variant_overrides, *cfg.bench.overrides],
                                    repeats=latency.repeats, warmup=latency.warmup, threads=threads,
                                    device=latency.device)
    state.finish(Cell("latency", [], "latency"), time.monotonic() - start)
    print(f"[bench] latency of {rows} rows re-measured in {_clock(time.monotonic() - start)}", flush=True)


def run_suite(cfg: DictConfig) -> int:
    """Plan and run the suite and its latency pass, then write the leaderboard table and plots; the exit status."""
    latency = cfg.bench.latency
    cells = [] if latency.only else plan(cfg)
    bench_dir = Path(cfg.paths.runs_dir) / f"bench_{cfg.suite.name}"
    jobs = max(1, int(cfg.bench.jobs))
    threads = cfg.bench.threads or _default_threads(jobs)
    variants = list(cfg.suite.get("variants") or [""])
    boards = {variant: per_variant(cfg.suite.leaderboard, variant) for variant in variants}
    print(f"[bench] suite {cfg.suite.name}: {len(cells)} cells, {jobs} at a time, {threads} threads each; "
          f"leaderboard {', '.join(dict.fromkeys(boards.values()))}", flush=True)
    if cfg.bench.dry_run:
        for cell in cells:
            print(f"  {cell.kind:8s} {cell.name}: {' '.join(cell.command[2:])}")
        if latency.enabled:
            print("  then the latency pass over the leaderboard's rows, alone")
        return 0
    start = time.monotonic()
    state = State(bench_dir / "state.json")
    ran_cells = any(c.name not in state.done for c in cells)
    failed = run_cells(cells, state, bench_dir / "logs", jobs, threads)
    if latency.enabled and (latency.only or ran_cells or "latency" not in state.done):
        latency_pass(cfg, state, boards)
    print(f"[bench] suite {cfg.suite.name} took {_clock(time.monotonic() - start)} this time", flush=True)
    for variant, board in boards.items():
        if Path(board).is_file():
            from fastgen import leaderboard

            readme = per_variant(cfg.suite.get("readme"), variant)
            leaderboard.main([board, *(["--readme", readme] if readme else [])])
    if failed:
        print(f"[bench] {len(failed)} cells failed: {', '.join(c.name for c in failed)}", file=sys.stderr)
        return 1
    return 0


@hydra.main(config_path=CONFIG_PATH, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(run_suite(cfg))


if __name__ == "__main__":
    sys.exit(main())
