"""FID / KID: closed-form sanity and agreement with torchmetrics on the same features; reference statistics cache."""

import re

import numpy as np
import scipy.linalg
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fastgen.eval.metrics.fid import feature_stats, fid_from_features, fid_from_stats, kid_from_features
from fastgen.eval.metrics.reference import ReferenceMismatchError, load_reference, reference_stats


class Features(torch.nn.Module):
    """A 'feature extractor' returning precomputed features (rows of a table indexed by the image's first pixel)."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.num_features = table.shape[1]

    def forward(self, index_images):
        return self.table[index_images[:, 0, 0, 0].long()]


def _features(n=64, d=16, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) * 0.5 + shift


def _torchmetrics(metric_cls, real, fake, **kwargs):
    table = torch.cat([real, fake])
    metric = metric_cls(feature=Features(table), **kwargs)
    as_images = lambda idx: idx.view(-1, 1, 1, 1).expand(-1, 3, 1, 1).to(torch.uint8)
    metric.update(as_images(torch.arange(len(real))), real=True)
    metric.update(as_images(torch.arange(len(real), len(table))), real=False)
    return metric.compute()


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    f = _features()
    stats = feature_stats(f)
    assert abs(fid_from_stats(*stats, *stats)) < 1e-6
    assert fid_from_stats(*stats, *feature_stats(f + 3.0)) == pytest.approx(9.0 * f.shape[1], rel=1e-6)
    noise = feature_stats(torch.randn(64, 16) * 10)
    assert fid_from_stats(*stats, *noise) > 100


def test_low_rank_fid_from_features_equals_fid_from_stats():
    few, many = _features(n=10, d=16, seed=3), _features(n=12, d=16, shift=0.4, seed=4)
    expected = fid_from_stats(*feature_stats(few), *feature_stats(many))
    assert fid_from_features(few, many) == pytest.approx(expected, rel=1e-6)
    # more samples than dimensions: against the textbook formula (scipy's sqrtm, as pytorch-fid), not itself
    f1, f2 = _features(n=40, d=8).double().numpy(), many[:, :8].double().numpy()
    (mu1, s1), (mu2, s2) = ((f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2))
    textbook = np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(f1, f2) == pytest.approx(textbook, rel=1e-6)


def test_fid_matches_torchmetrics():
    real, fake = _features(seed=0), _features(shift=0.3, seed=1)
    expected = _torchmetrics(FrechetInceptionDistance, real, fake).item()
    assert fid_from_stats(*feature_stats(real), *feature_stats(fake)) == pytest.approx(expected, rel=1e-4)


def test_kid_matches_torchmetrics_with_the_same_subsets():
    real, fake = _features(n=40, seed=0), _features(n=40, shift=0.5, seed=1)
    torch.manual_seed(7)
    mean, std = _torchmetrics(KernelInceptionDistance, real, fake, subsets=5, subset_size=20)
    ours = kid_from_features(real, fake, subsets=5, subset_size=20, generator=torch.Generator().manual_seed(7))
    assert ours == pytest.approx((mean.item(), std.item()), rel=1e-4, abs=1e-7)
    same_distribution = kid_from_features(real[:20], real[20:], subsets=5, subset_size=20)[0]
    shifted = kid_from_features(real[:20], real[20:] + 3.0, subsets=5, subset_size=20)[0]
    assert abs(same_distribution) < 0.1 * shifted


class FakeExtractor(torch.nn.Module):
    name = "fake-extractor"

    def __init__(self, sha256="a" * 64):
        super().__init__()
        self.proj = torch.nn.Linear(16 * 16, 8)
        self.sha256 = sha256

    def forward(self, images):
        return self.proj(images.float().flatten(1) / 255)


def test_reference_statistics_are_cached_keyed_and_refuse_another_extractor(tmp_path):
    from fakes import FakeDataModule

    datamodule, extractor = FakeDataModule(), FakeExtractor()
    ref = reference_stats(datamodule, extractor, 32, tmp_path, batch_size=10)
    assert re.fullmatch(r"fake-heldout-16px-n32-[0-9a-f]{16}\.npz", ref.path.name) and ref.path.parent == tmp_path
    assert ref.features.shape == (32, 8) and ref.sigma.shape == (8, 8)
    mtime = ref.path.stat().st_mtime_ns
    again = reference_stats(datamodule, extractor, 32, tmp_path)
    assert again.path.stat().st_mtime_ns == mtime and np.array_equal(again.mu, ref.mu)
    assert len(ref.sha256) == 64 and ref.id == ref.path.name
    with pytest.raises(ReferenceMismatchError, match="extractor sha256"):
        load_reference(ref.path, FakeExtractor(sha256="b" * 64))
