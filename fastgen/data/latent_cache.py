"""Encode once, train from the cache: model-space latents and prompt embeddings in safetensors shards.

A cache directory holds
  shard-00000.safetensors, ...  tensors "latent" [n, C, H, W] and "prompt_embeds" [n, L, D] for rows
                                [k * shard_size, k * shard_size + n); safetensors metadata: fingerprint,
                                count and the sha256 of the shard's prompts;
  index.json                    {"format", "fingerprint", "count", "shard_size", "shards": [{"file", "count"}],
                                "latent_shape", "prompt_embeds_shape", "prompts", "resolution"}, written last.
Every file is written to a temporary name and renamed, so a file that exists is complete.

Resume: `build_latent_cache` run again on the same (unshuffled) data skips the encoder for rows whose shard
already exists, after checking that shard's fingerprint and, once its rows are seen, its prompts: a shard
built from other data or another encoder is an error, never silently mixed in.
"""

import bisect
import contextlib
import json
import re
from pathlib import Path

import lightning as L
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from fastgen.core.files import atomic_path, write_text_atomic
from fastgen.data.errors import DataError
from fastgen.data.loading import require_keys, shuffled_loader
from fastgen.data.prompts import prompts_sha256, sample_prompts

INDEX_FILE = "index.json"
CACHE_FORMAT = "fastgen-latent-cache/1"
BUILD_HINT = "build it with `python -m fastgen.cache_latents --data FOLDER --pretrained MODEL --out DIR`"
INDEX_KEYS = ("format", "fingerprint", "count", "shards", "latent_shape", "prompt_embeds_shape", "prompts")


def shard_file(k):
    """File name of shard `k`."""
    return f"shard-{k:05d}.safetensors"


@contextlib.contextmanager
def open_shard(path):
    """safe_open(path), or a DataError naming the shard when it is truncated or not a safetensors file."""
    try:
        handle = safe_open(path, framework="pt")
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: unreadable cache shard ({e}); delete it and run `python -m fastgen.cache_latents` "
                        "again with the same arguments (the other shards are kept)") from None
    with handle as f:
        yield f


def _write_json(path, obj):
    write_text_atomic(path, json.dumps(obj))


def _write_shard(path, latent, prompt_embeds, prompts, fingerprint):
    metadata = {"fingerprint": fingerprint, "count": str(len(prompts)), "prompts_sha256": prompts_sha256(prompts)}
    with atomic_path(path) as tmp:
        save_file({"latent": latent.contiguous(), "prompt_embeds": prompt_embeds.contiguous()}, tmp, metadata=metadata)


def _shard_metadata(path, fingerprint):
    """Metadata of an existing shard (None if absent); a shard built under another fingerprint is an error."""
    if not path.is_file():
        return None
    with open_shard(path) as f:
        metadata = f.metadata() or {}
    if metadata.get("fingerprint") != fingerprint:
        raise DataError(
            f"{path} was built with fingerprint {metadata.get('fingerprint')!r}, not {fingerprint!r} "
            f"(other data or encoder): delete {path.parent} or write the cache elsewhere"
        )
    return metadata


