"""The FID reference cache key (split seed, image content, resolution) and the refusal of the training images as
a reference."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastgen.data import DataError, ImageTextFolderDataModule, MNISTDataModule
from fastgen.eval.metrics.reference import reference_stats
from fastgen.eval.evaluator.settings import eval_settings


class PooledPixels(torch.nn.Module):
    """A stand-in feature extractor: 4x4 average-pooled grey levels (16 features) of any uint8 image."""

    name, sha256 = "pooled-pixels", "c" * 64

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # reference.extract_features reads the device from it

    def forward(self, images):
        return F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True) / 255, 4).flatten(1)


def write_folder(root, seed, n=4):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"picture {i}"}) + "\n")
    return root


def features_of(datamodule, split, n):
    return PooledPixels()(datamodule.reference_images(split, n)).numpy()


def test_mnist_reference_depends_on_the_split_seed(tmp_path):
    """81 of the seed-0 held-out digits are training digits under seed 1: one cache file for both was wrong."""
    seed0 = reference_stats(MNISTDataModule(split_seed=0), PooledPixels(), 100, tmp_path, split="heldout")
    seed1 = reference_stats(MNISTDataModule(split_seed=1), PooledPixels(), 100, tmp_path, split="heldout")
    assert seed0.path != seed1.path and "seed1" in seed1.id
    np.testing.assert_allclose(seed1.features, features_of(MNISTDataModule(split_seed=1), "heldout", 100), atol=1e-6)


def test_folders_with_one_name_and_changed_images_get_their_own_reference(tmp_path):
    a = ImageTextFolderDataModule(write_folder(tmp_path / "a" / "train", seed=0), resolution=16)
    b = ImageTextFolderDataModule(write_folder(tmp_path / "b" / "train", seed=1), resolution=16)
    cache = tmp_path / "cache"
    ref_a = reference_stats(a, PooledPixels(), 4, cache, split="train")
    ref_b = reference_stats(b, PooledPixels(), 4, cache, split="train")
    assert ref_a.path != ref_b.path
    np.testing.assert_allclose(ref_b.features, features_of(b, "train", 4), atol=1e-6)

    Image.new("RGB", (24, 20), (255, 255, 255)).save(a.root / "2.png")  # the folder's content changes in place
    changed = reference_stats(a, PooledPixels(), 4, cache, split="train")
    assert changed.path != ref_a.path
    np.testing.assert_allclose(changed.features, features_of(a, "train", 4), atol=1e-6)
    assert reference_stats(a, PooledPixels(), 4, cache, split="train").path == changed.path  # then cached

    other_size = reference_stats(ImageTextFolderDataModule(a.root, resolution=12), PooledPixels(), 4, cache, split="train")
    assert other_size.path != changed.path and other_size.id.startswith("train-train-seed0-12px-n4-pil_bicubic")


def test_the_training_images_are_refused_as_the_reference(tmp_path):
    from fastgen.eval.metrics.reference import check_reference

    with pytest.raises(DataError, match=r"reference_split=train .*eval\.coco_root=DIR"):
        check_reference(eval_settings({"fid": {"reference_split": "train"}}), MNISTDataModule())
    folder = write_folder(tmp_path / "pics", seed=0, n=10)
    with pytest.raises(DataError, match=r"data\.heldout_fraction=0\.1 .*eval\.coco_root=DIR"):
        check_reference(eval_settings({"num_samples": 2}), ImageTextFolderDataModule(folder, resolution=16))
    spec = check_reference(eval_settings({"num_samples": 2}),
                           ImageTextFolderDataModule(folder, resolution=16, heldout_fraction=0.2))
    assert spec["split"] == "heldout" and spec["n"] == 2
    with pytest.raises(DataError, match="holds 2"):  # the held-out split is smaller than eval.num_samples
        check_reference(eval_settings({"num_samples": 3}),
                        ImageTextFolderDataModule(folder, resolution=16, heldout_fraction=0.2))
