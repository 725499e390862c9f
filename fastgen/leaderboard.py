"""`python -m fastgen.leaderboard FILE.csv [--out DIR] [--readme README.md] [--select final|best:METRIC] [--wandb]
[--repair]`: the series x steps tables of a leaderboard CSV, one set per evaluation protocol.

Reads the CSV strictly (a malformed line stops it with the file, the line and how to repair it). Prints the FID
table(s), writes every filled metric's table as Markdown next to the CSV (`<stem>.md`, or in --out), and saves
PNG plots there: each metric against steps (one line per series, the DPM-Solver++ baseline dashed, the data
floor dotted), FID against NFE and against latency. Rows of different protocols are never merged (one set of
tables and plots per protocol, each with a heading naming it). Each seed contributes its final checkpoint unless
`--select best:fid` declares a selection. `--readme` also rewrites the block between
`<!-- leaderboard:<stem> start -->` and `<!-- leaderboard:<stem> end -->` in that file (FID and the other headline
tables, seeds, the FID-vs-steps and FID-vs-NFE plots), so the README shows exactly what the CSV holds.
`--wandb` logs the grouped tables, one line per series for each metric against steps and against NFE, and the
sample grids as a W&B run (`WANDB_MODE=offline` works without a key; `wandb sync` uploads later). `--repair`
moves unreadable lines to `FILE.rejected`, keeps every other row, and appends rows that a refused append kept
aside (`<stem>.unappended-*.csv`).
"""

import argparse
import os
import re
import sys
from pathlib import Path

from fastgen.core.files import write_text_atomic
from fastgen.eval.leaderboard.io import LeaderboardError, read_leaderboard, repair
from fastgen.eval.leaderboard.table import (
    FINAL, describe_selection, parse_selection, protocol_sections, protocols, summarise, summary_markdown,
)
from fastgen.eval.leaderboard.plots import plot_stem, save_plots

README_METRICS = ("fid", "prompt_accuracy", "clip_score", "aesthetic_score")


def readme_block(summary, csv_path, readme_path, plots_dir):
    """The README's leaderboard block: per protocol, seeds, FID and the other headline metrics, and the plots."""
    seeds = sorted(set(summary.loc[summary["steps"] != "real", "n_seeds"].astype(int)))
    csv_link = os.path.relpath(csv_path, Path(readme_path).parent)
    lines = [f"From `{csv_link}`: {describe_selection(summary['selection'].iloc[0])}, "
             f"{' or '.join(map(str, seeds))} training seed(s) per cell (mean ± std where more than one)."]
    lines += [""] + protocol_sections(summary, README_METRICS, heading="####",
                                      metric_line=lambda metric, better: f"**{metric}** ({better} is better)")[:-1]
    for pid, _ in protocols(summary):
        stem = plot_stem(summary, Path(csv_path).stem, pid)
        for kind, title in (("steps", "FID against steps"), ("nfe", "FID against network evaluations")):
            plot = Path(plots_dir) / f"{stem}_fid_vs_{kind}.png"
            if plot.is_file():
                lines += ["", f"![{title}]({os.path.relpath(plot, Path(readme_path).parent)})"]
    return "\n".join(lines)


def update_readme(readme_path, stem, block):
    """Replace the text between the `leaderboard:<stem>` markers in the README (which must exist)."""
    readme_path = Path(readme_path)
    start, end = f"<!-- leaderboard:{stem} start -->", f"<!-- leaderboard:{stem} end -->"
    text = readme_path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme_path} has no '{start}' ... '{end}' block to fill")
    write_text_atomic(readme_path, pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))


def _error(message):
    print(f"fastgen.leaderboard: error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastgen.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="leaderboard CSV (benchmarks/leaderboards/<benchmark>.csv)")
    parser.add_argument("--out", help="folder for the Markdown table and plots (default: next to the CSV)")
    parser.add_argument("--readme", help="a Markdown file whose leaderboard:<stem> block is rewritten")
    parser.add_argument("--select", default=FINAL,
                        help="which checkpoint of each seed: final (default) or best:<metric> (declared selection)")
    parser.add_argument("--wandb", action="store_true", help="also log the tables, charts and grids to W&B")
    parser.add_argument("--wandb-project", help="W&B project (default: $WANDB_PROJECT, else fastgen)")
    parser.add_argument("--repair", action="store_true",
                        help="move unreadable lines to FILE.rejected and append rows kept aside, then render")
    args = parser.parse_args(argv)
    csv_path = Path(args.csv)
    try:
        parse_selection(args.select)
        if args.repair:
            kept, rejected, appended = repair(csv_path)
            print(f"repaired {csv_path}: {kept} rows kept, {rejected} unreadable lines moved to "
                  f"{csv_path.name}.rejected, {appended} rows appended from refused appends")
        frame = read_leaderboard(csv_path)
    except (FileNotFoundError, LeaderboardError, ValueError) as e:
        return _error(e)
    if frame.empty:
        return _error(f"{csv_path} holds no rows")
    summary = summarise(frame, args.select)
    out_dir = Path(args.out) if args.out else csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    print("\n".join(protocol_sections(summary, ("fid",))).rstrip())
    markdown = out_dir / f"{csv_path.stem}.md"
    write_text_atomic(markdown, summary_markdown(summary, csv_path.name) + "\n")
    plots = save_plots(summary, out_dir, csv_path.stem)
    print(f"\nwrote {markdown} and {len(plots)} plots in {out_dir}")
    if args.readme:
        try:
            update_readme(args.readme, csv_path.stem, readme_block(summary, csv_path, args.readme, out_dir))
        except ValueError as e:
            return _error(e)
        print(f"updated the leaderboard:{csv_path.stem} block of {args.readme}")
    if args.wandb:
        from fastgen.eval.leaderboard.wandb_log import WandbNotReadyError, log_leaderboard

        import wandb

        try:
            run = log_leaderboard(summary, frame, csv_path, project=args.wandb_project, save_dir=out_dir)
        except WandbNotReadyError as e:
            return _error(e)
        wandb.teardown()  # the W&B service writes the run's files out before this returns (else only at exit)
        print(f"logged to W&B: {run.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
