"""Leaderboard CSVs: one strict reader, and appends that never lose a row.

One row per (run, checkpoint, steps). `seed` is the evaluation's noise seed (the same for every method: paired
samples), `train_seed` the seed the method was trained with (empty for the baseline and data floor). `COLUMNS`
come first in this order in a new file; an existing file keeps its column order, and columns it lacks are added
at the end (empty in its old rows). Extra columns (e.g. kid_std, grid) follow.

Reading (`read_rows`, `read_leaderboard`) refuses rather than guesses: each physical line is parsed on its own
(fastgen never writes a cell with a line break, so a stray quote cannot swallow the lines after it), and a line
with bad quoting, the wrong number of fields, a non-number in a number column, an unknown precision, no method,
or no step count (only `real_data` rows have none) is a `LeaderboardError` naming the file, the line, what is
wrong and how to repair it. So is a header without the columns every fastgen leaderboard has had
(`REQUIRED_COLUMNS`), and an empty file. `python -m fastgen.leaderboard FILE --repair` (`repair`) moves the bad
lines, verbatim, to `FILE.rejected` and keeps every other row.

Writing (`append_rows`, `drop_rows`) takes a file lock (`<csv>.lock`), reads the current file strictly, writes
everything to a temporary file in the same folder and `os.replace`s it into place: a reader never sees a
half-written file and no writer loses another's rows. A file that does not read strictly is never rewritten:
the new rows go to `<stem>.unappended-<time>-<pid>.csv` beside it and the append raises; `--repair` then
appends them. New rows are checked by the same rules before anything is written.
"""

import csv
import datetime
import io
import math
import os
from pathlib import Path

from filelock import FileLock

from fastgen.core.files import write_bytes_atomic, write_text_atomic
from fastgen.eval.metrics.fingerprint import normalise_precision

COLUMNS = (
    "run_id", "experiment", "method", "backbone", "dataset", "checkpoint", "steps", "nfe", "guidance",
    "fid", "kid", "clip_score", "aesthetic_score", "prompt_accuracy", "energy_distance", "knn_precision", "knn_recall",
    "ms_per_image", "images_per_s", "peak_mem_mb",
    "latency_device", "latency_threads", "latency_batch", "latency_repeats",
    "num_samples", "extractor", "extractor_sha256", "reference", "reference_sha256", "prompts_sha256", "seed",
    "train_seed",
    "precision", "device", "git_commit", "timestamp",
    "clip_model", "aesthetic_sha256", "aesthetic_clip", "classifier_sha256",
    "digit_reward", "imagereward", "hpsv2", "pickscore", "reward_models",
)
ADDED_LATER = ("train_seed", "clip_model", "aesthetic_sha256", "aesthetic_clip", "classifier_sha256",
               "latency_device", "latency_threads", "latency_batch", "latency_repeats", "energy_distance", "knn_precision",
               "knn_recall", "digit_reward", "imagereward", "hpsv2", "pickscore", "reward_models")
REQUIRED_COLUMNS = tuple(c for c in COLUMNS if c not in ADDED_LATER)  # every leaderboard fastgen has written
INT_COLUMNS = ("steps", "nfe", "num_samples", "seed", "train_seed", "latency_threads", "latency_batch",
               "latency_repeats")
FLOAT_COLUMNS = ("guidance", "fid", "kid", "kid_std", "clip_score", "aesthetic_score", "prompt_accuracy",
                 "energy_distance", "knn_precision", "knn_recall", "ms_per_image", "images_per_s", "peak_mem_mb",
                 "digit_reward", "imagereward", "hpsv2", "pickscore")
REAL_DATA = "real_data"
LOCK_TIMEOUT_S = 120
MAX_LISTED = 5


class LeaderboardError(ValueError):
    """A leaderboard file that does not read strictly (the message says where and how to repair it)."""


def _repair_hint(path):
    return (f"Every other line is intact: `python -m fastgen.leaderboard {path} --repair` moves the unreadable "
            f"lines to {Path(path).name}.rejected and keeps the rest (or fix them by hand)")


