"""Leaderboard plots (matplotlib, Agg), one set per evaluation protocol: each metric against steps, FID against
network evaluations (NFE: CFG counts twice, so this is the equal-compute comparison), and quality against latency.

Every series of a protocol has its own colour and marker (`series_styles`: 18 colours x 7 markers, so no two of
the first 126 series share both, and no two of the first 18 share a colour); the line style tells its kind:
baselines dashed, controls (an untrained method, `<method>@init`) dash-dotted, trained methods solid, the data
floor a grey dotted line. A leaderboard with several protocols gets one file per protocol
(`<stem>_<protocol>_...png`, titled with the protocol); with one protocol the names are `<stem>_...png`.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fastgen.core.files import atomic_path
from fastgen.eval.leaderboard.table import (  # noqa: E402
    BASELINE, CONTROL, LOWER_IS_BETTER, REAL, REAL_DATA, SUMMARY_METRICS, protocols, series_order,
)

_TAB20 = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]  # no grey: the data floor's
COLOURS = tuple(_TAB20[0::2] + _TAB20[1::2])  # the nine strong colours first, then their light partners
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LOG_Y = {"energy_distance"}  # spans orders of magnitude between an untrained control and the data floor


def _save(fig, path):
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _linestyle(method):
    """Baselines dashed, controls (an untrained method, `<method>@init`) dash-dotted, trained methods solid."""
    return "--" if method.startswith(BASELINE) else "-." if method.endswith(CONTROL) else "-"


def series_styles(series):
    """{series label: (colour, marker)} for the series in the given order: the i-th gets colour i mod 18 and
    marker i mod 7."""
    return {s: (COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]) for i, s in enumerate(series)}


def _series(summary):
    """(label, method, style) of each sampled series of a one-protocol summary, in table order."""
    order = [s for s in series_order(summary) if s != REAL_DATA]
    methods = dict(zip(summary["series"], summary["method"]))
    styles = series_styles(order)
    return [(s, methods[s], styles[s]) for s in order]


def draw_metric(ax, summary, metric, x="steps"):
    """One line per series of a one-protocol summary against `x` (steps or nfe), the data floor as a line."""
    for label, method, (colour, marker) in _series(summary):
        rows = summary[(summary["series"] == label) & (summary["steps"] != REAL)].dropna(subset=[metric])
        if len(rows):
            rows = rows.sort_values(x, key=lambda s: s.astype(int))
            ax.errorbar(rows[x].astype(int), rows[metric], yerr=rows[f"{metric}_std"].fillna(0), marker=marker,
                        color=colour, capsize=3, label=label, linestyle=_linestyle(method))
    floor = summary[(summary["method"] == REAL_DATA)][metric].dropna()
    if len(floor):
        ax.axhline(floor.iloc[0], color="gray", linestyle=":", label="real data")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(v) for v, s in zip(summary[x], summary["steps"]) if s != REAL})
    ax.set_xticks(ticks, [str(v) for v in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps" if x == "steps" else "network evaluations per image (NFE)")
    ax.set_ylabel(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
    if metric in LOG_Y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def metric_vs_steps(summary, metric, path, x="steps", title=None):
    """`draw_metric` of a one-protocol summary, saved to `path`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_metric(ax, summary, metric, x)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def quality_vs_latency(summary, path, metric="fid", title=None):
    """`metric` against ms per image, one line per series, points labelled with their step count."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, method, (colour, marker) in _series(summary):
        rows = summary[summary["series"] == label].dropna(subset=[metric, "ms_per_image"])
        if len(rows):
            rows = rows.sort_values("ms_per_image")
            ax.plot(rows["ms_per_image"], rows[metric], marker=marker, color=colour, label=label,
                    linestyle=_linestyle(method))
            for _, row in rows.iterrows():
                ax.annotate(str(row["steps"]), (row["ms_per_image"], row[metric]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (at eval.batch_size)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def plot_stem(summary, stem, protocol):
    """`<stem>` with one protocol in the summary, else `<stem>_<protocol>`."""
    return stem if summary["protocol"].nunique() == 1 else f"{stem}_{protocol}"


def save_plots(summary, out_dir, stem):
    """Every available plot of every protocol: `<out_dir>/<stem>[_<protocol>]_<metric>_vs_steps.png`,
    `..._{fid,energy_distance}_vs_nfe.png` and `..._fid_vs_latency.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    several = summary["protocol"].nunique() > 1
    paths = []
    for pid, _ in protocols(summary):
        part = summary[summary["protocol"] == pid]
        name, title = plot_stem(summary, stem, pid), f"protocol {pid}" if several else None
        paths += [metric_vs_steps(part, m, out_dir / f"{name}_{m}_vs_steps.png", title=title)
                  for m in SUMMARY_METRICS if part[m].notna().any() and m not in ("images_per_s",)]
        for metric in ("fid", "energy_distance"):  # the equal-compute view of the headline metric
            if part[metric].notna().any():
                paths.append(metric_vs_steps(part, metric, out_dir / f"{name}_{metric}_vs_nfe.png", x="nfe",
                                             title=title))
        if part[["fid", "ms_per_image"]].notna().all(axis=1).any():
            paths.append(quality_vs_latency(part, out_dir / f"{name}_fid_vs_latency.png", title=title))
    return paths
