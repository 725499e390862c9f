"""The provenance columns of a leaderboard row: code version, device, precision and time."""

import datetime
import functools
import subprocess
from pathlib import Path

import torch

PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


@functools.lru_cache(maxsize=1)
def git_commit():
    """HEAD of the repository fastgen runs from, with '+dirty' for uncommitted changes ('' outside a checkout)."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def device_name(device):
    """'cpu' or e.g. 'cuda:NVIDIA H100 80GB HBM3'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def module_precision(module):
    """'fp32' / 'bf16' / ... of a module's first floating-point parameter."""
    for p in module.parameters():
        if p.is_floating_point():
            return PRECISION_NAMES.get(p.dtype, str(p.dtype))
    return ""


def timestamp():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
