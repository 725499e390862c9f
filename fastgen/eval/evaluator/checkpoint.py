"""Rebuild a trained method (and its data module) from a fastgen checkpoint, for `python -m fastgen.evaluate`.

The config is the resolved experiment config fastgen.fit stores in the checkpoint (`fastgen_config`); for
older checkpoints, `<run>/config.yaml` or Hydra's `<run>/.hydra/config.yaml` next to `<run>/checkpoints/`.
Method, backbone and data module are instantiated from it exactly as fastgen.fit does, then the checkpoint's
state dict (without the frozen parts, which come from the backbone's own weights) is loaded.
"""

from pathlib import Path

from omegaconf import OmegaConf

from fastgen.runtime.build import build_from_config
from fastgen.runtime.config import ASSETS
from fastgen.core.files import read_checkpoint_header


def run_dir_of(ckpt_path):
    """`<run>` for `<run>/checkpoints/x.ckpt` (the checkpoint's folder otherwise)."""
    folder = Path(ckpt_path).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


# method classes that moved: the target an older checkpoint's config names -> where that class is now
MOVED_TARGETS = {"fastgen.methods.diffusion.Diffusion": "fastgen.methods.teacher.TeacherTraining"}


def checkpoint_config(ckpt_path, checkpoint):
    """The experiment config of a checkpoint (a plain dict, moved method classes renamed), or a FileNotFoundError
    saying where it looked."""
    config = checkpoint.get("fastgen_config") or _run_folder_config(ckpt_path)
    method = config.get("method") or {}
    if method.get("_target_") in MOVED_TARGETS:
        method["_target_"] = MOVED_TARGETS[method["_target_"]]
    relocate_shipped_assets(config.get("model") or {})
    return config


def relocate_shipped_assets(model: dict) -> None:
    """Paths into the shipped `fastgen/assets/` of the checkout that trained the run (its resolved config holds them
    absolute) point into this checkout's when that one is gone: a moved or re-cloned checkout still loads the run."""
    for key, value in model.items():
        if isinstance(value, str) and "/fastgen/assets/" in value and not Path(value).exists():
            here = ASSETS / value.split("/fastgen/assets/", 1)[1]
            if here.exists():
                model[key] = str(here)


def _run_folder_config(ckpt_path):
    run_dir = run_dir_of(ckpt_path)
    candidates = [run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"]
    for path in candidates:
        if path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    raise FileNotFoundError(f"{ckpt_path} holds no fastgen_config and none of {[str(p) for p in candidates]} exists")


def method_from_checkpoint(ckpt_path, device="cpu"):
    """(method on `device` in eval mode, data module, experiment config dict) from a checkpoint file."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt={ckpt_path} does not exist")
    checkpoint = read_checkpoint_header(ckpt_path, "ckpt")  # tensors memory-mapped; a truncated file: one line
    config = checkpoint_config(ckpt_path, checkpoint)
    method, datamodule = build_from_config(config, load_weights=False)  # the checkpoint holds every weight
    method.load_state_dict(checkpoint["state_dict"])
    method.run_config = config
    method.checkpoint_dir = ckpt_path.parent  # files a method keeps beside its checkpoints (TSCD's stage weights)
    return method.to(device).eval(), datamodule, config
