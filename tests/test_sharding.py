"""`fastgen.methods.sharding` on a one-process gloo group: a sharded network read back whole is the network, and
reading it leaves the random stream where it was (FSDP runs stay on DDP's noise)."""

import os

import pytest
import torch
import torch.distributed as dist
from conftest import free_port

from fastgen.methods.sharding import shard_network, whole_network
from fastgen.networks import build_random


@pytest.fixture
def one_process_group():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield dist.device_mesh.init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_whole_network_is_the_sharded_network_and_draws_no_random_numbers(one_process_group):
    unet = build_random("tiny_latent").unet
    expected = {k: v.clone() for k, v in unet.state_dict().items()}
    sharded = shard_network(unet, one_process_group)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    plain = whole_network(sharded)
    assert torch.equal(torch.get_rng_state(), state)  # rank 0's training noise after a snapshot stays DDP's
    assert plain.state_dict().keys() == expected.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in expected.items())
