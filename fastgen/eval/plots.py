"""Leaderboard plots (matplotlib, Agg): each metric against steps, FID against network evaluations (NFE: CFG
counts twice, so this is the equal-compute comparison), and quality against latency."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fastgen.eval.leaderboard_table import BASELINE, CONTROL, LOWER_IS_BETTER, REAL, SUMMARY_METRICS  # noqa: E402


def _save(fig, path):
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _linestyle(method):
    """Baselines dashed, controls (an untrained method, `<method>@init`) dash-dotted, trained methods solid."""
    return "--" if method.startswith(BASELINE) else "-." if method.endswith(CONTROL) else "-"


def _methods(summary):
    return [m for m in dict.fromkeys(summary["method"]) if m != "real_data"]


def metric_vs_steps(summary, metric, path, x="steps"):
    """One line per method against `x` (steps or nfe; line styles: `_linestyle`), the data floor as a
    horizontal line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in _methods(summary):
        rows = summary[(summary["method"] == method) & (summary["steps"] != REAL)].dropna(subset=[metric])
        if len(rows):
            rows = rows.sort_values(x, key=lambda s: s.astype(int))
            ax.errorbar(rows[x].astype(int), rows[metric], yerr=rows[f"{metric}_std"].fillna(0), marker="o",
                        capsize=3, label=method, linestyle=_linestyle(method))
    floor = summary[(summary["method"] == "real_data")][metric].dropna()
    if len(floor):
        ax.axhline(floor.iloc[0], color="gray", linestyle=":", label="real data")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(v) for v, s in zip(summary[x], summary["steps"]) if s != REAL})
    ax.set_xticks(ticks, [str(v) for v in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps" if x == "steps" else "network evaluations per image (NFE)")
    ax.set_ylabel(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def quality_vs_latency(summary, path, metric="fid"):
    """`metric` against ms per image, one line per method, points labelled with their step count."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in _methods(summary):
        rows = summary[summary["method"] == method].dropna(subset=[metric, "ms_per_image"])
        if len(rows):
            rows = rows.sort_values("ms_per_image")
            ax.plot(rows["ms_per_image"], rows[metric], marker="o", label=method,
                    linestyle=_linestyle(method))
            for _, row in rows.iterrows():
                ax.annotate(str(row["steps"]), (row["ms_per_image"], row[metric]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (at eval.batch_size)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def save_plots(summary, out_dir, stem):
    """Every available plot as `<out_dir>/<stem>_<metric>_vs_steps.png`, `<stem>_fid_vs_nfe.png` and
    `<stem>_fid_vs_latency.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [metric_vs_steps(summary, m, out_dir / f"{stem}_{m}_vs_steps.png")
             for m in SUMMARY_METRICS if summary[m].notna().any() and m not in ("images_per_s",)]
    if summary["fid"].notna().any():
        paths.append(metric_vs_steps(summary, "fid", out_dir / f"{stem}_fid_vs_nfe.png", x="nfe"))
    if summary[["fid", "ms_per_image"]].notna().all(axis=1).any():
        paths.append(quality_vs_latency(summary, out_dir / f"{stem}_fid_vs_latency.png"))
    return paths
