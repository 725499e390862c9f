"""The run folder `runs/<run_name>/`: who may start in it, which checkpoint a run resumes, what an interrupted
save left behind, and the config the run trains with (`<run>/config.yaml`).

A fresh run (`ckpt_path` unset) is refused in a folder that already holds a run (a checkpoint or a CSV log),
rather than moving the old run aside or starting over in it: Lightning would delete its `metrics.csv`, write
`last-v1.ckpt` next to the old `last.ckpt`, and a later `ckpt_path=last` would resume the stale one. The usual
cause is a forgotten `ckpt_path=last`, which the message names; moving a run aside silently would double its disk
use (GBs per checkpoint at SD scale) and hide the mistake. Nothing is deleted unless the user deletes it.
"""

from __future__ import annotations

import os
from pathlib import Path


from fastgen.core.files import write_text_atomic
from fastgen.core.files import TMP_MARK, read_checkpoint_header

LAST = "last.ckpt"


def checkpoints_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def holds_a_run(output_dir) -> list[str]:
    """The files that show a run already trained in `output_dir` (checkpoints, a CSV log), relative to it."""
    output_dir = Path(output_dir)
    found = sorted(p for p in checkpoints_dir(output_dir).glob("*.ckpt") if p.is_file())
    log = output_dir / "logs" / "metrics.csv"
    if log.is_file() and log.stat().st_size > 0:
        found.append(log)
    return [str(p.relative_to(output_dir)) for p in found]


def refuse_fresh_run_over_old(output_dir, ckpt_path) -> None:
    """A ValueError when a run without `ckpt_path=last` would start over a run already in `output_dir` (a
    checkpoint given by path from elsewhere counts as fresh here: it must not mix with this folder's run)."""
    if ckpt_path == "last":
        return
    inside = ckpt_path is not None and Path(ckpt_path).resolve().parent == checkpoints_dir(output_dir).resolve()
    old = holds_a_run(output_dir)
    if old and not inside:
        raise ValueError(
            f"{output_dir} already holds a run ({', '.join(old)}): continue it with ckpt_path=last, start a new one "
            f"with run_name=<new name>, or delete {output_dir} first"
        )


def resolve_ckpt_path(ckpt_path: str | None, output_dir) -> str | None:
    """`last` -> this run's `checkpoints/last.ckpt` (None, with a message, when there is none yet); a path must be a
    readable checkpoint. Checked here, before anything is built, not after minutes of model loading."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = checkpoints_dir(output_dir) / LAST
        if not last.is_file():
            print(f"[fastgen] ckpt_path=last but {last} does not exist yet: starting a fresh run")
            return None
        ckpt_path = str(last)
        print(f"[fastgen] resuming from {last}")
    elif not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    read_checkpoint_header(ckpt_path, "ckpt_path")
    return ckpt_path


def remove_interrupted_saves(output_dir) -> list[Path]:
    """Delete the temporary files (`.<name>.<pid>.tmp`, and `.<name>.tmp<pid>` of older versions) that a save killed outright left in the
    run folder, its checkpoint folders and its log folder (a full checkpoint's size each). Only one run uses a run
    folder at a time."""
    removed = []
    found = [*Path(output_dir).glob(f".*{TMP_MARK}*"), *checkpoints_dir(output_dir).rglob(f".*{TMP_MARK}*"),
             *(Path(output_dir) / "logs").glob(f".*{TMP_MARK}*")]
    for tmp in found:
        if tmp.is_file():
            size = tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            print(f"[fastgen] removed {tmp} ({size / 2**20:.1f} MiB), left by an interrupted save")
            removed.append(tmp)
    return removed


def write_run_config(output_dir, text: str) -> Path:
    """`<run>/config.yaml`: the resolved config this run (or its latest resume) trains with."""
    path = Path(output_dir) / "config.yaml"
    os.makedirs(output_dir, exist_ok=True)
    write_text_atomic(path, text)
    return path
