"""Reference (real-image) Inception statistics: computed once from the data module's held-out images, cached as .npz.

The file name is the cache key: `<dataset>-<split>-<H>px-n<N>-<extractor sha256[:16]>.npz`. The file holds
`mu`, `sigma`, the `features` (for KID) and the extractor's name and sha256; loading a reference made with a
different extractor raises. `reference` (the leaderboard column) is the file name, `reference_sha256` its hash.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastgen.eval.assets import sha256_file
from fastgen.eval.distributed import barrier, is_rank_zero
from fastgen.eval.fid import feature_stats


class ReferenceMismatchError(ValueError):
    """A reference statistics file made with another feature extractor."""


@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    path: Path

    @property
    def id(self):
        return self.path.name

    @property
    def sha256(self):
        return sha256_file(self.path)


@torch.no_grad()
def extract_features(extractor, images, batch_size=100):
    """Features [N, D] of uint8 images [N, C, H, W], in batches, on the extractor's device, returned on CPU."""
    device = next(extractor.parameters()).device
    return torch.cat([extractor(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def reference_path(cache_dir, dataset, split, resolution, n, extractor_sha256):
    return Path(cache_dir) / f"{dataset}-{split}-{resolution}px-n{n}-{extractor_sha256[:16]}.npz"


def save_reference(path, features, extractor):
    """Write the statistics of `features` with the extractor's fingerprint to `path` atomically."""
    mu, sigma = feature_stats(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, features=np.asarray(features, dtype=np.float32),
             extractor=extractor.name, extractor_sha256=extractor.sha256)
    os.replace(tmp, path)


def load_reference(path, extractor):
    """Load a reference .npz, refusing one made with a different extractor (compared by weights sha256)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} not found (eval.fid.reference)")
    with np.load(path) as data:
        made_with = str(data["extractor_sha256"])
        if made_with != extractor.sha256:
            raise ReferenceMismatchError(
                f"{path} was computed with extractor sha256 {made_with[:16]}..., but the current Inception weights "
                f"({getattr(extractor, 'weights_path', extractor.name)}) hash to {extractor.sha256[:16]}...: FID "
                "against it would not be "
                "comparable. Delete the file (or point eval.fid.reference elsewhere) to recompute it."
            )
        return ReferenceStats(data["mu"], data["sigma"], data["features"], path)


def reference_stats(datamodule, extractor, n, cache_dir, split="heldout", batch_size=100, path=None):
    """Reference statistics of the first `n` images of `split`: from `path` or the cache, computed once if absent.

    Under DDP rank 0 computes and writes the file while the other ranks wait, then every rank loads it.
    """
    if path is None:
        images = None if hasattr(datamodule, "resolution") else datamodule.reference_images(split=split, n=n)
        resolution = datamodule.resolution if images is None else images.shape[-1]
        path = reference_path(cache_dir, datamodule.name, split, resolution, n, extractor.sha256)
        if is_rank_zero() and not path.is_file():
            images = datamodule.reference_images(split=split, n=n) if images is None else images
            save_reference(path, extract_features(extractor, images, batch_size).numpy(), extractor)
        barrier()
    return load_reference(path, extractor)
