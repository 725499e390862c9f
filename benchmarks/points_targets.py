"""The points testbed's table and its targets (issue 19), from leaderboard CSVs written by `suite=points`.

    python benchmarks/points_targets.py benchmarks/leaderboards/points_grid.csv benchmarks/leaderboards/points_patterns.csv

Per CSV: one row per (method, steps) with energy distance, kNN precision, kNN recall and prompt accuracy, the mean
over training seeds (each seed's latest row) and the per-seed values; then the must-hold targets, each met or not
on every seed:
- the teacher: 25-step DPM-Solver++ (ODE) energy distance <= 3x the real-vs-real floor, recall >= 0.9;
- every headline row (UFOGen 1; DDGAN, SIDDM 4; LCM, LCM-LoRA 2 and 4; TSCD 1 and 4; DMD 1) below DPM-Solver++ ODE and
  SDE at equal NFE and below its own untrained control (`<family>@init`) in energy distance;
- DDGAN and SIDDM at 4 steps: recall >= 0.9;
- LCM, LCM-LoRA and TSCD at 4 steps: energy distance <= 1.5x the teacher's 25-step ODE one;
and the goals: precision and recall >= 0.9 with energy distance <= 2x the teacher's 25-step, UFOGen's one step
against the teacher's 25, SIDDM against DDGAN.
"""

from __future__ import annotations

import sys

import pandas as pd

METRICS = ("energy_distance", "knn_precision", "knn_recall", "prompt_accuracy")
HEADLINES = (("ufogen", 1), ("ddgan", 4), ("siddm", 4), ("lcm", 2), ("lcm", 4), ("lcm_lora", 2), ("lcm_lora", 4),
             ("tscd", 1), ("tscd", 4), ("dmd", 1))
CONTROL_OF = {"ufogen": "ufogen@init", "ddgan": "ddgan@init", "siddm": "ddgan@init", "lcm": "lcm@init",
              "lcm_lora": "lcm@init", "tscd": "tscd@init",
              "dmd": "dmd@init"}


def per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, steps, seed): the latest row of each training seed (baselines and floor: seed -1)."""
    frame = frame.copy()
    frame["steps"] = frame["steps"].fillna(0).astype(int)
    frame["train_seed"] = pd.to_numeric(frame["train_seed"], errors="coerce").fillna(-1).astype(int)
    for metric in METRICS + ("nfe",):
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    frame = frame.sort_values("timestamp")
    return frame.groupby(["method", "steps", "train_seed"], as_index=False).last()


def table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (method, steps), with the per-seed energy distances."""
    rows = []
    for (method, steps), group in seeds.groupby(["method", "steps"], sort=False):
        row = {"method": method, "steps": steps or "real", "nfe": group["nfe"].iloc[0], "seeds": len(group)}
        row.update({m: group[m].mean() for m in METRICS})
        row["ed_per_seed"] = " / ".join(f"{v:.4f}" for v in group["energy_distance"])
        rows.append(row)
    return pd.DataFrame(rows)


def _value(seeds, method, steps, metric="energy_distance"):
    rows = seeds[(seeds["method"] == method) & (seeds["steps"] == steps)]
    return rows[metric].tolist()


