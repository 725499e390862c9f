"""The points data module: shipped shapes, a user's .npz (and its faults), the stratified split, batches."""

import numpy as np
import pytest
import torch

from fastgen.data.errors import DataError
from fastgen.data.points import PointsDataModule, data_dim, data_name


def test_grid_has_four_modes_per_row_prompt_and_each_prompts_mean_lies_between_its_modes():
    dm = PointsDataModule(shape="grid", num_points=1600)
    x, labels = dm.points("train")
    assert x.shape[1] == 2 and len(dm.prompts) == 4 and dm.name == "points_grid"
    for k in range(4):
        row = x[labels == k]
        assert row[:, 1].mean().item() == pytest.approx(-1.5 + k, abs=0.02)  # one row per prompt
        centres = sorted(round(v) for v in (row[:, 0] + 1.5).tolist())
        assert sorted(set(centres)) == [0, 1, 2, 3]  # four modes on it, at x = -1.5, -0.5, 0.5, 1.5
        mean_x = row[:, 0].mean().item()
        assert (row[:, 0] - mean_x).abs().min() > 0.1  # no data at the prompt's conditional mean (4 std from a mode)
    assert x.std(dim=0).min() > 1.0  # unscaled, beyond [-1, 1]


def test_patterns_are_32_dimensional_sign_patterns_each_spread_in_a_plane_with_thin_noise():
    dm = PointsDataModule(shape="patterns", num_points=1600)
    x, labels = dm.points("train")
    assert x.shape[1] == 32 and dm.name == "points_patterns" and data_dim(shape="patterns") == 32
    for k in range(4):
        row = x[labels == k]
        centres = torch.unique(row.sign(), dim=0)
        assert len(centres) >= 4  # four ±1 patterns per prompt (a far point may flip a coordinate's sign)
        assert (row.mean(0).abs() < 0.9).any()  # the conditional mean is no pattern
    mode = x[(x.sign() == x[0].sign()).float().mean(1) > 0.9]  # the points of x[0]'s pattern
    spread = torch.linalg.svdvals(mode - mode.mean(0)) / len(mode) ** 0.5
    assert spread[:2].min() > 0.3 and spread[2:].max() < 0.05  # sigma 0.5 in a plane, noise 0.03 elsewhere
    assert PointsDataModule(shape="patterns", dim=48).dim == 48


def test_split_is_stratified_seeded_and_disjoint():
    dm = PointsDataModule(num_points=800, heldout_fraction=0.25, split_seed=3)
    dm.setup()
    train, held = dm._indices["train"], dm._indices["heldout"]
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(train) + len(held) == 800
    _, labels = dm.points("heldout")
    assert torch.bincount(labels).tolist() == [50] * 4  # 25% of each prompt's 200
    again = PointsDataModule(num_points=800, heldout_fraction=0.25, split_seed=3)
    assert torch.equal(again.points("heldout")[0], dm.points("heldout")[0])
    other = PointsDataModule(num_points=800, heldout_fraction=0.25, split_seed=4)
    assert not torch.equal(other.points("heldout")[0], dm.points("heldout")[0])


def test_batches_carry_points_prompts_and_labels():
    dm = PointsDataModule(num_points=320, batch_size=32)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x0"].shape == (32, 2) and batch["x0"].dtype == torch.float32
    assert [dm.prompts[k] for k in batch["label"].tolist()] == list(batch["prompt"])


def test_eval_prompts_are_balanced_and_fixed_by_the_seed():
    dm = PointsDataModule(num_points=320)
    prompts = dm.eval_prompts(10, seed=1)
    assert sorted(torch.bincount(dm.labels_of(prompts)).tolist()) == [2, 2, 3, 3]
    assert prompts == dm.eval_prompts(10, seed=1) != dm.eval_prompts(10, seed=2)
    with pytest.raises(DataError, match="not among the data's prompts"):
        dm.labels_of(["a point somewhere else"])


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_a_users_npz_loads_with_its_prompts(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "rings.npz", x=rng.normal(size=(60, 3)), label=np.repeat([0, 1, 2], 20),
                 prompts=np.array(["inner", "middle", "outer"]))
    dm = PointsDataModule(path=path, heldout_fraction=0.2)
    assert dm.prompts == ["inner", "middle", "outer"] and dm.dim == 3 and data_dim(path) == 3
    assert dm.name == data_name(path) == "points_rings"
    assert torch.bincount(dm.points("heldout")[1]).tolist() == [4, 4, 4]


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((4, 2)), label=np.array([0, 0, 1, 1])), r"missing array\(s\) \['prompts'\]"),
    (dict(x=np.zeros(4), label=np.array([0, 0, 1, 1]), prompts=np.array(["a", "b"])), r"x must be finite floats"),
    (dict(x=np.full((4, 2), np.nan), label=np.array([0, 0, 1, 1]), prompts=np.array(["a", "b"])), "x must be finite"),
    (dict(x=np.zeros((4, 2)), label=np.array([0, 0, 1, 2]), prompts=np.array(["a", "b"])), r"labels must be in 0..1"),
    (dict(x=np.zeros((4, 2)), label=np.array([0, 0, 0, 1]), prompts=np.array(["a", "b"])), "label 1 has 1 point"),
    (dict(x=np.zeros((4, 2)), label=np.array([0.0, 0, 1, 1]), prompts=np.array(["a", "b"])), "label must be integers"),
    (dict(x=np.zeros((4, 2)), label=np.array([0, 0, 1, 1]), prompts=np.array(["a", "a"])), "prompts must be distinct"),
])
def test_a_bad_npz_fails_with_one_line_naming_data_path(tmp_path, arrays, message):
    path = _save(tmp_path / f"bad{abs(hash(message))}.npz", **arrays)
    with pytest.raises(DataError, match=message) as error:
        PointsDataModule(path=path).setup()
    assert str(error.value).startswith(f"data.path={path}") and "\n" not in str(error.value)


def test_bad_shape_and_sizes_name_their_key():
    with pytest.raises(DataError, match="data.shape='ring'"):
        PointsDataModule(shape="ring").setup()
    with pytest.raises(DataError, match="data.num_points=10"):
        PointsDataModule(num_points=10).setup()
    with pytest.raises(DataError, match="data.heldout_fraction=1.5"):
        PointsDataModule(heldout_fraction=1.5).setup()
    with pytest.raises(DataError, match="data.dim=3: the grid shape is 2-D"):
        PointsDataModule(dim=3).setup()
