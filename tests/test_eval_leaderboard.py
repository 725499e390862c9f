"""Leaderboard tables: one per protocol (rows of different protocols never merge), each seed's final checkpoint
unless a selection is declared, series kept apart by experiment/guidance/precision, one precision vocabulary,
a colour and marker per series; the CLI's table, Markdown, plots and README block."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from fastgen.eval.metrics.fingerprint import SamplingPrecision, normalise_precision
from fastgen.eval.leaderboard.io import append_rows, read_leaderboard
from fastgen.eval.leaderboard.table import metric_table, summarise, summary_markdown
from fastgen.leaderboard import main

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks/leaderboards/mnist.csv"


def _row(method, steps, fid, seed=0, experiment="e", ms=None, **extra):
    return {"run_id": f"{method}-{seed}", "experiment": experiment, "method": method, "steps": steps, "nfe": steps,
            "fid": fid, "seed": 0, "train_seed": seed, "num_samples": 500, "ms_per_image": ms, "dataset": "mnist",
            "reference": "mnist-ref", "timestamp": f"t{seed}", "precision": "fp32", **extra}


@pytest.fixture
def board(tmp_path):
    rows = [_row("real_data", None, 18.0, nfe=0, precision="")]
    rows += [_row("dpm_solver", s, f, ms=10.0 * s, prompt_accuracy=0.5 + s / 100)
             for s, f in [(1, 350), (2, 272), (4, 175), (8, 173), (25, 154)]]
    rows += [_row("ufogen", 1, 40.0, seed=0, ms=10.0, checkpoint="kimg=20.000"),
             _row("ufogen", 1, 30.0, seed=1, ms=11.0, checkpoint="kimg=10.000"),  # seed 1's best, not its final
             _row("ufogen", 1, 44.0, seed=1, ms=11.0, checkpoint="kimg=20.000"),
             _row("ufogen", 2, 35.0, ms=20.0, checkpoint="kimg=20.000")]
    path = tmp_path / "mnist.csv"
    append_rows(path, rows)
    return path


def test_summary_uses_each_seeds_final_checkpoint_unless_a_selection_is_declared(board):
    summary = summarise(read_leaderboard(board)).set_index(["series", "steps"])
    assert summary.loc[("ufogen", 1), "fid"] == pytest.approx(42.0)  # seeds' final rows 40 and 44, not the best 30
    assert summary.loc[("ufogen", 1), "fid_std"] == pytest.approx(pd.Series([40.0, 44.0]).std())
    assert summary.loc[("ufogen", 1), "n_seeds"] == 2 and summary.loc[("ufogen", 2), "fid"] == 35.0
    assert summary.loc[("real_data", "real"), "fid"] == 18.0
    best = summarise(read_leaderboard(board), select="best:fid")
    assert best.set_index(["series", "steps"]).loc[("ufogen", 1), "fid"] == pytest.approx(35.0)
    assert "best checkpoint on fid (a declared selection" in summary_markdown(best, "mnist.csv")
    with pytest.raises(ValueError, match="best:<metric>"):
        summarise(read_leaderboard(board), select="best:nonsense")


def test_a_seed_rerun_counts_its_latest_run(board):
    append_rows(board, [_row("ufogen", 2, 60.0, checkpoint="kimg=5.000", run_id="ufogen-0-rerun", timestamp="t9")])
    summary = summarise(read_leaderboard(board)).set_index(["series", "steps"])
    assert summary.loc[("ufogen", 2), "fid"] == 60.0 and summary.loc[("ufogen", 2), "n_seeds"] == 1


def test_tables_list_the_baselines_then_the_data_floor_then_the_methods_in_a_fixed_order(board):
    append_rows(board, [_row("my_method", 4, 50.0), _row("tscd", 4, 55.0), _row("siddm", 4, 60.0),
                        _row("dpm_solver_sde", 4, 70.0), _row("ufogen", 4, 30.0)])  # a re-run: ufogen appended last
    table = metric_table(summarise(read_leaderboard(board)), "fid")
    assert list(table.index) == ["dpm_solver", "dpm_solver_sde", "real_data", "ufogen", "siddm", "tscd", "my_method"]


def test_one_method_in_two_experiments_guidances_or_precisions_is_two_series(board):
    append_rows(board, [_row("ufogen", 2, 80.0, experiment="other"),
                        _row("lcm", 4, 50.0, guidance=2.0), _row("lcm", 4, 45.0, guidance=4.5),
                        _row("tscd", 4, 60.0, precision="32-true"), _row("tscd", 4, 61.0, precision="bf16", seed=1)])
    table = metric_table(summarise(read_leaderboard(board)), "fid")
    assert table.loc["ufogen [experiment=e]", "2 steps"] == "35.00"
    assert table.loc["ufogen [experiment=other]", "2 steps"] == "80.00"
    assert table.loc["lcm [guidance=2.0]", "4 steps"] == "50.00" and table.loc["lcm [guidance=4.5]", "4 steps"] == "45.00"
    assert table.loc["tscd [precision=bf16]", "4 steps"] == "61.00"  # not averaged with the fp32 row
    assert table.loc["tscd [precision=fp32]", "4 steps"] == "60.00"  # '32-true' read as fp32


def test_a_row_of_another_protocol_never_merges_into_a_cell(tmp_path):
    """The audit's case: one UFOGen row from another dataset at n=100 turned the committed 1-step cell
    (217.97 ± 2.5 over two seeds) into '110.6 ± 149'."""
    csv_path = tmp_path / "mnist.csv"
    shutil.copy(COMMITTED, csv_path)
    before = metric_table(summarise(read_leaderboard(csv_path)), "fid").loc["ufogen", "1 step"]
    append_rows(csv_path, [_row("ufogen", 1, 4.97, seed=0, experiment="ufogen_mnist", dataset="cifar10",
                                num_samples=100, reference="cifar10-test-32px-n100.npz", timestamp="2026-12-06")])
    summary = summarise(read_leaderboard(csv_path))
    assert summary["protocol"].nunique() == 2
    mnist, other = [pid for pid in dict.fromkeys(summary["protocol"])]
    assert metric_table(summary, "fid", mnist).loc["ufogen", "1 step"] == before == "217.97 ± 2.5"
    assert metric_table(summary, "fid", other).loc["ufogen", "1 step"] == "4.97"
    with pytest.raises(ValueError, match="2 protocols"):
        metric_table(summary, "fid")
    markdown = summary_markdown(summary, "mnist.csv")
    assert "holds 2 evaluation protocols" in markdown and "dataset cifar10; 100 samples" in markdown
    out = tmp_path / "out"
    assert main([str(csv_path), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("mnist_*_fid_vs_steps.png")} == {f"mnist_{mnist}_fid_vs_steps.png",
                                                                     f"mnist_{other}_fid_vs_steps.png"}


def test_precision_is_what_sampling_ran_in_in_one_vocabulary():
    assert [normalise_precision(p) for p in ("32-true", "fp32", "bf16-mixed", "16-mixed", "bf16-true", "")] == \
        ["fp32", "fp32", "fp32", "fp32", "bf16", ""]
    with pytest.raises(ValueError, match="precision='fp8'"):
        normalise_precision("fp8")
    nets = torch.nn.ModuleDict({"generator": torch.nn.Linear(2, 2), "vae": torch.nn.Linear(2, 2).bfloat16(),
                                "teacher": torch.nn.Linear(2, 2).half()})  # the teacher never runs in sampling
    x = torch.ones(1, 2)
    with SamplingPrecision(nets) as precision:
        nets["generator"](x)
    assert precision.name == "fp32"
    with SamplingPrecision(nets) as precision:
        nets["vae"](nets["generator"](x).bfloat16())
        nets["generator"](x)
    assert precision.name == "bf16+fp32"
    with SamplingPrecision(nets) as precision, torch.autocast("cpu", dtype=torch.bfloat16):
        nets["generator"](x)
    assert precision.name == "bf16-autocast"
    assert all(not m._forward_pre_hooks for m in nets.modules())  # nothing left behind


def test_every_series_has_its_own_colour_and_marker(tmp_path):
    import matplotlib.pyplot as plt

    from fastgen.eval.leaderboard.plots import draw_metric, series_styles

    styles = series_styles([f"m{i}" for i in range(126)])
    assert len(set(styles.values())) == 126 and len({c for c, _ in list(styles.values())[:18]}) == 18
    rows = [_row(f"method{i}", s, 100.0 - i - s) for i in range(14) for s in (1, 2)]
    path = tmp_path / "b.csv"
    append_rows(path, rows)
    fig, ax = plt.subplots()
    draw_metric(ax, summarise(read_leaderboard(path)), "fid")
    handles, labels = ax.get_legend_handles_labels()  # errorbar containers; lines[0] is the data line
    lines = [h.lines[0] for h, label in zip(handles, labels) if label.startswith("method")]
    assert len(lines) == 14 and len({(str(line.get_color()), line.get_marker()) for line in lines}) == 14
    assert len({str(line.get_color()) for line in lines}) == 14
    plt.close(fig)


def test_cli_prints_table_and_writes_markdown_and_plots(board, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(board), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ufogen | 42.00 ± 2.8 | 35.00 |" in printed and "real data" in printed and "Protocol `" in printed
    markdown = (out / "mnist.md").read_text()
    assert "## fid (lower is better)" in markdown and "## prompt_accuracy (higher is better)" in markdown
    assert "each training seed's final checkpoint" in markdown
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
    from fastgen.leaderboard import readme_block

    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- leaderboard:mnist start -->\n", "\n<!-- leaderboard:mnist end -->"
    committed = text[text.index(start) + len(start):text.index(end)]
    block = readme_block(summarise(read_leaderboard(COMMITTED)), COMMITTED, readme, COMMITTED.parent)
    assert committed == block


def test_plot_line_styles_tell_baselines_controls_and_methods_apart():
    from fastgen.eval.leaderboard.plots import _linestyle

    assert [_linestyle(m) for m in ("dpm_solver", "dpm_solver_sde", "ufogen@init", "ufogen")] == ["--", "--", "-.", "-"]


def test_a_points_board_summarises_its_exact_metrics(tmp_path):
    """Points rows carry energy distance and kNN precision/recall: the summary tables them (ED lower is better)."""
    rows = [_row("real_data", None, None, nfe=0, precision="", energy_distance=0.004, knn_precision=0.97,
                 knn_recall=0.97, dataset="points_grid"),
            _row("lcm", 4, None, energy_distance=0.033, knn_precision=0.5, knn_recall=0.95, dataset="points_grid")]
    path = tmp_path / "points_grid.csv"
    append_rows(path, rows)
    markdown = summary_markdown(summarise(read_leaderboard(path)), path)
    assert "## energy_distance (lower is better)" in markdown and "## knn_recall (higher is better)" in markdown
    energy_table = markdown.split("## energy_distance")[1].split("##")[0]
    assert "| lcm | 0.033 |  |" in energy_table and "| real_data |  | 0.004 |" in energy_table
