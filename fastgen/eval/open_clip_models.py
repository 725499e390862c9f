"""open_clip image-text models loaded from a pretrained tag (local cache, offline flags honoured) or a file.

A model whose weights cannot be had is None after one warning naming the config key: a metric is never
computed from random weights. Loaded models are kept per (name, weights, device) for the process, since the
callback evaluates many times in one run.
"""

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from fastgen.eval.assets import sha256_file, warn_not_computed


def clip_weights_id(pretrained):
    """The fingerprint of `pretrained`: the file's sha256 for a path, else the tag itself."""
    path = Path(str(pretrained)).expanduser()
    return sha256_file(path) if path.is_file() else str(pretrained)


def describe_clip_weights(model_name, pretrained):
    """(found, where) for the doctor: a file that exists, or a tag that open_clip knows for `model_name`."""
    import open_clip

    if pretrained is None:
        return False, "nothing configured"
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return True, str(path)
    known = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained in known:
        return True, f"open_clip tag {pretrained!r} (downloaded on first use unless cached; offline flags honoured)"
    return False, f"{path} (not a file, nor one of {model_name}'s tags {known})"


@functools.lru_cache(maxsize=4)
def _create(model_name, pretrained, device):
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    return model.eval().requires_grad_(False), open_clip.get_tokenizer(model_name)


def load_open_clip(model_name, pretrained, metric, config_key, device="cpu"):
    """(model, tokenizer) from open_clip, or None with one warning naming `config_key` when weights are missing."""
    found, where = describe_clip_weights(model_name, pretrained)
    if not found:
        warn_not_computed(metric, config_key, f"no {model_name} weights: {where}")
        return None
    path = Path(str(pretrained)).expanduser()
    try:
        return _create(model_name, str(path) if path.is_file() else pretrained, str(device))
    except Exception as e:  # a hub download refused offline, a corrupt file, a mismatched state dict
        warn_not_computed(metric, config_key, f"loading {model_name} from {pretrained!r} failed ({type(e).__name__}: {e})")
        return None


def clip_preprocess(images, model):
    """uint8 [N, C, H, W] -> the model's input: shortest side resized (bicubic, antialiased), centre crop, normalised.

    The tensor form of open_clip's eval transform (Resize(shortest) + CenterCrop + Normalize), using the
    model's own `preprocess_cfg` (size, mean, std).
    """
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    x = images.expand(-1, 3, -1, -1).float() / 255 if images.shape[1] == 1 else images.float() / 255
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def image_embeddings(model, images):
    """L2-normalised image embeddings [N, D] of uint8 images."""
    device = next(model.parameters()).device
    return F.normalize(model.encode_image(clip_preprocess(images.to(device), model)).float(), dim=-1)