def targets(seeds: pd.DataFrame) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met is None where a row is missing."""
    out = []
    floor = _value(seeds, "real_data", 0)
    ode25 = _value(seeds, "dpm_solver", 25)
    if floor and ode25:
        ratio = ode25[0] / floor[0]
        recall = _value(seeds, "dpm_solver", 25, "knn_recall")[0]
        out.append(("teacher: 25-step ODE ED <= 3x floor, recall >= 0.9",
                    f"ED {ode25[0]:.4f} = {ratio:.2f}x floor {floor[0]:.4f}, recall {recall:.3f}",
                    ratio <= 3 and recall >= 0.9))
    for method, steps in HEADLINES:
        mine = seeds[(seeds["method"] == method) & (seeds["steps"] == steps)]
        if mine.empty:
            continue
        eds, nfe = mine["energy_distance"].tolist(), int(mine["nfe"].iloc[0])
        refs = {name: seeds[(seeds["method"] == name) & (seeds["nfe"] == nfe)]["energy_distance"].tolist()
                for name in ("dpm_solver", "dpm_solver_sde")}
        control = _value(seeds, CONTROL_OF[method], steps)
        checks = [(f"{name}@{nfe}NFE {ref[0]:.4f}", all(e < ref[0] for e in eds)) for name, ref in refs.items() if ref]
        if control:
            checks.append((f"{CONTROL_OF[method]} {control[0]:.4f}", all(e < control[0] for e in eds)))
        met = all(ok for _, ok in checks) if len(checks) == 3 else None
        out.append((f"{method} {steps} steps beats DPM-Solver++ ODE, SDE and its control",
                    f"ED {' / '.join(f'{e:.4f}' for e in eds)} vs " + ", ".join(c for c, _ in checks), met))
    for method in ("ddgan", "siddm"):
        recalls = _value(seeds, method, 4, "knn_recall")
        if recalls:
            out.append((f"{method} 4 steps: recall >= 0.9", " / ".join(f"{r:.3f}" for r in recalls),
                        all(r >= 0.9 for r in recalls)))
    for method in ("lcm", "lcm_lora", "tscd"):
        eds = _value(seeds, method, 4)
        if eds and ode25:
            out.append((f"{method} 4 steps: ED <= 1.5x teacher 25-step ODE ({1.5 * ode25[0]:.4f})",
                        " / ".join(f"{e:.4f} ({e / ode25[0]:.2f}x)" for e in eds), all(e <= 1.5 * ode25[0] for e in eds)))
    return out


def goals(seeds: pd.DataFrame) -> list[tuple[str, str, bool | None]]:
    out = []
    ode25 = _value(seeds, "dpm_solver", 25)
    for method, steps in HEADLINES:
        rows = seeds[(seeds["method"] == method) & (seeds["steps"] == steps)]
        if rows.empty or not ode25:
            continue
        p, r, e = rows["knn_precision"].mean(), rows["knn_recall"].mean(), rows["energy_distance"].mean()
        out.append((f"{method} {steps} steps: P, R >= 0.9, ED <= 2x teacher 25-step",
                    f"P {p:.3f}, R {r:.3f}, ED {e / ode25[0]:.2f}x", p >= 0.9 and r >= 0.9 and e <= 2 * ode25[0]))
    ufogen, siddm, ddgan = _value(seeds, "ufogen", 1), _value(seeds, "siddm", 4), _value(seeds, "ddgan", 4)
    if ufogen and ode25:
        mean = sum(ufogen) / len(ufogen)
        out.append(("ufogen 1 step ≈ teacher 25-step (within 1.5x)", f"{mean:.4f} = {mean / ode25[0]:.2f}x",
                    mean <= 1.5 * ode25[0]))
    if siddm and ddgan:
        out.append(("siddm <= ddgan at 4 steps (mean over seeds)",
                    f"{sum(siddm) / len(siddm):.4f} vs {sum(ddgan) / len(ddgan):.4f} ({len(siddm)} seeds)",
                    sum(siddm) / len(siddm) <= sum(ddgan) / len(ddgan)))
    return out


def report(csv_path: str) -> str:
    seeds = per_seed(pd.read_csv(csv_path))
    lines = [f"## {csv_path}", "", "| method | steps | NFE | seeds | energy distance | kNN precision | kNN recall | "
             "prompt accuracy | ED per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for _, row in table(seeds).iterrows():
        lines.append(f"| {row['method']} | {row['steps']} | {int(row['nfe'])} | {row['seeds']} | "
                     f"{row['energy_distance']:.4f} | {row['knn_precision']:.3f} | {row['knn_recall']:.3f} | "
                     f"{row['prompt_accuracy']:.3f} | {row['ed_per_seed']} |")
    for title, checks in (("Must hold (every seed)", targets(seeds)), ("Goals", goals(seeds))):
        lines += ["", f"**{title}**", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {'—' if ok is None else ('yes' if ok else '**no**')} |" for t, m, ok in checks]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n\n".join(report(path) for path in sys.argv[1:]))
