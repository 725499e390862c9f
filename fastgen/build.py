"""`instantiate_method`: the one place a method is built from its config — by `fastgen.fit`, `fastgen.evaluate`, a
checkpoint's rebuild (`fastgen.eval.checkpoint`) and the latency pass alike.

It instantiates `cfg.method` (Hydra) around the backbone and injects what a method does not build itself: a reward
model, when the method config has a `reward` spec ({name: aesthetic, ...}, built by `fastgen.eval.rewards`) — it is
passed as `reward_fn`, so nothing under fastgen/methods imports fastgen/eval.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_method(method_cfg, backbone):
    """The method `method_cfg` (a DictConfig or plain dict with `_target_`) describes, around `backbone`."""
    reward = method_cfg.get("reward")
    injected = {}
    if reward is not None:
        from fastgen.eval.rewards import build_reward

        spec = OmegaConf.to_container(reward, resolve=True) if isinstance(reward, DictConfig) else reward
        injected["reward_fn"] = build_reward(spec)
    return instantiate(method_cfg, backbone=backbone, _convert_="all", **injected)
