"""`python -m fastgen.leaderboard FILE.csv [--out DIR] [--readme README.md]`: the method x steps tables of a
leaderboard CSV.

Prints the FID table, writes every filled metric's table as Markdown next to the CSV (`<stem>.md`, or in
--out), and saves PNG plots there: each metric against steps (one line per method, the DPM-Solver++ baseline
dashed, the data floor dotted) and FID against latency. `--readme` also rewrites the block between
`<!-- leaderboard:<stem> start -->` and `<!-- leaderboard:<stem> end -->` in that file (FID and prompt
accuracy tables, seeds, the FID-vs-steps and FID-vs-NFE plots), so the README shows exactly what the CSV holds.
"""

import argparse
import os
import re
import sys
from pathlib import Path

from fastgen.atomic_write import write_text_atomic
from fastgen.eval.leaderboard_io import read_leaderboard
from fastgen.eval.leaderboard_table import LOWER_IS_BETTER, metric_table, summarise, summary_markdown, to_markdown
from fastgen.eval.plots import save_plots


README_METRICS = ("fid", "prompt_accuracy", "clip_score", "aesthetic_score")


def readme_block(summary, csv_path, readme_path, plots_dir):
    """The README's leaderboard block: seeds, FID and the other headline metrics, and the FID-vs-steps plot."""
    seeds = sorted(set(summary.loc[summary["steps"] != "real", "n_seeds"].astype(int)))
    csv_link = os.path.relpath(csv_path, Path(readme_path).parent)
    lines = [f"From `{csv_link}`: best row per method and step count, {int(summary['num_samples'].max())} samples, "
             f"{' or '.join(map(str, seeds))} training seed(s) per cell (mean ± std where more than one)."]
    for metric in README_METRICS:
        table = metric_table(summary, metric)
        if table is not None:
            better = "lower" if metric in LOWER_IS_BETTER else "higher"
            lines += ["", f"**{metric}** ({better} is better)", "", to_markdown(table)]
    for kind, title in (("steps", "FID against steps"), ("nfe", "FID against network evaluations")):
        plot = Path(plots_dir) / f"{Path(csv_path).stem}_fid_vs_{kind}.png"
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastgen.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="leaderboard CSV (benchmarks/leaderboards/<benchmark>.csv)")
    parser.add_argument("--out", help="folder for the Markdown table and plots (default: next to the CSV)")
    parser.add_argument("--readme", help="a Markdown file whose leaderboard:<stem> block is rewritten")
    args = parser.parse_args(argv)
    csv_path = Path(args.csv)
    try:
        frame = read_leaderboard(csv_path)
    except FileNotFoundError as e:
        print(f"fastgen.leaderboard: error: {e}", file=sys.stderr)
        return 2
    if frame.empty:
        print(f"fastgen.leaderboard: {csv_path} holds no rows", file=sys.stderr)
        return 2
    summary = summarise(frame)
    out_dir = Path(args.out) if args.out else csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    fid = metric_table(summary, "fid")
    print(to_markdown(fid) if fid is not None else summary.to_string())
    markdown = out_dir / f"{csv_path.stem}.md"
    write_text_atomic(markdown, summary_markdown(summary, csv_path.name) + "\n")
    plots = save_plots(summary, out_dir, csv_path.stem)
    print(f"\nwrote {markdown} and {len(plots)} plots in {out_dir}")
    if args.readme:
        try:
            update_readme(args.readme, csv_path.stem, readme_block(summary, csv_path, args.readme, out_dir))
        except ValueError as e:
            print(f"fastgen.leaderboard: error: {e}", file=sys.stderr)
            return 2
        print(f"updated the leaderboard:{csv_path.stem} block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