def build_latent_cache(dataloader, encode_images, encode_prompts, out_dir, shard_size=1024, fingerprint="",
                       resolution=None):
    """Encode every batch {"image", "prompt"} of an unshuffled loader into shards + index.json; returns the index.

    `encode_images(pixels) -> latents` and `encode_prompts(list[str]) -> embeddings` run under inference mode.
    `fingerprint` identifies data and encoders (stored in every shard and the index; checked on resume);
    `resolution` (pixels) is recorded for the data module to check against `data.resolution`.
    """
    if shard_size < 1:
        raise DataError(f"shard_size={shard_size} must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts, shards, existing = [], [], {}
    pending_latents, pending_embeds = [], []  # encoded rows of shards not yet on disk, in row order

    def shard_exists(k):
        if k not in existing:
            existing[k] = _shard_metadata(out_dir / shard_file(k), fingerprint)
        return existing[k] is not None

    def finish_shard(k, end):
        rows = prompts[k * shard_size : end]
        path = out_dir / shard_file(k)
        if shard_exists(k):
            if existing[k].get("count") != str(len(rows)) or existing[k].get("prompts_sha256") != prompts_sha256(rows):
                raise DataError(f"{path} holds other prompts than the data now gives: delete it and build again")
        else:
            latent, embeds = torch.cat(pending_latents), torch.cat(pending_embeds)
            _write_shard(path, latent[: len(rows)], embeds[: len(rows)], rows, fingerprint)
            pending_latents[:] = [latent[len(rows) :]]
            pending_embeds[:] = [embeds[len(rows) :]]
        shards.append({"file": shard_file(k), "count": len(rows)})

    with torch.inference_mode():
        for batch in dataloader:
            batch_prompts = list(batch["prompt"])
            start = len(prompts)
            prompts += batch_prompts
            needed = [not shard_exists(r // shard_size) for r in range(start, len(prompts))]
            if any(needed):
                mask = torch.tensor(needed)
                pending_latents.append(encode_images(batch["image"][mask]).detach().cpu())
                pending_embeds.append(encode_prompts([p for p, n in zip(batch_prompts, needed) if n]).detach().cpu())
            while len(prompts) >= (len(shards) + 1) * shard_size:
                finish_shard(len(shards), (len(shards) + 1) * shard_size)
    if not prompts:
        raise DataError("the dataloader yielded no samples: nothing to cache")
    if len(prompts) > len(shards) * shard_size:
        finish_shard(len(shards), len(prompts))
    with open_shard(out_dir / shards[0]["file"]) as f:
        latent_shape, embeds_shape = (f.get_slice(name).get_shape()[1:] for name in ("latent", "prompt_embeds"))
    index = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "count": len(prompts),
        "shard_size": shard_size,
        "shards": shards,
        "latent_shape": latent_shape,
        "prompt_embeds_shape": embeds_shape,
        "prompts": prompts,
        "resolution": resolution,
    }
    _write_json(out_dir / INDEX_FILE, index)
    return index


def read_latent_cache_index(cache_dir):
    """The index of a complete, consistent cache; any gap or mismatch is a DataError naming the file."""
    cache_dir = Path(cache_dir)
    index_path = cache_dir / INDEX_FILE
    if not cache_dir.is_dir():
        raise DataError(f"data.cache_dir={str(cache_dir)!r}: folder does not exist; {BUILD_HINT}")
    if not index_path.is_file():
        raise DataError(f"{index_path} is missing (no cache, or its build did not finish); {BUILD_HINT}")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{index_path}: not valid JSON ({e}); {BUILD_HINT}") from None
    if not isinstance(index, dict):
        raise DataError(f"{index_path}: expected a JSON object; {BUILD_HINT}")
    require_keys(index, INDEX_KEYS, str(index_path))
    if index["format"] != CACHE_FORMAT:
        raise DataError(f"{index_path}: format {index['format']!r} is not {CACHE_FORMAT!r}; {BUILD_HINT}")
    counts = [shard["count"] for shard in index["shards"]]
    if sum(counts) != index["count"] or len(index["prompts"]) != index["count"]:
        raise DataError(
            f"{index_path}: count {index['count']} disagrees with its shards ({sum(counts)}) "
            f"or prompts ({len(index['prompts'])}); {BUILD_HINT}"
        )
    for shard in index["shards"]:
        path = cache_dir / shard["file"]
        if not path.is_file():
            raise DataError(f"{path} is listed in {index_path} but missing; {BUILD_HINT} (existing shards are kept)")
        with open_shard(path) as f:
            shapes = {name: f.get_slice(name).get_shape() for name in ("latent", "prompt_embeds")}
        expected = {
            "latent": [shard["count"], *index["latent_shape"]],
            "prompt_embeds": [shard["count"], *index["prompt_embeds_shape"]],
        }
        if shapes != expected:
            raise DataError(f"{path} holds shapes {shapes}, but {index_path} says {expected}; {BUILD_HINT}")
    return index


class LatentCacheDataset(Dataset):
    """{"latent", "prompt_embeds", "prompt"} rows read from memory-mapped shards (opened lazily per process)."""

    def __init__(self, cache_dir, index):
        self.paths = [Path(cache_dir) / shard["file"] for shard in index["shards"]]
        counts = [shard["count"] for shard in index["shards"]]
        self.starts = [sum(counts[:k]) for k in range(len(counts))]
        self.prompts = index["prompts"]
        self._open = {}

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def __len__(self):
        return len(self.prompts)

    def __getitem__(self, i):
        k = bisect.bisect_right(self.starts, i) - 1
        if k not in self._open:
            self._open[k] = safe_open(self.paths[k], framework="pt")
        shard, row = self._open[k], i - self.starts[k]
        return {
            "latent": shard.get_slice("latent")[row],
            "prompt_embeds": shard.get_slice("prompt_embeds")[row],
            "prompt": self.prompts[i],
        }


def cache_resolution(index):
    """The pixel resolution a cache was encoded at (older caches: from their fingerprint), or None if unknown."""
    if index.get("resolution") is not None:
        return int(index["resolution"])
    found = re.search(r"\bresolution=(\d+)\b", index.get("fingerprint", ""))
    return int(found.group(1)) if found else None


class LatentCacheDataModule(L.LightningDataModule):
    """Batches {"latent", "prompt_embeds", "prompt"} from a cache written by `build_latent_cache`.

    `resolution`: the pixel resolution the experiment trains at (the `*_sd15` experiments and `debug=tiny` set
    `data.resolution`); it must be the one the cache was encoded at (`--resolution` of fastgen.cache_latents)."""

    def __init__(self, cache_dir, batch_size=4, num_workers=0, resolution=None):
        super().__init__()
        self.save_hyperparameters()
        bad = isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
        if resolution is not None and bad:
            raise DataError(f"data.resolution={resolution!r} must be a positive integer (or null: the cache's)")
        self.cache_dir, self.batch_size, self.num_workers = Path(cache_dir), batch_size, num_workers
        self.resolution = resolution
        self.name = self.cache_dir.name
        self.index = None

    def setup(self, stage=None):
        """Read and check index.json and every shard header (once), and the resolution against the cache's."""
        if self.index is None:
            index = read_latent_cache_index(self.cache_dir)
            encoded = cache_resolution(index)
            if self.resolution is not None and encoded is not None and encoded != self.resolution:
                raise DataError(
                    f"data.resolution={self.resolution} but the latent cache {self.cache_dir} was encoded at "
                    f"{encoded} px: set data.resolution={encoded}, or build a cache with --resolution {self.resolution}"
                )
            self.resolution = self.resolution or encoded
            self.index = index

    def train_dataloader(self):
        self.setup()
        return shuffled_loader(LatentCacheDataset(self.cache_dir, self.index), self.batch_size, self.num_workers)

    def eval_prompts(self, n, seed=0):
        """`n` of the cached captions in a seeded order (cycling if `n` exceeds the cache)."""
        self.setup()
        return sample_prompts(self.index["prompts"], n, seed)
