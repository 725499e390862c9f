"""Pieces the data modules share: JSON-lines reading with file/line errors, pixel scaling, the training loader,
content hashes of image files (the FID reference cache key)."""

import hashlib
import json
from pathlib import Path

from torch.utils.data import DataLoader

from fastgen.data.errors import DataError


def require_keys(record, keys, where):
    """Raise a DataError naming `where` (file and line) and the keys `record` lacks."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")


def read_jsonl(path, keys):
    """[(line number, object)] from a JSON-lines file, blank lines skipped; every object must hold `keys`."""
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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


def uint8_to_pixels(images):
    """uint8 images (0..255) -> float pixels in [-1, 1], the batch contract's `image` range."""
    return images.float() / 127.5 - 1.0


def shuffled_loader(dataset, batch_size, num_workers):
    """Shuffled training loader dropping the last partial batch (every step sees `batch_size` samples)."""
    if batch_size < 1 or len(dataset) < batch_size:
        raise DataError(
            f"data.batch_size={batch_size} must be between 1 and the dataset size ({len(dataset)} samples)"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def files_sha256(root, paths):
    """sha256 over the ordered (path relative to `root`, file sha256) pairs: the content of an image list."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            file_digest = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{file_digest}\n".encode())
    return digest.hexdigest()
