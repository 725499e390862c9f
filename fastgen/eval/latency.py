"""Latency and cost of generation: ms per image, images per second and peak memory at `eval.batch_size`.

What is timed is one generation batch end to end, as a user would call it: `method.sample` (text encoding and
every UNet call, CFG included) plus `backbone.decode` (the VAE for latent models). On a GPU every timed call is
bracketed by `torch.cuda.synchronize`. The first `warmup` batches of a step count are not timed (cuDNN autotune,
lazy allocation, compilation). Peak memory is `torch.cuda.max_memory_allocated` over the timed batches, in MB;
on the CPU it is left empty (the process's peak RSS mixes in the metric networks and data, so it would not
measure the method).
"""

import time

import torch


class LatencyMeter:
    """Time generation batches of one step count; the first `warmup` calls are run but not timed."""

    def __init__(self, device, warmup=1):
        self.device = torch.device(device)
        self.warmup = warmup
        self.calls = 0
        self.seconds = 0.0
        self.images = 0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn, num_images):
        """Run `fn()`; if past warm-up, add its wall time and `num_images` to the totals. Returns fn's result."""
        timed = self.calls >= self.warmup
        self.calls += 1
        if timed and self.images == 0 and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sync()
        start = time.perf_counter()
        result = fn()
        self._sync()
        if timed:
            self.seconds += time.perf_counter() - start
            self.images += num_images
        return result

    @property
    def measured(self):
        return self.images > 0

    def results(self):
        """{"ms_per_image", "images_per_s", "peak_mem_mb"} (None where not measured)."""
        if not self.measured:
            return {"ms_per_image": None, "images_per_s": None, "peak_mem_mb": None}
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return {
            "ms_per_image": 1000 * self.seconds / self.images,
            "images_per_s": self.images / self.seconds,
            "peak_mem_mb": peak,
        }
