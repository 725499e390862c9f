"""Leaderboard CSVs: the shared column names and appends that are safe under concurrent writers.

One row per (run, checkpoint, steps). `seed` is the evaluation's noise seed (the same for every method:
paired samples), `train_seed` the seed the method was trained with (empty for the baseline and data floor). `COLUMNS` come first in this order so leaderboards from different runs
and machines merge; extra columns (e.g. kid_std, clip_model) follow. An append takes a file lock
(`<csv>.lock`), reads the current file, adds the rows, writes everything to a temporary file in the same folder
and `os.replace`s it into place: a reader never sees a half-written file and no writer loses another's rows.
`drop_rows` removes rows the same way (the bench replaces a re-run cell's earlier rows with it).
"""

import csv
import io
from pathlib import Path

from filelock import FileLock

from fastgen.atomic_write import write_text_atomic

COLUMNS = (
    "run_id", "experiment", "method", "backbone", "dataset", "checkpoint", "steps", "nfe", "guidance",
    "fid", "kid", "clip_score", "aesthetic_score", "prompt_accuracy", "energy_distance", "knn_precision", "knn_recall",
    "ms_per_image", "images_per_s", "peak_mem_mb",
    "num_samples", "extractor", "extractor_sha256", "reference", "reference_sha256", "prompts_sha256", "seed",
    "train_seed",
    "precision", "device", "git_commit", "timestamp",
)
LOCK_TIMEOUT_S = 120


def _read(path):
    if not path.is_file() or path.stat().st_size == 0:
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _cell(value):
    return "" if value is None else value


def _rewrite(csv_path, edit):
    """Replace the CSV's rows by `edit(existing rows)`, atomically and under the file lock."""
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        fieldnames, existing = _read(path)
        rows = edit(existing)
        columns = list(COLUMNS) + [c for c in fieldnames if c not in COLUMNS]
        columns += [k for row in rows for k in row if k not in columns]
        columns = list(dict.fromkeys(columns))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
        write_text_atomic(path, buffer.getvalue())


def append_rows(csv_path, rows):
    """Append `rows` (dicts) to the CSV at `csv_path` (created with COLUMNS first), atomically and under a lock."""
    _rewrite(csv_path, lambda existing: [*existing, *rows])


def drop_rows(csv_path, predicate):
    """Remove the rows (dicts of strings) for which `predicate` is true; how many were removed (0: no file)."""
    if not Path(csv_path).is_file():
        return 0
    removed = 0

    def keep(existing):
        nonlocal removed
        kept = [r for r in existing if not predicate(r)]
        removed = len(existing) - len(kept)
        return kept

    _rewrite(csv_path, keep)
    return removed


def read_leaderboard(csv_path):
    """The leaderboard as a pandas DataFrame (missing COLUMNS added empty)."""
    import pandas as pd

    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"leaderboard {path} does not exist")
    frame = pd.read_csv(path)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame
