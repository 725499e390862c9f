"""The method x steps summary of a leaderboard.

Per (method, steps): rows are grouped by experiment; within an experiment each training seed (`train_seed`;
older CSVs without it: `seed`) contributes its best-FID row (rows without FID: the latest), and metrics are the mean over seeds (± std when there are several seeds).
The experiment with the lowest mean FID represents the method at that step count. The data floor (`real_data`)
appears with steps "real".
"""

import numpy as np
import pandas as pd

SUMMARY_METRICS = ("fid", "kid", "clip_score", "aesthetic_score", "prompt_accuracy", "ms_per_image",
                   "images_per_s", "peak_mem_mb")
LOWER_IS_BETTER = {"fid", "kid", "ms_per_image", "peak_mem_mb"}
REAL = "real"
BASELINE = "dpm_solver"  # the DPM-Solver++ rows: dpm_solver (ODE), dpm_solver_sde
CONTROL = "@init"  # suffix of a control's rows: a method evaluated untrained (the bench's suite.controls)
METHOD_ORDER = ("ufogen", "siddm", "ddgan", "lcm", "lcm_lora", "tscd")  # the flagship first, families together


def _best_row(rows):
    rows = rows.sort_values("timestamp") if "timestamp" in rows else rows
    return rows.loc[rows["fid"].idxmin()] if rows["fid"].notna().any() else rows.iloc[-1]


def summarise(frame):
    """One row per (method, steps): metrics' mean, `<metric>_std` over seeds, n_seeds, experiment, nfe."""
    frame = frame.copy()
    frame["steps"] = frame["steps"].apply(lambda s: REAL if pd.isna(s) else int(s)).astype(object)
    for metric in SUMMARY_METRICS:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    frame["experiment"] = frame["experiment"].fillna("")
    seed_column = "train_seed" if "train_seed" in frame and frame["train_seed"].notna().any() else "seed"
    out = []
    for (method, steps), rows in frame.groupby(["method", "steps"], sort=False):
        candidates = []
        for experiment, by_experiment in rows.groupby("experiment", sort=False):
            per_seed = pd.DataFrame([_best_row(r) for _, r in by_experiment.groupby(seed_column, dropna=False)])
            entry = {"method": method, "steps": steps, "experiment": experiment, "n_seeds": len(per_seed),
                     "nfe": per_seed["nfe"].iloc[0], "num_samples": per_seed["num_samples"].iloc[0]}
            for metric in SUMMARY_METRICS:
                values = per_seed[metric].dropna()
                entry[metric] = values.mean() if len(values) else np.nan
                entry[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            candidates.append(entry)
        out.append(min(candidates, key=lambda e: (np.isnan(e["fid"]), e["fid"] if not np.isnan(e["fid"]) else 0)))
    return pd.DataFrame(out)


def _cell(value, std):
    if pd.isna(value):
        return ""
    text = f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return text + (f" ± {std:.2g}" if not pd.isna(std) else "")


def metric_table(summary, metric):
    """method x steps table of one metric as strings ('12.34 ± 0.5'), or None if the metric is never filled.

    Rows: the DPM-Solver++ baselines, the data floor, the methods of METHOD_ORDER in that order, then any other
    method in order of appearance (a re-run cell does not move its method)."""
    if summary[metric].isna().all():
        return None
    columns = sorted({s for s in summary["steps"] if s != REAL}) + ([REAL] if (summary["steps"] == REAL).any() else [])
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    methods = sorted(dict.fromkeys(summary["method"]),
                     key=lambda m: (not m.startswith(BASELINE), m != "real_data", rank.get(m, len(rank))))
    table = pd.DataFrame(index=methods, columns=columns, data="")
    for _, row in summary.iterrows():
        table.loc[row["method"], row["steps"]] = _cell(row[metric], row[f"{metric}_std"])
    table.columns = [f"{c} step{'s' if c != 1 else ''}" if c != REAL else "real data" for c in columns]
    return table[(table != "").any(axis=1)]


def to_markdown(table):
    """A DataFrame as a GitHub Markdown table (index as the first column)."""
    header = ["method", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(table.index, table.values)]
    return "\n".join(lines)


def summary_markdown(summary, source):
    """Markdown: one method x steps table per filled metric, with the direction that is better."""
    parts = [f"# Leaderboard summary of `{source}`", "",
             "Best row per method and step count (mean ± std over seeds where several seeds were run); "
             "`real data` is the data floor. Rows compare only at equal num_samples: "
             f"{sorted(set(summary['num_samples'].dropna().astype(int)))}.", ""]
    for metric in SUMMARY_METRICS:
        table = metric_table(summary, metric)
        if table is not None:
            better = "lower" if metric in LOWER_IS_BETTER else "higher"
            parts += [f"## {metric} ({better} is better)", "", to_markdown(table), ""]
    return "\n".join(parts)
