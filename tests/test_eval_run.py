"""run_eval end to end with a fake method: rows with the issue's columns, fixed noises, skipped steps, grids."""

import pytest
import torch

from fastgen.eval.leaderboard.io import COLUMNS, read_leaderboard
from fastgen.eval.evaluator.run_eval import eval_noise, real_data_row, run_eval
from fakes import FakeDataModule, FakeMethod

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"num_samples": 6, "batch_size": 4, "steps": [1, 2, 4], "clip": {"enabled": False},
        "aesthetic": {"enabled": False}, "fid": {"kid_subsets": 3}}


@pytest.fixture(scope="module")
def rows_and_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_eval")
    cfg = {**TINY, "cache_dir": str(tmp / "cache"), "leaderboard": str(tmp / "board.csv")}
    method = FakeMethod(supported_steps=(1, 2))
    rows = run_eval(method, FakeDataModule(), cfg, out_dir=tmp / "run", experiment="fake_exp", run_id="r1")
    return rows, tmp, method


def test_rows_have_the_leaderboard_columns_and_a_fingerprint(rows_and_dirs):
    rows, tmp, _ = rows_and_dirs
    assert [r["steps"] for r in rows] == [1, 2]  # 4 is not in supported_steps
    for row in rows:
        assert list(row)[:len(COLUMNS)] == list(COLUMNS)
        assert row["method"] == "fake" and row["experiment"] == "fake_exp" and row["num_samples"] == 6
        assert row["fid"] > 0 and row["kid"] is not None
        assert row["clip_score"] is None and row["aesthetic_score"] is None  # disabled -> empty
        assert len(row["extractor_sha256"]) == 64 and len(row["reference_sha256"]) == 64
        assert row["reference"].startswith("fake-heldout-16px-n6-") and len(row["prompts_sha256"]) == 64
        assert row["ms_per_image"] > 0 and row["images_per_s"] > 0 and row["device"] == "cpu"
    assert rows[0]["fid"] != rows[1]["fid"]
    board = read_leaderboard(tmp / "board.csv")
    assert len(board) == 2 and board["fid"].tolist() == pytest.approx([r["fid"] for r in rows])
    assert sorted(p.name for p in (tmp / "run" / "samples").iterdir()) == ["fake-1step.png", "fake-2step.png"]


def test_every_sample_has_its_own_fixed_noise(rows_and_dirs):
    _, _, method = rows_and_dirs
    assert method.calls == [(4, 1), (2, 1), (4, 2), (2, 2)]  # batches of 4; the second batch is timed
    first = eval_noise(torch.arange(3), (1, 4, 4), seed=0)
    assert torch.equal(first[2], eval_noise(torch.tensor([2]), (1, 4, 4), seed=0)[0])
    assert not torch.equal(first[0], first[1])


def test_real_data_row_is_the_floor(rows_and_dirs, tmp_path):
    rows, tmp, _ = rows_and_dirs
    row = real_data_row(FakeDataModule(), {**TINY, "cache_dir": str(tmp / "cache")})
    assert row["method"] == "real_data" and row["reference"] == rows[0]["reference"]
    assert 0 < row["fid"] and row["nfe"] == 0


def test_missing_metric_weights_leave_the_column_empty_with_one_warning(tmp_path):
    cfg = {**TINY, "steps": [1], "num_samples": 2, "fid": {"enabled": False},
           "clip": {"enabled": True, "pretrained": str(tmp_path / "nope.pt")}}
    with pytest.warns(UserWarning, match="eval.clip.pretrained") as record:
        rows = run_eval(FakeMethod(), FakeDataModule(), cfg)
    assert sum("CLIP score not computed" in str(w.message) for w in record) == 1
    assert rows[0]["ms_per_image"] > 0  # the only batch was warm-up: it is timed once more
    assert rows[0]["clip_score"] is None and rows[0]["fid"] is None and rows[0]["extractor"] == ""
