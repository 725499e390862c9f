"""The fingerprint of a leaderboard row: its evaluation protocol, the precision sampling ran in, and provenance
(code version, device, time).

**Protocol.** Rows compare only when they were measured the same way: `PROTOCOL_COLUMNS` are the dataset, the
reference (its name carries split, split seed, resolution, preprocessing and a hash of the images' content), the
feature extractor and its weights, the prompt set, the sample count and noise seed, and the networks of the
other metrics (CLIP model + weights + activation, aesthetic predictor + its CLIP, digit classifier).
`protocol_id` hashes them; tables and plots never merge rows of different protocols. `reference_sha256` (the
hash of the statistics file) is provenance, not protocol: the extractor's float summation order moves it without
changing what is measured (two MNIST reference files in the committed leaderboard differ in it, and their
data-floor FIDs agree to 4e-7). Guidance and precision are settings of the sampled method: rows that differ in
them are different series of one protocol.

**Precision** is what sampling ran in: the dtypes of the parameters of the modules that ran during sampling
(`SamplingPrecision`), `-autocast` when under autocast — 'fp32', 'bf16', 'bf16+fp32' (e.g. a bf16 VAE with an
fp32 generator), 'bf16-autocast'. Older rows carried Lightning's flag instead; `normalise_precision` reads those
in this vocabulary ('32-true' -> fp32; '*-mixed' -> fp32, since the evaluation sampled outside autocast with the
fp32 weights mixed precision keeps).
"""

import datetime
import functools
import hashlib
import json
import subprocess
from pathlib import Path

PRECISION_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}  # torch dtype names
LIGHTNING_PRECISION = {"32-true": "fp32", "32": "fp32", "64-true": "fp64", "64": "fp64", "16-true": "fp16",
                       "bf16-true": "bf16", "16-mixed": "fp32", "16": "fp32", "bf16-mixed": "fp32"}
PROTOCOL_COLUMNS = ("dataset", "reference", "extractor", "extractor_sha256", "prompts_sha256",
                    "num_samples", "seed", "clip_model", "aesthetic_sha256", "aesthetic_clip", "classifier_sha256",
                    "reward_models")
OMITTED_WHEN_EMPTY = ("reward_models",)  # added after protocol ids were published: rows without it keep their ids


@functools.lru_cache(maxsize=1)
def git_commit():
    """HEAD of the repository fastgen runs from, with '+dirty' for uncommitted changes ('' outside a checkout)."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def _precision_name(dtype):
    name = str(dtype).removeprefix("torch.")
    return PRECISION_NAMES.get(name, name)


def device_name(device):
    """'cpu' or e.g. 'cuda:NVIDIA H100 80GB HBM3'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def normalise_precision(value):
    """A precision in this module's vocabulary ('' stays ''); ValueError for a value that is in neither."""
    value = str(value).strip()
    if value in ("", "nan"):
        return ""
    if value in LIGHTNING_PRECISION:
        return LIGHTNING_PRECISION[value]
    names = set(PRECISION_NAMES.values())
    base = value.removesuffix("-autocast")
    if base and all(part in names for part in base.split("+")):
        return value
    raise ValueError(f"precision={value!r} is not one of {sorted(names)} (joined by '+', optionally '-autocast') "
                     f"nor a Lightning precision flag {sorted(LIGHTNING_PRECISION)}")


class SamplingPrecision:
    """Context manager recording what the modules of `module` that run inside it compute in.

    Each module with parameters gets a forward pre-hook that records its parameters' dtype (or the autocast
    dtype, when autocast is on) and removes itself, so only the first call of each module pays for it (the
    latency warm-up batch), and modules that never run (a frozen teacher, a discriminator) are not counted.
    """

    def __init__(self, module):
        self.module, self.seen, self.handles = module, set(), []

    def _hook(self, name):
        import torch

        def hook(mod, args):
            param = next((p for p in mod.parameters(recurse=False) if p.is_floating_point()), None)
            device = param.device.type if param is not None else "cpu"
            if torch.is_autocast_enabled(device):
                self.seen.add(_precision_name(torch.get_autocast_dtype(device)) + "-autocast")
            elif param is not None:
                self.seen.add(_precision_name(param.dtype))
            self.handles[name].remove()
        return hook

    def __enter__(self):
        modules = [m for m in self.module.modules() if any(True for _ in m.parameters(recurse=False))]
        self.handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(modules)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False

    @property
    def name(self):
        """'fp32', 'bf16+fp32', 'bf16-autocast', ... (if no module ran its forward: the dtypes of all parameters)."""
        autocast = sorted(p for p in self.seen if p.endswith("-autocast"))
        seen = self.seen or {_precision_name(p.dtype) for p in self.module.parameters() if p.is_floating_point()}
        return "+".join(autocast) if autocast else "+".join(sorted(seen))


def protocol_fields(row):
    """The row's PROTOCOL_COLUMNS as strings ('' where empty; numbers without a trailing .0)."""
    def text(value):
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    fields = {column: text(row.get(column)) for column in PROTOCOL_COLUMNS}
    return {k: v for k, v in fields.items() if v or k not in OMITTED_WHEN_EMPTY}


def protocol_id(row):
    """A short hash of the row's evaluation protocol: equal iff every PROTOCOL_COLUMNS value is equal."""
    return hashlib.sha256(json.dumps(protocol_fields(row), sort_keys=True).encode()).hexdigest()[:10]


def describe_protocol(row):
    """One line naming the protocol's parts, for table headings."""
    f = protocol_fields(row)
    parts = [f"dataset {f['dataset'] or '?'}", f"{f['num_samples'] or '?'} samples, noise seed {f['seed'] or '?'}"]
    if f["reference"]:
        parts.append(f"reference {f['reference']}")
    if f["extractor"]:
        parts.append(f"extractor {f['extractor']} ({f['extractor_sha256'][:12]})")
    parts.append(f"prompts {f['prompts_sha256'][:12] or '?'}")
    for column, label in (("clip_model", "CLIP"), ("aesthetic_clip", "aesthetic CLIP"),
                          ("aesthetic_sha256", "aesthetic MLP"), ("classifier_sha256", "digit classifier")):
        if f[column]:
            value = f[column] if column in ("clip_model", "aesthetic_clip") else f[column][:12]
            parts.append(f"{label} {value}")
    if f.get("reward_models"):
        parts.append(f"rewards {f['reward_models']}")
    return "; ".join(parts)


def timestamp():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
