"""Pieces the data modules share: JSON-lines reading with file/line errors, image decoding, pixel scaling, a
training loader that a resumed run continues where it stopped, content hashes of image files (the FID reference
cache key)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from fastgen.data.errors import DataError


def require_keys(record, keys, where):
    """Raise a DataError naming `where` (file and line) and the keys `record` lacks."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")


def read_jsonl(path, keys):
    """[(line number, object)] from a JSON-lines file, blank lines skipped; every object must hold `keys`."""
    records = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} line {lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                            "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(record).__name__}")
        require_keys(record, keys, f"{path} line {lineno}")
        records.append((lineno, record))
    return records


def decode_image(path):
    """A PIL RGB image of 8-bit channels. 16-bit images are scaled (0..65535 -> 0..255) and float images taken as
    [0, 1] (refused outside it), where PIL's `convert("RGB")` would clip them to white or black."""
    try:
        with Image.open(path) as opened:
            opened.load()
            if opened.mode in ("I", "F") or opened.mode.startswith("I;16"):
                return Image.fromarray(_wide_to_uint8(path, opened)).convert("RGB")
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def _wide_to_uint8(path, image):
    """uint8 [H, W] from a single-channel 16-bit, 32-bit integer or float image."""
    values = np.asarray(image)
    if image.mode == "F":
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise DataError(f"{path}: float image with values in [{low:g}, {high:g}]; fastgen reads float images as "
                            "[0, 1]: rescale it, or save it as an 8-bit PNG")
        return np.round(values * 255).astype(np.uint8)
    values = values.astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise DataError(f"{path}: {image.mode} image with values in [{values.min()}, {values.max()}] is neither 8- nor "
                        "16-bit; save it as an 8-bit PNG")
    return np.round(values / 257).astype(np.uint8)  # 65535 / 255 = 257


def uint8_to_pixels(images):
    """uint8 images (0..255) -> float pixels in [-1, 1], the batch contract's `image` range."""
    return images.float() / 127.5 - 1.0


class EpochSampler(Sampler):
    """A permutation of range(n) per pass, drawn from a generator of its own seeded by (seed, pass): the order
    depends on nothing else, so a resumed run can take it up mid-pass (ResumableLoader)."""

    def __init__(self, n, seed):
        self.n, self.seed = n, seed
        self.epoch = -1  # the pass last started
        self.start = 0  # where the next pass starts (set by a resume)

    def __len__(self):
        return self.n

    def __iter__(self):
        self.epoch += 1
        start, self.start = self.start, 0
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        yield from order[start:].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler whose `state_dict` (pass, samples consumed) Lightning stores in every
    checkpoint and hands back on resume, so a run stopped mid-epoch continues with the very batches it would have
    seen. (Lightning fetches batches of a sized loader one at a time, so batches yielded = batches trained.) Under
    DDP Lightning wraps the sampler; the position is then not kept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0

    def _epoch_sampler(self):
        return self.sampler if isinstance(self.sampler, EpochSampler) else None

    def __iter__(self):
        sampler = self._epoch_sampler()
        first = sampler.start if sampler is not None else 0
        self._first, self._yielded = first, 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self):
        sampler = self._epoch_sampler()
        if sampler is None:
            return {}
        return {"epoch": sampler.epoch, "position": getattr(self, "_first", 0) + self._yielded * self.batch_size}

    def load_state_dict(self, state):
        sampler = self._epoch_sampler()
        if sampler is None or not state:
            return
        if state["position"] + self.batch_size > sampler.n:  # the pass was over (drop_last): the next one starts
            sampler.epoch, sampler.start = state["epoch"], 0
        else:
            sampler.epoch, sampler.start = state["epoch"] - 1, state["position"]


def shuffled_loader(dataset, batch_size, num_workers, seed=None):
    """Shuffled training loader dropping the last partial batch (every step sees `batch_size` samples), resumable
    mid-epoch. The order comes from `seed` (default: torch's initial seed, which `seed_everything` sets)."""
    if batch_size < 1 or len(dataset) < batch_size:
        raise DataError(
            f"data.batch_size={batch_size} must be between 1 and the dataset size ({len(dataset)} samples)"
        )
    seed = torch.initial_seed() % 2**31 if seed is None else seed
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed),
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # worker seeds: not drawn from the global RNG
    )


def files_sha256(root, paths):
    """sha256 over the ordered (path relative to `root`, file sha256) pairs: the content of an image list."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            file_digest = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{file_digest}\n".encode())
    return digest.hexdigest()
