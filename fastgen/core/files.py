"""Files fastgen writes and reads. Writes are atomic: to a temporary path beside the target
(`.<name>.<pid>.tmp<suffix>`), then `os.replace`d into place, so a reader never sees a half-written file or folder
(checkpoints, leaderboards, caches, state files, images, exported models). A write that fails removes its temporary
path; one killed outright leaves it, and `fastgen.runtime.run_folder` removes such files when the run starts again.
Checkpoints are read strictly: a truncated or foreign file is one line naming it and the key that pointed at it."""

import contextlib
import os
import shutil
from pathlib import Path

TMP_MARK = ".tmp"


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside `path` (its folder created) to write a file or a folder into; when the block
    ends without an error it replaces `path` (a folder there is removed first). `suffix` keeps the extension a
    writer infers its format from (".png", ".npz")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_MARK}{suffix}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch_atomic(obj, path) -> None:
    """`torch.save(obj)` to `path` the same way."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint_header(path, key: str) -> dict:
    """The checkpoint's dict with tensors memory-mapped (nothing is read but the zip's directory), or a ValueError
    in one line naming the file and `key` when it is truncated or not a checkpoint."""
    import torch

    try:
        return torch.load(path, mmap=True, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / OSError for broken files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{key}={path}: not a readable checkpoint (truncated or corrupt: {reason}); point {key} at "
                         "another checkpoint, or start the run again") from None
