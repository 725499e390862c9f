"""`build_from_config`: the backbone, the method and the data module an experiment config describes — built here
for `fastgen.fit`, `fastgen.evaluate`, a checkpoint's rebuild (`fastgen.eval.evaluator.checkpoint`), the latency
pass and the speed benchmarks alike; `instantiate_method` is its method part.

It instantiates `cfg.method` (Hydra) around the backbone and injects what a method does not build itself: a reward
model, when the method config has a `reward` spec ({name: aesthetic, ...}, built by `fastgen.eval.models.rewards`) — it is
passed as `reward_fn`, so nothing under fastgen/methods imports fastgen/eval; and a ControlNet to train, when it has a
`controlnet` spec (`fastgen.methods.controlnet.add_controlnet`: the generator frozen, the method's objective).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def plain(spec):
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


def instantiate_method(method_cfg, backbone, load_weights: bool = True):
    """The method `method_cfg` (a DictConfig or plain dict with `_target_`) describes, around `backbone`.
    `load_weights=False`: a rebuild from a checkpoint that holds every weight (no generator or ControlNet files read)."""
    reward = method_cfg.get("reward")
    controlnet = method_cfg.get("controlnet")
    injected = {}
    if reward is not None:
        from fastgen.eval.models.rewards import build_reward

        injected["reward_fn"] = build_reward(plain(reward))
    if controlnet is not None:
        method_cfg = {k: v for k, v in plain(method_cfg).items() if k != "controlnet"}
    method = instantiate(method_cfg, backbone=backbone, _convert_="all", **injected)
    if controlnet is not None:
        from fastgen.methods.controlnet import SPEC_KEYS, add_controlnet

        spec = plain(controlnet)
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"method.controlnet: unknown keys {unknown} (known: {list(SPEC_KEYS)})")
        add_controlnet(method, **spec, load_weights=load_weights)
    return method


def build_from_config(cfg, load_weights: bool = True):
    """(method, data module) for an experiment config (a DictConfig or plain dict): the backbone first (missing
    weights fail here, before anything trains), the method around it, then the data module."""
    backbone = instantiate(cfg["model"])
    method = instantiate_method(cfg["method"], backbone, load_weights)
    return method, instantiate(cfg["data"], _convert_="all")
