"""`python -m fastgen.leaderboard FILE.csv --wandb` offline: the grouped table, one line per series for each metric
against steps and against NFE, and the sample grids, read back from the offline run's files."""

import json
import struct

import numpy as np
import pytest
from PIL import Image

from fastgen.eval.leaderboard.io import append_rows
from fastgen.leaderboard import main


def offline_history(run_file):
    """{key: value} of every history item in an offline run's `run-*.wandb` file (a LevelDB-style log of
    wandb_internal_pb2.Record: 7-byte header, 32 KiB blocks of chunks [crc32, length, type])."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding
            pos += (block - pos % block) % block
            continue
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(chunk)
            chunk = b""
    history = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history


@pytest.fixture
def board(tmp_path):
    grid = tmp_path / "ufogen-1step.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(grid)
    row = {"experiment": "e", "seed": 0, "num_samples": 500, "dataset": "mnist", "precision": "fp32"}
    rows = [{**row, "run_id": "floor", "method": "real_data", "nfe": 0, "fid": 18.0}]
    rows += [{**row, "run_id": "dpm", "method": "dpm_solver", "steps": s, "nfe": 2 * s, "guidance": 2.0, "fid": f}
             for s, f in [(1, 350.0), (2, 272.0), (4, 175.0)]]
    rows += [{**row, "run_id": f"u{seed}", "method": "ufogen", "steps": 1, "nfe": 1, "fid": fid, "train_seed": seed,
              "checkpoint": "kimg=20.000", "grid": str(grid) if seed == 0 else str(tmp_path / "gone.png")}
             for seed, fid in [(0, 40.0), (1, 44.0)]]
    rows += [{**row, "run_id": "u0", "method": "ufogen", "steps": 2, "nfe": 2, "fid": 35.0, "train_seed": 0}]
    path = tmp_path / "mnist.csv"
    append_rows(path, rows)
    return path


def test_wandb_dashboard_offline_compares_methods_across_steps_and_nfe(board, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    assert main([str(board), "--out", str(out), "--wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = offline_history(next(runs[0].glob("run-*.wandb")))
    files = runs[0] / "files"

    def table(key):
        assert history.get(f"{key}/_type") == "table-file", sorted(history)
        return json.loads((files / history[f"{key}/path"]).read_text())

    summary = table("summary")
    cells = {(r[summary["columns"].index("series")], r[summary["columns"].index("steps")]):
             r[summary["columns"].index("fid")] for r in summary["data"]}
    assert float(cells[("ufogen", "1")]) == pytest.approx(42.0) and float(cells[("real_data", "real")]) == 18.0
    assert table("rows")["data"] and len(table("rows")["data"]) == 7

    def lines(key):  # wandb.plot.line_series: rows of (x, series, y)
        data = table(f"{key}_table")["data"]
        return {series: sorted((x, y) for x, s, y in data if s == series) for _, series, _ in data}

    steps, nfe = lines("fid_vs_steps"), lines("fid_vs_nfe")
    assert steps["ufogen"] == [(1, 42.0), (2, 35.0)] and steps["dpm_solver"] == [(1, 350.0), (2, 272.0), (4, 175.0)]
    assert nfe["dpm_solver"] == [(2, 350.0), (4, 272.0), (8, 175.0)]  # CFG counts twice
    assert steps["real data"] == [(1, 18.0), (4, 18.0)]
    assert history["samples/ufogen@1step/_type"] == "image-file"  # the grid that exists; the missing one skipped
    assert (files / history["samples/ufogen@1step/path"]).is_file()
    assert not any(k.startswith("samples/ufogen@2step") for k in history)


def test_wandb_online_without_a_key_is_one_clear_line(board, tmp_path, monkeypatch, capsys):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_MODE", "online")
    assert main([str(board), "--out", str(tmp_path / "out"), "--wandb"]) == 2
    assert "WANDB_MODE=offline" in capsys.readouterr().err
