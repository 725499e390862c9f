"""Reference (real-image) Inception statistics: computed once from real images, cached as .npz.

The reference is MS-COCO 2017 val when `eval.coco_root` is set (fastgen.data.coco: the first `eval.num_samples`
images, whose captions are the prompts), else the `eval.fid.reference_split` split of the data module (MNIST's
held-out digits, an image-text folder's `data.heldout_fraction`). The training images themselves are refused.

Cache key: the source's `reference_spec(split, n)` -- dataset, split and its seed, resolution, preprocessing,
n and the content hash of the image list -- with the extractor's sha256, hashed. The file name spells the
readable part and ends in 16 hex digits of that hash, `<dataset>-<split>[-seed<k>]-<R>px-n<N>-<preprocessing>-
<key>.npz`; it is the leaderboard's `reference` column (`reference_sha256` the file's hash). A source without
`reference_spec` is keyed by the content of its images. The file holds `mu`, `sigma`, the `features` (for KID),
the spec and the extractor's name and sha256; loading a reference made with a different extractor raises.
"""

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastgen.core.files import atomic_path
from fastgen.data.errors import DataError
from fastgen.eval.models.assets import sha256_file
from fastgen.eval.evaluator.distributed import barrier, is_rank_zero
from fastgen.eval.metrics.fid import feature_stats


class ReferenceMismatchError(ValueError):
    """A reference statistics file made with another feature extractor."""


@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    path: Path
    spec: dict | None = None

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


def reference_source(settings, datamodule):
    """(source, split) of the FID reference: COCO val under `eval.coco_root`, else the data module's
    `eval.fid.reference_split`. A reference that would be the training images is refused (DataError)."""
    if settings.coco_root:
        from fastgen.data.coco import SPLIT, coco_val

        resolution = settings.resolution or getattr(datamodule, "resolution", None)
        return coco_val(str(settings.coco_root), resolution), SPLIT
    split = settings.fid.reference_split
    if split == "train":
        raise DataError("eval.fid.reference_split=train would score the generator against its own training images "
                        "(memorising them reads FID 0): set eval.coco_root=DIR, or a held-out split "
                        "(eval.fid.reference_split=heldout; for an image-text folder also data.heldout_fraction=0.1)")
    return datamodule, split


def reference_spec(source, split, n):
    """(spec, images): the source's `reference_spec`, else one keyed by the content of its images (then loaded)."""
    if hasattr(source, "reference_spec"):
        return source.reference_spec(split=split, n=n), None
    images = source.reference_images(split=split, n=n)
    spec = {"dataset": getattr(source, "name", type(source).__name__), "split": split,
            "resolution": images.shape[-1], "n": len(images),
            "images_sha256": hashlib.sha256(images.numpy().tobytes() + str(tuple(images.shape)).encode()).hexdigest()}
    return spec, images


def reference_path(cache_dir, spec, extractor_sha256):
    """The cache file of a reference spec and extractor (module doc)."""
    key = hashlib.sha256(json.dumps({**spec, "extractor_sha256": extractor_sha256}, sort_keys=True).encode())
    parts = [spec["dataset"], spec["split"]]
    if spec.get("split_seed") is not None:
        parts.append(f"seed{spec['split_seed']}")
    parts += [f"{spec['resolution']}px", f"n{spec['n']}"]
    if spec.get("preprocessing"):
        parts.append(spec["preprocessing"])
    name = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(part)) for part in parts)
    return Path(cache_dir) / f"{name}-{key.hexdigest()[:16]}.npz"


def save_reference(path, features, extractor, spec=None):
    """Write the statistics of `features` with the extractor's fingerprint (and the spec) to `path` atomically."""
    mu, sigma = feature_stats(features)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, mu=mu, sigma=sigma, features=np.asarray(features, dtype=np.float32),
                 extractor=extractor.name, extractor_sha256=extractor.sha256, spec=json.dumps(spec, sort_keys=True))


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
        spec = json.loads(str(data["spec"])) if "spec" in data.files else None
        return ReferenceStats(data["mu"], data["sigma"], data["features"], path, spec)


def reference_stats(source, extractor, n, cache_dir, split="heldout", batch_size=100, path=None):
    """Reference statistics of the first `n` images of `split`: from `path` or the cache, computed once if absent.

    Under DDP rank 0 computes and writes the file while the other ranks wait, then every rank loads it.
    """
    if path is None:
        spec, images = reference_spec(source, split, n)
        path = reference_path(cache_dir, spec, extractor.sha256)
        if is_rank_zero() and not path.is_file():
            images = source.reference_images(split=split, n=n) if images is None else images
            save_reference(path, extract_features(extractor, images, batch_size).numpy(), extractor, spec)
        barrier()
    return load_reference(path, extractor)


def evaluation_reference(settings, datamodule, extractor):
    """The evaluation's reference statistics: `eval.fid.reference` if given, else `reference_source`'s."""
    if settings.fid.reference:
        return load_reference(settings.fid.reference, extractor)
    source, split = reference_source(settings, datamodule)
    return reference_stats(source, extractor, settings.num_samples, settings.cache_dir, split=split,
                           batch_size=settings.batch_size)


def check_reference(settings, datamodule):
    """Fail early (before training) on prompts or a reference the evaluation could not build; returns the spec
    (None when FID is off or `eval.fid.reference` is a file). Reads files, extracts no features."""
    if settings.coco_root:
        from fastgen.data.coco import coco_prompts

        coco_prompts(settings)
    if not settings.fid.enabled or settings.fid.reference:
        return None
    source, split = reference_source(settings, datamodule)
    return reference_spec(source, split, settings.num_samples)[0]


def warn_resolution_mismatch(reference, images):
    """Warn (once per pair of sizes) when generated images are not at the resolution the reference was made at."""
    expected = (reference.spec or {}).get("resolution") if reference is not None else None
    if expected and images.shape[-1] != expected and (expected, images.shape[-1]) not in _WARNED_SIZES:
        _WARNED_SIZES.add((expected, images.shape[-1]))
        warnings.warn(f"generated images are {images.shape[-1]} px but the FID reference {reference.id} is "
                      f"{expected} px: set data.resolution (or eval.resolution) to the model's output size",
                      stacklevel=2)


_WARNED_SIZES = set()
