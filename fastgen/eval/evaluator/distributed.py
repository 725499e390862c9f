"""The few torch.distributed calls the evaluation needs; each is a no-op in a single process."""

import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_rank_zero():
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def max_over_ranks(value: int) -> int:
    """The largest of every rank's `value` (`all_gather_object`: gloo and nccl alike)."""
    if not is_distributed():
        return value
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return max(values)


def shard_indices(n):
    """This rank's contiguous block of sample indices 0..n-1 (blocks differ in size by at most one)."""
    return torch.arange(n).tensor_split(world_size())[rank()]


def gather_in_index_order(indices, values):
    """Concatenate every rank's `values` (tensors [n_local, ...] on any device) ordered by their sample `indices`.

    Uses `all_gather_object` (works with gloo and nccl, variable shard sizes); the result is on the CPU and
    identical on every rank, and identical to a single process computing all samples.
    """
    values = values.cpu()
    if not is_distributed():
        return values[torch.argsort(indices)]
    pieces = [None] * world_size()
    dist.all_gather_object(pieces, (indices.cpu(), values))
    all_indices = torch.cat([p[0] for p in pieces if len(p[0])])
    return torch.cat([p[1] for p in pieces if len(p[0])])[torch.argsort(all_indices)]
