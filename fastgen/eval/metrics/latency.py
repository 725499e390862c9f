"""Latency and memory of the sampling path: ms per image, images per second and peak memory at one batch size.

What is timed is one generation batch end to end, as a user would call it: drawing the batch's noise,
`method.sample` (text encoding and every network call, CFG included) and `backbone.decode` (the VAE of latent
models). On a GPU each timed call is bracketed by `torch.cuda.synchronize`. The first `warmup` calls are run but
not timed (cuDNN autotune, lazy allocation, compilation); `ms_per_image` is the median over the timed calls of
their ms per image (`images_per_s` its inverse), so one call slowed by another process does not move it.

`peak_mem_mb` (CUDA only) is the memory of the sampling path alone: the parameters and buffers of the modules the
sampling calls (found with forward hooks during the first call: e.g. the EMA generator, text encoder and VAE --
not the online generator, discriminator, teacher or metric networks unless sampling runs them) plus the most
memory allocated during a timed call above what was allocated before it (activations, workspace). On the CPU it
is left empty: torch keeps no allocator statistics there, and the process's RSS holds everything else.

Each result also says how it was measured: `latency_device` (GPU name or CPU model), `latency_threads` (torch
intra-op threads), `latency_batch` (images per timed call) and `latency_repeats` (timed calls).
"""

import functools
import platform
import statistics
import time
from pathlib import Path

import torch

LATENCY_COLUMNS = ("ms_per_image", "images_per_s", "peak_mem_mb", "latency_device", "latency_threads",
                   "latency_batch", "latency_repeats")


@functools.lru_cache(maxsize=None)
def _cpu_model():
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def latency_device(device):
    """'cuda:<GPU name>' or 'cpu:<CPU model>'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{_cpu_model()}" if device.type == "cpu" else device.type


def _local(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor shard (FSDP)


def called_weight_bytes(module, fn, device=None):
    """(fn(), bytes of the parameters and buffers on `device` of the submodules of `module` that `fn` called)."""
    called = {}

    def record(m, args):  # returns None: the inputs are left as they are
        called[id(m)] = m

    hooks = [m.register_forward_pre_hook(record) for m in module.modules()]
    try:
        result = fn()
    finally:
        for hook in hooks:
            hook.remove()
    storages = {}
    for m in called.values():
        for tensor in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            tensor = _local(tensor)
            if device is None or tensor.device == torch.device(device):
                storage = tensor.untyped_storage()
                storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return result, sum(storages.values())


class LatencyMeter:
    """Time generation calls of one step count; the first `warmup` calls are run but not timed. `module` (the
    sampling method) is hooked during the first call on CUDA to count the weights sampling uses."""

    def __init__(self, device, warmup=1, module=None):
        self.device = torch.device(device)
        self.warmup = warmup
        self.module = module
        self.calls = 0
        self.ms_per_image = []  # one entry per timed call
        self.batch = 0
        self.weight_bytes = 0
        self.extra_bytes = 0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn, num_images):
        """Run `fn()`; if past warm-up, record its wall time per image. Returns fn's result."""
        cuda = self.device.type == "cuda"
        count_weights = cuda and self.calls == 0 and self.module is not None
        timed = self.calls >= self.warmup
        self.calls += 1
        self._sync()
        if timed and cuda:
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        if count_weights:
            result, self.weight_bytes = called_weight_bytes(self.module, fn, self.device)
        else:
            result = fn()
        self._sync()
        seconds = time.perf_counter() - start
        if timed:
            self.ms_per_image.append(1000 * seconds / num_images)
            self.batch = max(self.batch, num_images)
            if cuda:
                self.extra_bytes = max(self.extra_bytes, torch.cuda.max_memory_allocated(self.device) - before)
        return result

    @property
    def measured(self):
        return bool(self.ms_per_image)

    def results(self):
        """The LATENCY_COLUMNS (all None where nothing was timed)."""
        if not self.measured:
            return dict.fromkeys(LATENCY_COLUMNS)
        ms = statistics.median(self.ms_per_image)
        cuda = self.device.type == "cuda"
        return {
            "ms_per_image": ms,
            "images_per_s": 1000 / ms,
            "peak_mem_mb": (self.weight_bytes + self.extra_bytes) / 2**20 if cuda and self.module is not None else None,
            "latency_device": latency_device(self.device),
            "latency_threads": torch.get_num_threads(),
            "latency_batch": self.batch,
            "latency_repeats": len(self.ms_per_image),
        }
