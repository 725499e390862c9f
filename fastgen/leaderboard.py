"""`python -m fastgen.leaderboard FILE.csv [--out DIR]`: the method x steps table of a leaderboard CSV.

Prints the FID table (and every other filled metric), writes them as Markdown next to the CSV
(`<stem>.md`, or in --out), and saves PNG plots there: each metric against steps (one line per method, the
DPM-Solver++ baseline dashed, the data floor dotted) and FID against latency.
"""

import argparse
import os
import sys
from pathlib import Path

from fastgen.eval.leaderboard_io import read_leaderboard
from fastgen.eval.leaderboard_table import metric_table, summarise, summary_markdown, to_markdown
from fastgen.eval.plots import save_plots


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastgen.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="leaderboard CSV (benchmarks/leaderboards/<benchmark>.csv)")
    parser.add_argument("--out", help="folder for the Markdown table and plots (default: next to the CSV)")
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
    tmp = markdown.with_name(f".{markdown.name}.{os.getpid()}.tmp")
    tmp.write_text(summary_markdown(summary, csv_path.name) + "\n", encoding="utf-8")
    os.replace(tmp, markdown)
    plots = save_plots(summary, out_dir, csv_path.stem)
    print(f"\nwrote {markdown} and {len(plots)} plots in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
