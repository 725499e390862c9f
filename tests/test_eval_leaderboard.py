"""Leaderboard CSV: no row lost under concurrent writers; the CLI's table, Markdown and plots."""

import multiprocessing as mp

import pandas as pd
import pytest

from fastgen.eval.leaderboard_io import COLUMNS, append_rows, read_leaderboard
from fastgen.eval.leaderboard_table import metric_table, summarise
from fastgen.leaderboard import main


def _writer(path, writer, n):
    for i in range(n):
        append_rows(path, [{"run_id": f"w{writer}", "method": "m", "steps": i, "fid": writer + i / 100}])


def test_concurrent_writers_lose_no_row(tmp_path):
    path = str(tmp_path / "board.csv")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 8)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    board = read_leaderboard(path)
    assert len(board) == 32 and sorted(board.groupby("run_id").size().tolist()) == [8] * 4
    assert list(board.columns)[:len(COLUMNS)] == list(COLUMNS)
    assert not list(tmp_path.glob(".*.tmp"))


def _row(method, steps, fid, seed=0, experiment="e", ms=None, **extra):
    return {"run_id": f"{method}-{seed}", "experiment": experiment, "method": method, "steps": steps, "nfe": steps,
            "fid": fid, "seed": 0, "train_seed": seed, "num_samples": 500, "ms_per_image": ms, "timestamp": f"t{seed}", **extra}


@pytest.fixture
def board(tmp_path):
    rows = [_row("real_data", None, 18.0, nfe=0)]
    rows += [_row("dpm_solver", s, f, ms=10.0 * s, prompt_accuracy=0.5 + s / 100)
             for s, f in [(1, 350), (2, 272), (4, 175), (8, 173), (25, 154)]]
    rows += [_row("ufogen", 1, 40.0, seed=0, ms=10.0), _row("ufogen", 1, 44.0, seed=1, ms=11.0),
             _row("ufogen", 1, 90.0, seed=1, ms=11.0, checkpoint="early"),  # a worse checkpoint of seed 1
             _row("ufogen", 2, 35.0, ms=20.0), _row("ufogen", 2, 80.0, experiment="other", ms=20.0)]
    path = tmp_path / "mnist.csv"
    append_rows(path, rows)
    return path


def test_summary_takes_best_row_per_seed_and_averages_seeds(board):
    summary = summarise(read_leaderboard(board)).set_index(["method", "steps"])
    assert summary.loc[("ufogen", 1), "fid"] == pytest.approx(42.0)
    assert summary.loc[("ufogen", 1), "fid_std"] == pytest.approx(pd.Series([40.0, 44.0]).std())
    assert summary.loc[("ufogen", 1), "n_seeds"] == 2
    assert summary.loc[("ufogen", 2), "fid"] == 35.0 and summary.loc[("ufogen", 2), "experiment"] == "e"
    assert summary.loc[("real_data", "real"), "fid"] == 18.0


def test_tables_list_the_baselines_then_the_data_floor_then_the_methods_in_a_fixed_order(board):
    append_rows(board, [_row("my_method", 4, 50.0), _row("tscd", 4, 55.0), _row("siddm", 4, 60.0),
                        _row("dpm_solver_sde", 4, 70.0), _row("ufogen", 4, 30.0)])  # a re-run: ufogen appended last
    table = metric_table(summarise(read_leaderboard(board)), "fid")
    assert list(table.index) == ["dpm_solver", "dpm_solver_sde", "real_data", "ufogen", "siddm", "tscd", "my_method"]


def test_cli_prints_table_and_writes_markdown_and_plots(board, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(board), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ufogen | 42.00 ± 2.8 | 35.00 |" in printed and "real data" in printed
    markdown = (out / "mnist.md").read_text()
    assert "## fid (lower is better)" in markdown and "## prompt_accuracy (higher is better)" in markdown
    assert {p.name for p in out.glob("*.png")} >= {"mnist_fid_vs_steps.png", "mnist_fid_vs_latency.png", "mnist_fid_vs_nfe.png",
                                                   "mnist_prompt_accuracy_vs_steps.png"}


def test_cli_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_rewrites_the_readme_block_from_the_csv(board, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:mnist start -->\nstale numbers\n<!-- leaderboard:mnist end -->\nrest\n")
    assert main([str(board), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "stale numbers" not in text
    assert "| ufogen | 42.00 ± 2.8 | 35.00 |" in text and "1 or 2 training seed(s)" in text
    assert "**prompt_accuracy** (higher is better)" in text and "![FID against steps](mnist_fid_vs_steps.png)" in text
    assert "![FID against network evaluations](mnist_fid_vs_nfe.png)" in text
    assert main([str(board), "--readme", str(tmp_path / "mnist.csv")]) == 2  # a file without the markers


def test_readme_leaderboard_matches_the_committed_csv(tmp_path):
    """The README's MNIST tables are what `fastgen.leaderboard --readme` makes of the committed CSV."""
    from pathlib import Path

    from fastgen.leaderboard import readme_block

    root = Path(__file__).resolve().parents[1]
    csv_path, readme = root / "benchmarks/leaderboards/mnist.csv", root / "README.md"
    text = readme.read_text()
    start, end = "<!-- leaderboard:mnist start -->\n", "\n<!-- leaderboard:mnist end -->"
    committed = text[text.index(start) + len(start):text.index(end)]
    block = readme_block(summarise(read_leaderboard(csv_path)), csv_path, readme, csv_path.parent)
    assert committed == block


def test_plot_line_styles_tell_baselines_controls_and_methods_apart():
    from fastgen.eval.plots import _linestyle

    assert [_linestyle(m) for m in ("dpm_solver", "dpm_solver_sde", "ufogen@init", "ufogen")] == ["--", "--", "-.", "-"]
