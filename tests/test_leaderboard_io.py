"""Leaderboard files under faults: one strict reader that refuses (file, line, what, how to repair) rather than
guesses, appends that never lose a row (concurrent writers, a reader alongside, a corrupt line), and the repair."""

import csv
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest

from fastgen.eval.leaderboard.io import (
    ADDED_LATER, COLUMNS, LeaderboardError, append_rows, read_leaderboard, read_rows,
)
from fastgen.leaderboard import main

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks/leaderboards/mnist.csv"


def _row(i, writer="w", **extra):
    return {"run_id": f"{writer}{i}", "method": "m", "steps": 1 + i % 4, "nfe": 1, "fid": 10.0 + i,
            "num_samples": 500, "seed": 0, **extra}


def _lines(path):
    return Path(path).read_text().splitlines()


@pytest.fixture
def committed(tmp_path):
    path = tmp_path / "mnist.csv"
    shutil.copy(COMMITTED, path)
    return path


def test_the_committed_leaderboard_reads_and_an_append_keeps_every_old_value(committed):
    header, old = read_rows(committed)
    assert len(old) == 57
    header = [c for c in header if c not in ADDED_LATER]  # as written before the later columns existed: accepted
    with open(committed, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(old)
    header, old = read_rows(committed)
    assert len(old) == 57 and not set(ADDED_LATER) & set(header)
    assert read_leaderboard(committed)["aesthetic_clip"].isna().all()
    append_rows(committed, [_row(0)])
    new_header, new = read_rows(committed)
    assert new_header[:len(header)] == header and len(new) == 58
    assert all(n[c] == o[c] for o, n in zip(old, new) for c in header)  # not one cell of the old rows changed


def test_a_corrupt_line_in_the_middle_stops_reads_and_appends_and_loses_nothing(committed, tmp_path, capsys):
    """The issue's case: an unbalanced quote, then one append, left 6 of 57 rows."""
    lines = _lines(committed)
    bad = 'lcm_mnist,"broken,lcm,teacher,mnist'  # an unbalanced quote
    committed.write_text("\n".join(lines[:30] + [bad] + lines[30:]) + "\n")
    before = committed.read_bytes()
    with pytest.raises(LeaderboardError, match=rf"{committed}.*line 31: does not parse.*--repair"):
        read_leaderboard(committed)
    with pytest.raises(LeaderboardError, match="kept in .*unappended-.*csv"):
        append_rows(committed, [_row(0, "new")])
    assert committed.read_bytes() == before  # a file that does not read strictly is never rewritten
    assert main([str(committed)]) == 2 and "line 31" in capsys.readouterr().err
    assert main([str(committed), "--repair", "--out", str(tmp_path / "out")]) == 0
    assert "57 rows kept, 1 unreadable lines moved" in capsys.readouterr().out
    rows = read_rows(committed)[1]
    assert len(rows) == 58 and rows[-1]["run_id"] == "new0"  # every row, and the append that was refused
    assert [r["run_id"] for r in rows[:57]] == [r["run_id"] for r in csv.DictReader(open(COMMITTED))]
    assert (tmp_path / "mnist.csv.rejected").read_text() == bad + "\n"
    assert not list(tmp_path.glob("*.unappended-*.csv"))


def _write(path, n, writer):
    for i in range(n):
        append_rows(path, [_row(i, writer)])


def _read(path, stop, out):
    counts = []
    while not stop.is_set():
        try:
            counts.append(len(read_rows(path)[1]))
        except FileNotFoundError:
            counts.append(0)
        except Exception as e:  # a reader must never see a half-written or unreadable file
            out.put(f"{type(e).__name__}: {e}")
            return
    out.put(counts)


def test_two_writers_append_while_a_third_reads(tmp_path):
    path = str(tmp_path / "board.csv")
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read, args=(path, stop, out))
    reader.start()
    writers = [ctx.Process(target=_write, args=(path, 12, w)) for w in ("a", "b")]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    stop.set()
    counts = out.get(timeout=60)
    reader.join(30)
    assert isinstance(counts, list), counts
    assert len(counts) > 1 and counts == sorted(counts)  # every read succeeded, and rows only ever grew
    rows = read_rows(path)[1]
    assert len(rows) == 24 and sorted(r["run_id"] for r in rows) == sorted(f"{w}{i}" for w in "ab" for i in range(12))
    assert list(read_leaderboard(path).columns)[:len(COLUMNS)] == list(COLUMNS)
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_columns_are_refused_not_guessed(committed, capsys):
    rows = list(csv.DictReader(open(committed)))
    with open(committed, "w", newline="") as f:  # the same leaderboard without its steps column
        writer = csv.DictWriter(f, [c for c in rows[0] if c != "steps"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(LeaderboardError, match="lacks the column.s. steps"):
        read_leaderboard(committed)
    assert main([str(committed)]) == 2
    assert "lacks the column(s) steps" in capsys.readouterr().err  # before: every method under "real data", exit 0
    with pytest.raises(LeaderboardError):
        append_rows(committed, [_row(0)])
    assert len(list(csv.DictReader(open(committed)))) == 57


def test_an_empty_file_is_a_clear_error_and_appending_creates_it(tmp_path, capsys):
    path = tmp_path / "board.csv"
    path.write_text("")
    with pytest.raises(LeaderboardError, match="empty"):
        read_leaderboard(path)
    assert main([str(path)]) == 2 and "empty" in capsys.readouterr().err
    append_rows(path, [_row(0)])  # nothing to lose: the append writes the header and the row
    assert len(read_leaderboard(path)) == 1
    path.write_text(",".join(COLUMNS) + "\n")
    assert main([str(path)]) == 2 and "holds no rows" in capsys.readouterr().err


@pytest.mark.parametrize("cell, value, problem", [
    ("fid", "abc", "fid='abc' is not a number"),
    ("steps", "", "steps is empty for method 'm'"),
    ("steps", "2.5", "steps='2.5' is not a whole number"),
    ("steps", "0", "steps=0"),
    ("precision", "fp8", "precision='fp8'"),
    ("method", "", "method is empty"),
])
def test_bad_values_name_the_line_and_the_column(tmp_path, cell, value, problem):
    path = tmp_path / "board.csv"
    append_rows(path, [_row(0), _row(1)])
    header, rows = read_rows(path)
    rows[1][cell] = value
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(LeaderboardError, match=f"line 3: {problem}"):
        read_leaderboard(path)
    with pytest.raises(ValueError, match=problem):  # a writer refuses what the reader would refuse
        append_rows(tmp_path / "other.csv", [{**_row(2), cell: value}])
    assert not (tmp_path / "other.csv").exists()


def test_a_row_with_a_line_break_is_refused_before_writing(tmp_path):
    path = tmp_path / "board.csv"
    append_rows(path, [_row(0)])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="checkpoint holds a line break"):
        append_rows(path, [_row(1, checkpoint="a\nb")])
    assert path.read_bytes() == before
