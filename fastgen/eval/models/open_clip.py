"""open_clip image-text models loaded from a pretrained tag (local cache, offline flags honoured) or a file,
with the activation their weights were trained with.

OpenAI's CLIP weights were trained with QuickGELU (x * sigmoid(1.702 x)); open_clip's plain architectures
(`ViT-L-14`, ...) build nn.GELU, and `create_model(name, pretrained=<OpenAI weights>)` loads them without
complaint (it warns for the `openai` tag only, and not at all for a file): every embedding is then subtly
wrong. `quick_gelu_needed` decides, and the model is built with `force_quick_gelu` accordingly:

- the setting (`eval.clip.quick_gelu`, `eval.aesthetic.clip_quick_gelu`) when true/false; null = auto:
- a `-quickgelu` model name builds QuickGELU by itself;
- a tag: what open_clip's registry says the tag's weights need (the `openai` tags, and e.g. the
  `-quickgelu` LAION-400M tags, need QuickGELU);
- a file: OpenAI's if its sha256 is one of OpenAI's releases (open_clip's registry has their URLs, which
  embed the sha256), or if it is a TorchScript archive (the format OpenAI released CLIP in; the other
  CLIP releases are state dicts). A state dict in open_clip's own layout cannot be told apart from
  other weights of the same architecture: it is taken as OpenAI's only where the caller presumes so (the
  aesthetic predictor, defined on OpenAI's ViT-L/14 only); otherwise set the setting to true.

A TorchScript archive is read with `torch.jit.load` (open_clip's loader uses `torch.load(weights_only=True)`,
which refuses such archives). The built model's activation (`model_activation`) goes into the row's
fingerprint, with the weights' sha256. A model whose weights cannot be had is None after one warning naming
the config key: a metric is never computed from random weights. Loaded models are kept per (name, weights,
activation, device) for the process, since the callback evaluates many times in one run.
"""

import functools
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from fastgen.eval.models.assets import sha256_file, warn_not_computed

OPENAI_JIT_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")  # not parameters of open_clip's CLIP


def _as_file(pretrained):
    path = Path(str(pretrained)).expanduser()
    return path if pretrained is not None and path.is_file() else None


@functools.lru_cache(maxsize=1)
def openai_release_sha256s():
    """sha256 of every OpenAI CLIP release open_clip knows (its URLs are `.../clip/models/<sha256>/<name>.pt`)."""
    import open_clip

    hashes = set()
    for model in open_clip.list_pretrained_models_by_tag("openai"):
        url = open_clip.get_pretrained_cfg(model, "openai").get("url", "")
        parts = url.split("/")
        if len(parts) > 1 and re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
            hashes.add(parts[-2])
    return frozenset(hashes)


def is_torchscript_archive(path):
    """True for a TorchScript zip (`<name>/code/...`, `<name>/constants.pkl`), the format of OpenAI's releases."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def openai_file_evidence(path):
    """Why the file at `path` holds OpenAI's weights ('' when nothing says so)."""
    if sha256_file(path) in openai_release_sha256s():
        return "its sha256 is an OpenAI release"
    if is_torchscript_archive(path):
        return "it is a TorchScript archive (OpenAI's release format)"
    return ""


def quick_gelu_needed(model_name, pretrained, setting=None, presume_openai=False):
    """(True if the model must be built with QuickGELU, the reason). `setting` true/false overrides; None = auto."""
    import open_clip

    if setting is not None:
        return bool(setting), f"set to {bool(setting)}"
    if model_name.endswith("-quickgelu"):
        return True, f"{model_name} is a QuickGELU architecture"
    path = _as_file(pretrained)
    if path is None:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, str(pretrained)) if pretrained is not None else {}
        needed = bool(tag_cfg.get("quick_gelu", False))
        return needed, f"open_clip's registry says tag {pretrained!r} was trained with {'QuickGELU' if needed else 'GELU'}"
    evidence = openai_file_evidence(path)
    if evidence:
        return True, f"{path.name} holds OpenAI weights: {evidence}"
    if presume_openai:
        return True, f"{path.name} is taken as OpenAI's weights (the metric is defined on them)"
    return False, f"nothing in {path.name} says OpenAI (set quick_gelu=true if it holds OpenAI weights)"