def _check_value(column, value):
    """What is wrong with `value` in `column` ('' if nothing)."""
    if value == "":
        return ""
    if "\n" in value or "\r" in value:
        return f"{column} holds a line break"
    if column in INT_COLUMNS or column in FLOAT_COLUMNS:
        try:
            number = float(value)
        except ValueError:
            return f"{column}={value!r} is not a number"
        if column in INT_COLUMNS and not (math.isfinite(number) and number.is_integer()):
            return f"{column}={value!r} is not a whole number"
    if column == "precision":
        try:
            normalise_precision(value)
        except ValueError as e:
            return str(e)
    return ""


def _check_row(row):
    """What is wrong with a row (dict of strings), '' if nothing."""
    for column, value in row.items():
        problem = _check_value(column, value)
        if problem:
            return problem
    if not row.get("method"):
        return "method is empty"
    if row.get("steps", "") == "" and row["method"] != REAL_DATA:
        return f"steps is empty for method {row['method']!r} (only {REAL_DATA} rows have no step count)"
    if row.get("steps", "") != "" and float(row["steps"]) < 1:
        return f"steps={row['steps']} (a sampled row takes at least one step)"
    return ""


def _physical_lines(path):
    """The file's lines as bytes, without line endings."""
    lines = Path(path).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse_line(raw):
    """The fields of one CSV line (bytes), or raise csv.Error (not UTF-8, a NUL byte, bad quoting)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise csv.Error(f"bytes that are not UTF-8 ({e.reason})") from None
    if "\0" in line:
        raise csv.Error("a NUL byte")
    return next(csv.reader([line], strict=True), [])


def _parse(path):
    """(header, [(line number, row dict)], [(line number, raw line, problem)], header problem) of a file."""
    lines = _physical_lines(path)
    if not b"".join(lines).strip():
        return None, [], [], "the file is empty (no header line)"
    try:
        header = _parse_line(lines[0])
    except csv.Error as e:
        return None, [], [], f"line 1 (the header) does not parse ({e})"
    duplicated = sorted({c for c in header if header.count(c) > 1})
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if duplicated or missing or "" in header:
        what = (f"lacks the column(s) {', '.join(missing)}" if missing else
                f"names {', '.join(duplicated)} more than once" if duplicated else "has an empty column name")
        return None, [], [], (f"the header (line 1) {what}: not a fastgen leaderboard, or its header line was edited. "
                              f"Restore the header (fastgen writes: {','.join(COLUMNS)})")
    rows, bad = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = _parse_line(line)
        except csv.Error as e:
            bad.append((number, line, f"does not parse ({e}; an unbalanced quote?)"))
            continue
        if len(fields) != len(header):
            bad.append((number, line, f"{len(fields)} fields where the header has {len(header)}"))
            continue
        row = dict(zip(header, fields))
        problem = _check_row(row)
        if problem:
            bad.append((number, line, problem))
        else:
            rows.append((number, row))
    return header, rows, bad, ""


def _error_message(path, bad, header_problem):
    if header_problem:
        return f"leaderboard {path}: {header_problem}."
    listed = "; ".join(f"line {n}: {problem}" for n, _, problem in bad[:MAX_LISTED])
    more = f" (and {len(bad) - MAX_LISTED} more lines)" if len(bad) > MAX_LISTED else ""
    return f"leaderboard {path} has {len(bad)} unreadable line(s): {listed}{more}. {_repair_hint(path)}."


def read_rows(csv_path):
    """(header, rows as dicts of strings) of a leaderboard, read strictly (LeaderboardError otherwise)."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"leaderboard {path} does not exist")
    header, rows, bad, header_problem = _parse(path)
    if header_problem or bad:
        raise LeaderboardError(_error_message(path, bad, header_problem))
    return header, [row for _, row in rows]


def read_leaderboard(csv_path):
    """The leaderboard as a pandas DataFrame, read strictly: number columns as floats, text columns as strings,
    empty cells NaN (as pandas reads a CSV), `precision` in one vocabulary, columns it lacks (`ADDED_LATER`) empty."""
    header, rows = read_rows(csv_path)
    return rows_frame(rows, header)


