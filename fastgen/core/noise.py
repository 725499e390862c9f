"""Per-sample Gaussian noise: the draws of a batch from one generator per sample (diffusers' `randn_tensor`)."""
import torch


def randn_per_sample(shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) noise of `shape` [B, ...], drawn on the generators' device and returned on `device`.

    `generator` is a list of B generators, row b drawn from `generator[b]` alone -- sample b's draws then do not
    depend on the batch it is in -- or one generator for the whole batch, or None (the global RNG)."""
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"one generator per sample: {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        noise = torch.stack(rows) if rows else torch.empty(shape, dtype=dtype)
    else:
        draw_on = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=draw_on, dtype=dtype)
    return noise.to(device) if device is not None else noise
