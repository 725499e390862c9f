"""The method x steps summary of a leaderboard, one set of tables per evaluation protocol.

Rows are grouped by protocol first (`fingerprint.protocol_id`: dataset, reference, extractor, prompt set, sample
count, noise seed, metric networks) and never merged across protocols. Within a protocol a *series* is one
(method, experiment, guidance, precision); the data floor (`real_data`, steps "real") is one series per protocol.
A series' label is its method, with the parts that differ appended when a method has several series
(`lcm [guidance=4.5]`).

Per (series, steps) each training seed (`train_seed`; older CSVs without it: `seed`) contributes one row, chosen
by the selection:
- `final` (the default): the seed's final checkpoint -- its latest run (by timestamp), at the most-trained
  checkpoint of that run (`kimg=` in `checkpoint`, else the latest row). No choice is made on a test metric.
- `best:<metric>` (declared, and named in every heading): the seed's best checkpoint on that metric -- a
  selection on the test metric that the baseline, evaluated once, never gets.
Metrics are the mean over seeds (± std when there are several seeds).
"""

import re

import numpy as np
import pandas as pd

from fastgen.eval.metrics.fingerprint import describe_protocol, protocol_id

SUMMARY_METRICS = ("fid", "kid", "clip_score", "aesthetic_score", "prompt_accuracy", "digit_reward", "imagereward",
                   "hpsv2", "pickscore", "energy_distance", "knn_precision", "knn_recall", "ms_per_image", "images_per_s",
                   "peak_mem_mb")
LOWER_IS_BETTER = {"fid", "kid", "energy_distance", "ms_per_image", "peak_mem_mb"}
REAL = "real"
REAL_DATA = "real_data"
BASELINE = "dpm_solver"  # the DPM-Solver++ rows: dpm_solver (ODE), dpm_solver_sde
CONTROL = "@init"  # suffix of a control's rows: a method evaluated untrained (the bench's suite.controls)
METHOD_ORDER = ("ufogen", "dmd", "siddm", "ddgan", "lcm", "lcm_lora", "tscd")  # the flagship first, families together
SERIES_PARTS = ("experiment", "guidance", "precision")
FINAL = "final"


def parse_selection(select):
    """('final', None) or ('best', metric) from 'final' / 'best:<metric>'; ValueError otherwise."""
    if select in (None, FINAL):
        return FINAL, None
    kind, _, metric = str(select).partition(":")
    if kind == "best" and metric in SUMMARY_METRICS:
        return "best", metric
    raise ValueError(f"selection {select!r}: use 'final' or 'best:<metric>' with a metric of {list(SUMMARY_METRICS)}")


def describe_selection(select):
    kind, metric = parse_selection(select)
    if kind == FINAL:
        return "each training seed's final checkpoint (its latest run, most-trained checkpoint)"
    return (f"each training seed's best checkpoint on {metric} (a declared selection on the test metric, which the "
            "baseline, evaluated once, does not get)")


def _kimg(checkpoint):
    match = re.search(r"kimg=([0-9.]+)", str(checkpoint))
    return float(match.group(1)) if match else -1.0


def _select(rows, select):
    """The one row of a seed's rows that the selection keeps."""
    kind, metric = parse_selection(select)
    rows = rows.assign(_run_latest=rows.groupby("run_id")["timestamp"].transform("max"),
                       _kimg=rows["checkpoint"].map(_kimg))
    rows = rows.sort_values(["_run_latest", "_kimg", "timestamp"], kind="stable")
    if kind == "best" and rows[metric].notna().any():
        values = rows[metric] if metric in LOWER_IS_BETTER else -rows[metric]
        return rows.loc[values[::-1].idxmin()]  # ties: the later row
    return rows.iloc[-1]


def _prepare(frame):
    frame = frame.copy()
    frame["steps"] = frame["steps"].apply(lambda s: REAL if pd.isna(s) else int(s)).astype(object)
    for column in ("experiment", "precision", "run_id", "checkpoint", "timestamp", "method"):
        frame[column] = frame[column].fillna("").astype(str)
    records = frame.to_dict("records")
    frame["protocol"] = [protocol_id(r) for r in records]
    frame["protocol_description"] = [describe_protocol(r) for r in records]
    frame["guidance"] = frame["guidance"].fillna(0.0).astype(float)
    real = frame["method"] == REAL_DATA
    for part in SERIES_PARTS:  # the data floor is one series per protocol
        frame[f"_{part}"] = frame[part].where(~real, "").astype(str)
    return frame


def _labels(frame):
    """Series label per row: the method, plus the parts that differ among the method's series in its protocol."""
    labels = frame["method"].astype(object).copy()
    for (_, method), rows in frame.groupby(["protocol", "method"], sort=False):
        varying = [p for p in SERIES_PARTS if rows["_" + p].nunique() > 1]
        for idx, row in rows.iterrows():
            if varying:
                labels[idx] = f"{method} [" + ", ".join(f"{p}={row['_' + p]}" for p in varying) + "]"
    return labels


