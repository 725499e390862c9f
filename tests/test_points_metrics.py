"""The points testbed's metrics against closed forms and brute-force references."""

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from fastgen.eval.metrics.points import coverage, energy_distance, knn_predict, knn_radii, precision_recall


def _cloud(n, d, seed, shift=0.0, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def test_energy_distance_of_identical_sets_is_zero_and_of_different_sets_positive():
    x = _cloud(50, 3, 0)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x[torch.randperm(50)]) == pytest.approx(0.0, abs=1e-12)  # a set: order is irrelevant
    assert energy_distance(x, _cloud(40, 3, 1)) > 0
    assert energy_distance(x, _cloud(40, 3, 1, shift=2.0)) > energy_distance(x, _cloud(40, 3, 1))


def test_energy_distance_in_one_dimension_is_the_square_of_scipys():
    x, y = _cloud(37, 1, 2), _cloud(23, 1, 3, shift=0.5, scale=2.0)
    assert energy_distance(x, y) == pytest.approx(scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rel=1e-10)


def test_energy_distance_matches_the_direct_double_sum():
    x, y = _cloud(9, 4, 4), _cloud(7, 4, 5, shift=1.0)
    xs, ys = x.numpy(), y.numpy()
    dist = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    exy = sum(dist(a, b) for a, b in itertools.product(xs, ys)) / (len(xs) * len(ys))
    exx = sum(dist(a, b) for a, b in itertools.product(xs, xs)) / len(xs) ** 2
    eyy = sum(dist(a, b) for a, b in itertools.product(ys, ys)) / len(ys) ** 2
    assert energy_distance(x, y) == pytest.approx(2 * exy - exx - eyy, rel=1e-10)
    # one point each: D² = 2·|a − b| (each within-set mean is the zero diagonal)
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert energy_distance(a, b) == pytest.approx(10.0)


def test_energy_distance_does_not_depend_on_chunking(monkeypatch):
    import fastgen.eval.metrics.points as pm

    x, y = _cloud(30, 2, 6), _cloud(25, 2, 7)
    whole = energy_distance(x, y)
    monkeypatch.setattr(pm, "CHUNK", 4)
    assert energy_distance(x, y) == pytest.approx(whole, rel=1e-12)


def test_knn_radii_are_the_distance_to_the_kth_other_point():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="k=4 needs at least"):
        knn_radii(x, 4)


def test_coverage_against_brute_force():
    queries, support = _cloud(40, 2, 8), _cloud(15, 2, 9)
    radii = knn_radii(support, 3)
    expected = [any(float((q - s).norm()) <= float(r) for s, r in zip(support, radii)) for q in queries]
    assert coverage(queries, support, radii).tolist() == expected


def test_precision_and_recall_of_a_set_against_itself_are_one_and_of_far_disjoint_sets_zero():
    x = _cloud(60, 2, 10)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, _cloud(60, 2, 11, shift=100.0), k=3) == (0.0, 0.0)


def test_precision_and_recall_see_a_dropped_mode_and_a_spurious_one():
    """Real: two modes. A fake covering only one has full precision and half recall; a fake with an extra far mode
    loses precision and keeps recall (Kynkäänniemi et al. 2019, Fig. 1)."""
    left, right, far = _cloud(100, 2, 12, -5, 0.1), _cloud(100, 2, 13, 5, 0.1), _cloud(100, 2, 14, 50, 0.1)
    real = torch.cat([left, right])
    p, r = precision_recall(real, torch.cat([_cloud(100, 2, 15, -5, 0.1), _cloud(100, 2, 16, -5, 0.1)]))
    assert p > 0.9 and r == pytest.approx(0.5, abs=0.05)
    p, r = precision_recall(real, torch.cat([_cloud(100, 2, 17, -5, 0.1), _cloud(100, 2, 18, 5, 0.1), far]))
    assert p == pytest.approx(2 / 3, abs=0.05) and r > 0.9


def test_knn_classifier_against_brute_force_majority():
    x_ref, y_ref = _cloud(30, 2, 19), torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(0))
    queries = _cloud(20, 2, 20)
    got = knn_predict(x_ref, y_ref, queries, k=5)
    for q, label in zip(queries, got.tolist()):
        order = torch.argsort((x_ref - q).norm(dim=1))[:5]
        counts = torch.bincount(y_ref[order], minlength=3)
        best = [c for c in range(3) if counts[c] == counts.max()]
        # ties: the label whose tied neighbours come first
        nearest = next(int(y) for y in y_ref[order] if int(y) in best)
        assert label == nearest
    # well-separated classes are recovered exactly
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    ref = torch.cat([_cloud(20, 2, 21, 0, 0.1) + centres[0], _cloud(20, 2, 22, 0, 0.1) + centres[1]])
    labels = torch.tensor([0] * 20 + [1] * 20)
    assert knn_predict(ref, labels, centres + 0.05, k=3).tolist() == [0, 1]
