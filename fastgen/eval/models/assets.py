"""Locating metric weights: file hashes for the leaderboard fingerprint and the one "not computed" warning."""

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

_SHA256_CACHE = {}
_WARNED = set()


class MissingAssetWarning(UserWarning):
    """A metric is not computed because its weights were not found."""


@dataclass
class AssetLookup:
    """Where an asset was looked for and what was found: the doctor prints these, loaders use `found`."""

    name: str
    config_key: str
    looked_in: list = field(default_factory=list)
    found: Path | None = None
    note: str = ""

    def consider(self, path, note=""):
        """Record `path` as looked at; keep it as `found` if it is the first existing file."""
        if path is None:
            return self
        path = Path(os.path.expanduser(str(path)))
        self.looked_in.append(str(path))
        if self.found is None and path.is_file():
            self.found, self.note = path, note
        return self

    def describe(self):
        status = f"found {self.found}" if self.found else "MISSING"
        looked = "; ".join(self.looked_in) or "nowhere (nothing configured)"
        return f"{status} (looked in: {looked}; set {self.config_key}=/path)"


def file_or_hub_cache(path, repo: str, filename: str, what: str, config_key: str) -> Path:
    """`path` if it is a file; with no path, `filename` of hub repo `repo` in the local Hugging Face cache (never a
    download). Else a ValueError in one line naming the file and `config_key`."""
    if path is not None and Path(os.path.expanduser(str(path))).is_file():
        return Path(os.path.expanduser(str(path)))
    if path is None:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    where = f"{path} does not exist" if path is not None else f"{filename} is not in the Hugging Face cache ({repo})"
    raise ValueError(f"{what}: {where}: set {config_key}=/path/to/{filename}")


def sha256_file(path):
    """sha256 hex digest of a file, cached per (path, size, mtime) for this process."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def warn_not_computed(metric, config_key, reason):
    """Warn once per (metric, key, reason) that `metric` is left empty, naming the config key to set."""
    message = f"{metric} not computed: {reason}. Set {config_key}=/path/to/weights to compute it."
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, MissingAssetWarning, stacklevel=3)
