"""The evaluation settings: fastgen/configs/eval/default.yaml merged with what the caller gives.

`run_eval`, the callback and `fastgen.evaluate` accept the `eval` node of a composed Hydra config, a plain dict
or None; unknown keys are an error naming the key, so a typo does not silently fall back to a default.
"""

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "configs" / "eval" / "default.yaml"
DEFAULT_CACHE_DIR = os.path.join(os.environ.get("FASTGEN_CACHE", os.path.expanduser("~/.cache/fastgen")), "eval")


def eval_settings(cfg=None):
    """A resolved, struct-mode DictConfig of every eval key: default.yaml with `cfg` merged on top."""
    root = OmegaConf.create({"paths": {"cache_dir": os.path.dirname(DEFAULT_CACHE_DIR)},
                             "eval": OmegaConf.load(DEFAULT_YAML)})
    defaults = OmegaConf.create(OmegaConf.to_container(root, resolve=True)["eval"])
    OmegaConf.set_struct(defaults, True)
    given = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    given.pop("defaults", None)
    try:
        merged = OmegaConf.merge(defaults, given)
    except Exception as e:  # omegaconf's ConfigKeyError / ValidationError: name the key
        raise ValueError(f"bad eval config: {e}".splitlines()[0]) from None
    if merged.cache_dir is None:
        merged.cache_dir = DEFAULT_CACHE_DIR
    return merged
