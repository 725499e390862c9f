"""`python -m fastgen.bench`: the suite's plan, and the cell runner's ordering, skipping and failure handling."""

import sys

from hydra import compose, initialize_config_dir

from fastgen.bench import Cell, State, plan, run_cells
from fastgen.runtime.config import CONFIG_PATH, register_resolvers


def _bench_cfg(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("bench", overrides=overrides)


def test_plan_trains_a_missing_teacher_first_and_every_method_per_seed(tmp_path):
    cfg = _bench_cfg([f"paths.runs_dir={tmp_path}", f"suite.teacher_ready={tmp_path}/none/config.json",
                      "bench.seeds=[0,3]", "bench.overrides=['trainer.accelerator=cpu']"])
    cells = plan(cfg)
    assert [c.kind for c in cells[:2]] == ["teacher", "baseline"]
    methods = [c for c in cells if c.kind == "method"]
    assert len(methods) == 2 * len(cfg.suite.methods) == 14
    ufogen_seed3 = next(c for c in methods if c.name == "ufogen_mnist-seed3")
    assert {"experiment=ufogen_mnist", "seed=3", "run_name=bench_mnist/ufogen_mnist-seed3", "ckpt_path=last",
            "eval.leaderboard=benchmarks/leaderboards/mnist.csv", "eval.baseline_steps=[]",
            "trainer.accelerator=cpu"} <= set(ufogen_seed3.command)
    # the controls: each evaluated untrained, after the training cells, rows under <method>@init
    controls = [c for c in cells if c.kind == "control"]
    assert [c.name for c in controls] == [
        "ufogen_mnist-init", "ddgan_mnist-init", "lcm_mnist-init", "tscd_mnist-init", "dmd_mnist-init"]
    assert cells[-5:] == controls
    assert {"fastgen.evaluate", "experiment=ufogen_mnist", "label=ufogen@init", "real_data=false",
            "eval.leaderboard=benchmarks/leaderboards/mnist.csv"} <= set(controls[0].command)
    assert controls[0].replaces({"method": "ufogen@init"}) and not controls[0].replaces({"method": "ufogen"})
    # the committed teacher counts as found: no teacher cell
    assert [c.kind for c in plan(_bench_cfg([f"paths.runs_dir={tmp_path}"]))][0] == "baseline"


def _cell(name, kind, code):
    return Cell(name, [sys.executable, "-c", code], kind)


def test_runner_waits_for_the_teacher_skips_finished_cells_and_reports_failures(tmp_path):
    marker, calls = tmp_path / "teacher.done", tmp_path / "calls.txt"
    record = f"open({str(calls)!r}, 'a').write('{{}}\\n')"
    cells = [
        _cell("teacher", "teacher", f"import time; time.sleep(1); open({str(marker)!r}, 'w'); " + record.format("t")),
        *[_cell(f"m{i}", "method", f"import os, sys; {record.format(i)}; "
                                    f"sys.exit(0 if os.path.exists({str(marker)!r}) else 3)") for i in range(3)],
        _cell("broken", "method", "raise SystemExit('no such experiment')"),
    ]
    state = State(tmp_path / "state.json")
    failed = run_cells(cells, state, tmp_path / "logs", jobs=2)
    assert [c.name for c in failed] == ["broken"]
    assert sorted(State(tmp_path / "state.json").done) == ["m0", "m1", "m2", "teacher"]  # persisted
    assert "no such experiment" in (tmp_path / "logs" / "broken.log").read_text()
    # run again: only the failed cell runs
    failed = run_cells(cells, State(tmp_path / "state.json"), tmp_path / "logs", jobs=2)
    assert [c.name for c in failed] == ["broken"]
    assert sorted(calls.read_text().split()) == ["0", "1", "2", "t"]


def test_a_cell_that_runs_again_replaces_its_earlier_rows_and_only_those(tmp_path):
    from fastgen.eval.leaderboard.io import append_rows, read_leaderboard

    cfg = _bench_cfg([f"paths.runs_dir={tmp_path}", "bench.seeds=[0,1]"])
    cells = {c.name: c for c in plan(cfg)}
    board = tmp_path / "board.csv"
    append_rows(board, [
        {"run_id": "bench_mnist/ufogen_mnist-seed0-2026-11-22T07:16:28", "experiment": "ufogen_mnist", "fid": 1,
         "method": "ufogen", "steps": 1},
        {"run_id": "bench_mnist/ufogen_mnist-seed1-2026-11-22T07:16:28", "experiment": "ufogen_mnist", "fid": 2,
         "method": "ufogen", "steps": 1},
        {"run_id": "dpm_solver-0f5846b31c64", "experiment": "dpm_solver_mnist", "fid": 3, "method": "dpm_solver",
         "steps": 1},
    ])
    rerun = [Cell("ufogen_mnist-seed0", [sys.executable, "-c", "pass"], "method", cells["ufogen_mnist-seed0"].replaces)]
    assert run_cells(rerun, State(tmp_path / "state.json"), tmp_path / "logs", leaderboard=board) == []
    assert read_leaderboard(board)["fid"].tolist() == [2, 3]
    baseline = cells["dpm_solver_mnist"]
    assert baseline.replaces({"experiment": "dpm_solver_mnist", "run_id": "real_data"})
    assert not baseline.replaces({"experiment": "ufogen_mnist", "run_id": "dpm_solver-0f5846b31c64"})


def test_two_benches_on_one_suite_keep_each_others_finished_cells(tmp_path):
    first, second = State(tmp_path / "state.json"), State(tmp_path / "state.json")
    first.finish(Cell("a", [], "method"), 1.0)
    second.finish(Cell("b", [], "method"), 2.0)
    assert sorted(State(tmp_path / "state.json").done) == ["a", "b"]


def test_a_suite_with_variants_runs_every_cell_per_variant_into_its_own_leaderboard(tmp_path):
    cfg = _bench_cfg(["suite=points", f"paths.runs_dir={tmp_path}", "bench.seeds=[0,1]",
                      "bench.overrides=['trainer.accelerator=cpu']"])
    cells = plan(cfg)
    assert [c.kind for c in cells[:2]] == ["baseline", "baseline"]  # the committed teachers count as found
    methods = [c for c in cells if c.kind == "method"]
    assert len(methods) == 2 * 2 * len(cfg.suite.methods)
    n = len(cfg.suite.methods)
    assert [c.name for c in methods[:n + 1]] == [f"{m}-grid-seed0" for m in cfg.suite.methods] + ["ufogen_points-patterns-seed0"]
    cell = next(c for c in methods if c.name == "ddgan_points-patterns-seed1")
    assert {"experiment=ddgan_points", "seed=1", "data.shape=patterns", "trainer.accelerator=cpu",
            "run_name=bench_points/ddgan_points-patterns-seed1",
            "eval.leaderboard=benchmarks/leaderboards/points_patterns.csv"} <= set(cell.command)
    assert cell.leaderboard == "benchmarks/leaderboards/points_patterns.csv"
    baseline = next(c for c in cells if c.name == "dpm_solver_points-grid")
    assert {"data.shape=grid", "eval.leaderboard=benchmarks/leaderboards/points_grid.csv"} <= set(baseline.command)
    controls = [c.name for c in cells if c.kind == "control"]
    assert controls[0] == "ufogen_points-grid-init" and len(controls) == 2 * len(cfg.suite.controls)
    # a shape without a teacher trains one first, under its own run name
    missing = _bench_cfg(["suite=points", f"paths.runs_dir={tmp_path}", f"suite.teacher_ready.patterns={tmp_path}/none"])
    teacher = plan(missing)[0]
    assert teacher.kind == "teacher" and teacher.name == "teacher_points-patterns"
    assert {"experiment=teacher_points", "data.shape=patterns", "run_name=teacher_points_patterns"} <= set(teacher.command)


def test_cells_drop_their_earlier_rows_from_their_own_leaderboard(tmp_path):
    from fastgen.eval.leaderboard.io import append_rows, read_leaderboard

    grid, patterns = tmp_path / "grid.csv", tmp_path / "patterns.csv"
    for board in (grid, patterns):
        append_rows(board, [{"run_id": "bench_points/x-seed0-1", "experiment": "x", "method": "x", "steps": 1, "fid": 1}])
    cell = Cell("x", [sys.executable, "-c", "pass"], "method", lambda row: row["experiment"] == "x", str(grid))
    assert run_cells([cell], State(tmp_path / "state.json"), tmp_path / "logs", leaderboard=patterns) == []
    assert read_leaderboard(grid).empty and len(read_leaderboard(patterns)) == 1


def test_cells_leave_latency_to_the_quiet_pass_that_runs_after_them(tmp_path, monkeypatch):
    import fastgen.eval.evaluator.latency_pass
    from fastgen.bench import run_suite
    from fastgen.eval.leaderboard.io import append_rows

    cfg = _bench_cfg([f"paths.runs_dir={tmp_path}"])
    assert all("eval.latency.enabled=false" in c.command for c in plan(cfg) if c.kind != "teacher")
    off = _bench_cfg([f"paths.runs_dir={tmp_path}", "bench.latency.enabled=false"])
    assert not any("eval.latency.enabled=false" in c.command for c in plan(off))

    calls = []
    monkeypatch.setattr(fastgen.eval.evaluator.latency_pass, "measure_leaderboard",
                        lambda board, experiments, overrides, **kw: calls.append((experiments, kw)) or 0)
    board = tmp_path / "board.csv"
    append_rows(board, [{"run_id": "a", "experiment": "ufogen_mnist", "method": "ufogen", "steps": 1, "nfe": 1,
                         "guidance": 0.0, "num_samples": 10, "fid": 1.0}])
    only = [f"paths.runs_dir={tmp_path}", f"suite.leaderboard={board}", "suite.readme=null", "bench.latency.only=true",
            "bench.latency.threads=1"]
    assert run_suite(_bench_cfg(only)) == 0
    assert calls[0][0] == ["dpm_solver_mnist", "ufogen_mnist", "ddgan_mnist", "siddm_mnist", "lcm_mnist",
                           "lcm_lora_mnist", "tscd_mnist", "dmd_mnist"]
    assert calls[0][1]["threads"] == 1 and calls[0][1]["repeats"] == 5
    # every cell finished and the pass done: nothing runs again; a cell that runs again brings the pass back
    cells = {c.name: c for c in plan(cfg)}
    state = State(tmp_path / "bench_mnist" / "state.json")
    for cell in cells.values():
        state.finish(cell, 1.0)
    idle = [f"paths.runs_dir={tmp_path}", f"suite.leaderboard={board}", "suite.readme=null"]
    assert run_suite(_bench_cfg(idle)) == 0 and len(calls) == 1
    monkeypatch.setattr("fastgen.bench.plan", lambda cfg: [Cell("redo", [sys.executable, "-c", "pass"], "method")])
    assert run_suite(_bench_cfg(idle)) == 0 and len(calls) == 2