def rows_frame(rows, header=()):
    """A DataFrame of rows (dicts of strings or values) in the form `read_leaderboard` returns."""
    import pandas as pd

    columns = list(dict.fromkeys([*header, *COLUMNS, *(k for row in rows for k in row)]))
    frame = pd.DataFrame([{c: _cell(row.get(c)) for c in columns} for row in rows], columns=columns, dtype=object)
    for column in columns:
        if column in INT_COLUMNS or column in FLOAT_COLUMNS:
            frame[column] = pd.to_numeric(frame[column].mask(frame[column] == ""), errors="raise").astype(float)
        else:
            frame[column] = frame[column].mask(frame[column] == "")
    frame["precision"] = frame["precision"].map(normalise_precision, na_action="ignore")
    return frame


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _serialise(rows, columns):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buffer.getvalue()


def _checked(rows):
    """`rows` as dicts of strings, refusing (ValueError) a row the strict reader would refuse."""
    out = []
    for row in rows:
        cells = {k: _cell(v) for k, v in row.items()}
        problem = _check_row({"steps": "", **cells, "method": cells.get("method", "")})
        if problem:
            raise ValueError(f"refusing to write a leaderboard row ({problem}): {cells.get('run_id', '')}")
        out.append(cells)
    return out


def _columns(header, rows):
    base = list(header) if header else list(COLUMNS)
    return list(dict.fromkeys([*base, *COLUMNS, *(k for row in rows for k in row)]))


def _keep_aside(path, rows, error):
    """Write `rows` beside the unreadable leaderboard `path` and raise: they are appended by --repair."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.stem}.unappended-{stamp}-{os.getpid()}.csv")
    write_text_atomic(aside, _serialise(rows, _columns((), rows)))
    raise LeaderboardError(f"{error} The {len(rows)} new row(s) were not appended: they are kept in {aside}, and "
                           f"`--repair` appends them.") from None


def _rewrite(csv_path, edit, new_rows=()):
    """Replace the CSV's rows by `edit(existing rows)`, atomically and under the file lock; a file that does not
    read strictly is left as it is (`new_rows` are kept aside)."""
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        fresh = not path.is_file() or not path.read_bytes().strip()
        try:
            header, existing = ([], []) if fresh else read_rows(path)
        except LeaderboardError as e:
            if new_rows:
                _keep_aside(path, new_rows, str(e))
            raise
        rows = edit(existing)
        write_text_atomic(path, _serialise(rows, _columns(header, rows)))


def append_rows(csv_path, rows):
    """Append `rows` (dicts) to the CSV at `csv_path` (created with COLUMNS first), atomically and under a lock."""
    rows = _checked(rows)
    _rewrite(csv_path, lambda existing: [*existing, *rows], new_rows=rows)


def update_rows(csv_path, update):
    """Replace each row (a dict of strings) by `update(row)`, atomically and under the lock (checked as appends are)."""
    _rewrite(csv_path, lambda existing: _checked([update(row) for row in existing]))


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


def leaderboard_run_ids(csv_path):
    """The run_ids a leaderboard holds (empty for no file)."""
    if not Path(csv_path).is_file():
        return set()
    return {row.get("run_id") for row in read_rows(csv_path)[1]}


def repair(csv_path):
    """Move the unreadable lines of a leaderboard, verbatim, to `<file>.rejected` (appended), keep every other row,
    and append the rows kept aside by refused appends (`<stem>.unappended-*.csv`, removed once appended).
    Returns (rows kept, lines rejected, rows appended); a broken header is not repaired (LeaderboardError)."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"leaderboard {path} does not exist")
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        header, rows, bad, header_problem = _parse(path)
        if header_problem:
            raise LeaderboardError(_error_message(path, bad, header_problem))
        if bad:
            rejected = path.with_name(path.name + ".rejected")
            previous = rejected.read_bytes() if rejected.is_file() else b""
            write_bytes_atomic(rejected, previous + b"".join(line + b"\n" for _, line, _ in bad))
        asides = sorted(path.parent.glob(f"{path.stem}.unappended-*.csv"))
        pending = [row for aside in asides for row in read_rows(aside)[1]]
        kept = [row for _, row in rows]
        write_text_atomic(path, _serialise([*kept, *pending], _columns(header, [*kept, *pending])))
        for aside in asides:
            aside.unlink()
    return len(kept), len(bad), len(pending)