def model_activation(model):
    """'quickgelu' or 'gelu': the activation the built model's transformer MLPs apply ('' if neither is found)."""
    from open_clip.transformer import QuickGELU

    kinds = {"quickgelu" if isinstance(m, QuickGELU) else "gelu"
             for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}
    return "+".join(sorted(kinds))


def clip_weights_id(pretrained, model_name=None):
    """The fingerprint of `pretrained`: a file's sha256; for a tag, `tag=<sha256 of its cached file>` when it can
    be resolved offline, else the tag itself."""
    path = _as_file(pretrained)
    if path is not None:
        return sha256_file(path)
    if model_name is not None and pretrained is not None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model_name, str(pretrained))
        try:
            resolved = open_clip.download_pretrained(cfg) if cfg else ""
        except Exception:  # not in the local cache and offline: the tag alone
            resolved = ""
        if resolved and Path(resolved).is_file():
            return f"{pretrained}={sha256_file(resolved)}"
    return str(pretrained)


def clip_model_id(model_name, pretrained, model):
    """`<model>:<weights id>:<activation>`, the leaderboard's record of which CLIP computed a score."""
    return f"{model_name}:{clip_weights_id(pretrained, model_name)}:{model_activation(model)}"


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
def _create(model_name, pretrained, quick_gelu, device):
    import open_clip

    # force_quick_gelu keeps open_clip's tag check quiet; quick_gelu=False (a constructor override) undoes a
    # `-quickgelu` architecture when the setting says false
    activation = {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}
    if _as_file(pretrained) is not None and is_torchscript_archive(pretrained):
        model = open_clip.create_model(model_name, pretrained=None, **activation)
        state = torch.jit.load(pretrained, map_location="cpu").state_dict()
        own, buffers = model.state_dict().keys(), {name for name, _ in model.named_buffers()}
        skip = set(OPENAI_JIT_ONLY_KEYS) | (buffers - own)  # a traced module also saves non-persistent buffers
        model.load_state_dict({k: v for k, v in state.items() if k not in skip})
        model = model.to(device)
    else:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device, **activation)
    return model.eval().requires_grad_(False), open_clip.get_tokenizer(model_name)


def load_open_clip(model_name, pretrained, metric, config_key, device="cpu", quick_gelu=None, presume_openai=False):
    """(model, tokenizer) from open_clip with the activation its weights need (`quick_gelu_needed`), or None with
    one warning naming `config_key` when weights are missing or do not load."""
    found, where = describe_clip_weights(model_name, pretrained)
    if not found:
        warn_not_computed(metric, config_key, f"no {model_name} weights: {where}")
        return None
    path = _as_file(pretrained)
    try:
        needed, _ = quick_gelu_needed(model_name, pretrained, quick_gelu, presume_openai)
        return _create(model_name, str(path) if path is not None else pretrained, needed, str(device))
    except Exception as e:  # a hub download refused offline, a corrupt file, a mismatched state dict
        warn_not_computed(metric, config_key, f"loading {model_name} from {pretrained!r} failed ({type(e).__name__}: {e})")
        return None


def clip_preprocess(images, model):
    """uint8 [N, C, H, W] -> the model's input: shortest side resized (bicubic, antialiased), centre crop, normalised.

    The tensor form of open_clip's eval transform (Resize(shortest) + CenterCrop + Normalize), using the
    model's own `preprocess_cfg` (size, mean, std).
    """
    cfg = model.visual.preprocess_cfg
    return resize_crop_normalise(images, cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0], cfg["mean"], cfg["std"])


def resize_crop_normalise(images, size, mean, std):
    """Values in [0, 255] [N, 1|3, H, W] -> shortest side resized to `size` (bicubic, antialiased), centre crop,
    normalised by `mean`/`std`: the CLIP-style eval transform as differentiable tensor operations."""
    x = images.expand(-1, 3, -1, -1).float() / 255 if images.shape[1] == 1 else images.float() / 255
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def image_embeddings(model, images):
    """L2-normalised image embeddings [N, D] of uint8 images."""
    device = next(model.parameters()).device
    return F.normalize(model.encode_image(clip_preprocess(images.to(device), model)).float(), dim=-1)
