"""FSDP for fastgen methods: how a network is sharded, and how it is read back whole.

Under `trainer.strategy=fsdp` (`fastgen.runtime.lightning_plugins.FSDP2Strategy`: PyTorch's FSDP2, `fully_shard`, through
Lightning's ModelParallelStrategy) each method's `configure_model` shards the networks it lists in
`sharded_networks` — the trained ones and their EMA copies — with `shard_network`. Every UNet block is its
own FSDP unit: its parameters are gathered for its forward and its backward and freed after. FSDP2 keeps a
parameter's `requires_grad` per tensor, so the two-phase GAN steps (D frozen while G trains, and back) and
LoRA (frozen base weights, trainable adapters) work as they do unsharded; an EMA copy sharded the same way
is averaged shard by shard, with no communication.

Sampling with a sharded network is collective (every rank gathers the same blocks), so the evaluation gives
every rank the same number of sampling calls (`fastgen.eval.evaluator.run_eval.generate`); exports gather the whole
network first (`whole_network`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

UNET_BLOCK_LISTS = ("down_blocks", "up_blocks")


def is_unet_block(name: str) -> bool:
    """`down_blocks.<i>`, `up_blocks.<i>` or `mid_block` (diffusers UNets and the discriminator's encoder)."""
    parts = name.split(".")
    return parts[-1] == "mid_block" or (len(parts) > 1 and parts[-2] in UNET_BLOCK_LISTS and parts[-1].isdigit())


def check_shardable(hparams) -> None:
    """Refuse what cannot run on sharded networks, with what to set: exact R1 differentiates D's input gradient
    again, and FSDP frees each block's gathered parameters after its first backward."""
    if hparams.get("r1_gamma", 0) > 0 and hparams.get("r1_sigma", 0) == 0:
        raise ValueError("exact R1 (method.r1_sigma=0, a double backward through D) does not run under "
                         "trainer.strategy=fsdp: set method.r1_sigma=0.05 (finite-difference R1) or method.r1_gamma=0")


def shard_network(network: nn.Module, mesh) -> nn.Module:
    """`fully_shard` every UNet block of `network`, then the network itself (its remaining parameters: the
    time embedding, input and output convolutions, a discriminator's head) across the 1-D device `mesh`."""
    for name, module in network.named_modules():
        if is_unet_block(name):
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    # The root resharded after every forward too (FSDP2's default keeps a root's parameters gathered until its
    # backward): a gathered parameter keeps the `requires_grad` it had when gathered, so a generator called while
    # frozen (the D phase, no backward to reshard it) would stay frozen in its own phase and get no gradient.
    fully_shard(network, mesh=mesh, reshard_after_forward=True)
    return network


def whole_network(network: nn.Module) -> nn.Module | None:
    """`network` itself when it is not sharded. When it is: collective (every rank must call it), an unsharded
    copy (diffusers `from_config`, plus its peft adapter when it has one) on rank 0 and None on the others. Building
    the copy initialises parameters: under a forked RNG, so rank 0's random stream (the training noise after a
    TSCD stage snapshot) stays the one it would have been unsharded."""
    if not isinstance(network, FSDPModule):
        return network
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(network, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    with torch.random.fork_rng(devices=[]):  # the copy is built on the CPU
        plain = type(network).from_config(network.config)
        if getattr(network, "peft_config", None):
            plain.add_adapter(network.peft_config["default"])
    plain.load_state_dict(full)
    return plain