def summarise(frame, select=FINAL):
    """One row per (protocol, series, steps): metrics' mean, `<metric>_std` over seeds, n_seeds, nfe, the
    protocol (id and description), the selected rows' grids and the selection."""
    parse_selection(select)
    frame = _prepare(frame)
    frame["series"] = _labels(frame)
    seed_column = "train_seed" if frame["train_seed"].notna().any() else "seed"
    out = []
    group_keys = ["protocol", "series", "steps"]
    for (protocol, series, steps), rows in frame.groupby(group_keys, sort=False):
        per_seed = pd.DataFrame([_select(r, select) for _, r in rows.groupby(seed_column, dropna=False, sort=False)])
        first = per_seed.iloc[0]
        entry = {"protocol": protocol, "protocol_description": first["protocol_description"], "series": series,
                 "method": first["method"], "experiment": first["_experiment"], "guidance": first["guidance"],
                 "precision": first["_precision"], "steps": steps, "nfe": per_seed["nfe"].iloc[0],
                 "num_samples": first["num_samples"], "n_seeds": len(per_seed), "selection": select,
                 "grids": [g for g in per_seed.get("grid", pd.Series(dtype=str)).fillna("") if g]}
        for metric in SUMMARY_METRICS:
            values = per_seed[metric].dropna()
            entry[metric] = values.mean() if len(values) else np.nan
            entry[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        out.append(entry)
    return pd.DataFrame(out)


def protocols(summary):
    """[(protocol id, description)] in order of appearance."""
    return list(dict.fromkeys(zip(summary["protocol"], summary["protocol_description"])))


def series_order(summary):
    """The series of a one-protocol summary in table order: the DPM-Solver++ baselines, the data floor, the
    methods of METHOD_ORDER in that order, then any other method in order of appearance (a re-run cell does not
    move its method)."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    first = dict.fromkeys(zip(summary["series"], summary["method"]))
    return [s for s, m in sorted(first, key=lambda sm: (not sm[1].startswith(BASELINE), sm[1] != REAL_DATA,
                                                        rank.get(sm[1], len(rank))))]


def _cell(value, std):
    if pd.isna(value):
        return ""
    text = f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return text + (f" ± {std:.2g}" if not pd.isna(std) else "")


def _one_protocol(summary, protocol):
    if protocol is not None:
        return summary[summary["protocol"] == protocol]
    ids = summary["protocol"].unique()
    if len(ids) > 1:
        raise ValueError(f"the summary holds {len(ids)} protocols ({', '.join(ids)}): pass protocol=<id>")
    return summary


def metric_table(summary, metric, protocol=None):
    """series x steps table of one metric of one protocol as strings ('12.34 ± 0.5'), or None if the metric is
    never filled there."""
    summary = _one_protocol(summary, protocol)
    if summary[metric].isna().all():
        return None
    steps = set(summary["steps"])
    columns = sorted(s for s in steps if s != REAL) + ([REAL] if REAL in steps else [])
    table = pd.DataFrame(index=series_order(summary), columns=columns, data="")
    for _, row in summary.iterrows():
        table.loc[row["series"], row["steps"]] = _cell(row[metric], row[f"{metric}_std"])
    table.columns = [f"{c} step{'s' if c != 1 else ''}" if c != REAL else "real data" for c in columns]
    return table[(table != "").any(axis=1)]


def to_markdown(table):
    """A DataFrame as a GitHub Markdown table (index as the first column)."""
    header = ["method", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(table.index, table.values)]
    return "\n".join(lines)


def protocol_sections(summary, metrics, heading="##", metric_line=None):
    """Markdown lines: per protocol (a heading of its own when there are several) one table per filled metric,
    each under `metric_line(metric, 'lower'|'higher')` (default: a heading one level below)."""
    found = protocols(summary)
    lines = []
    if len(found) > 1:
        lines += [f"This leaderboard holds {len(found)} evaluation protocols; rows of different protocols are never "
                  "merged: one set of tables per protocol.", ""]
    for i, (pid, description) in enumerate(found, start=1):
        if len(found) > 1:
            lines += [f"{heading} Protocol {i} of {len(found)} (`{pid}`)", "", description, ""]
        else:
            lines += [f"Protocol `{pid}`: {description}.", ""]
        sub = heading + "#" if len(found) > 1 else heading
        line = metric_line or (lambda metric, better: f"{sub} {metric} ({better} is better)")
        for metric in metrics:
            table = metric_table(summary, metric, pid)
            if table is not None:
                better = "lower" if metric in LOWER_IS_BETTER else "higher"
                lines += [line(metric, better), "", to_markdown(table), ""]
    return lines


def summary_markdown(summary, source):
    """Markdown: per protocol, one series x steps table per filled metric, with the direction that is better."""
    select = summary["selection"].iloc[0] if len(summary) else FINAL
    parts = [f"# Leaderboard summary of `{source}`", "",
             f"Per cell: {describe_selection(select)}, mean ± std over seeds where several seeds were run; "
             "`real data` is the data floor.", ""]
    return "\n".join(parts + protocol_sections(summary, SUMMARY_METRICS))
