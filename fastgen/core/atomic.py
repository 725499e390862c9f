"""Atomic writes (text, or torch.save): write to a temporary file in the same folder, then `os.replace` it into place, so a
reader never sees a half-written file (leaderboards, caches, state files, the README block, CSV logs). A write
that fails removes its temporary file."""

import os
from pathlib import Path


def write_text_atomic(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch_atomic(obj, path) -> None:
    """`torch.save(obj)` to `path` the same way (its folder created if needed; the temporary file is
    `.<name>.tmp<pid>`, what `fastgen.runtime.run_folder` removes when a killed save left it)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
