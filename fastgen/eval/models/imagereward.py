"""ImageReward (Xu et al., NeurIPS 2023, arXiv 2304.05977): a BLIP image-text encoder with an MLP head, trained on
human preference rankings; the reward ReFL fine-tunes on.

The checkpoint `ImageReward.pt` (THUDM/ImageReward) is a state dict of the `image-reward` package's model:
`blip.visual_encoder.*` (BLIP's ViT-L/16 at 224 px: cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), `blip.text_encoder.*` (BLIP's BERT with cross-attention to the image,
configured by `med_config.json`), `blip.{vision,text}_proj.*` (unused by the score) and `mlp.layers.*` (Linear 768 →
1024 → 128 → 64 → 16 → 1, no activations). The score of (image, prompt) is
    (mlp(text_encoder(prompt, cross-attending to ViT(image))[CLS]) − 0.16717) / 1.03334,
with the prompt tokenised by BERT's uncased tokenizer plus BLIP's [DEC] bos and [ENC] tokens (padded to 35), and the
image resized to 224 (bicubic), centre-cropped and normalised with CLIP's mean and std.

The `image-reward` package cannot be installed beside fastgen (it pins timm 0.6.13 and fairscale and imports
transformers 4 internals that transformers 5 removed), so the same network is built here from transformers' BLIP
modules (`BlipVisionModel`, `BlipTextModel`: BLIP's ViT and med.py BERT) with the ViT's names mapped, and loaded
strictly. Files: `weights` (ImageReward.pt), `med_config` (med_config.json), `tokenizer` (a bert-base-uncased folder
or hub id in the local cache); each from a path or the Hugging Face cache, offline flags honoured.
"""

from __future__ import annotations

import json
import re
import torch
from torch import nn

from fastgen.eval.models.aesthetic import AestheticMLP
from fastgen.eval.models.assets import file_or_hub_cache, sha256_file
from fastgen.eval.models.open_clip import resize_crop_normalise

SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
IMAGE_SIZE, MAX_PROMPT_TOKENS = 224, 35
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HUB_REPO = "THUDM/ImageReward"
VIT_NAMES = [  # BLIP's vit.py -> transformers' BlipVisionModel
    (r"^cls_token$", "embeddings.class_embedding"), (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."), (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."), (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."), (r"^norm\.", "post_layernorm."),
]


def rename_vit(state: dict) -> dict:
    out = {}
    for name, value in state.items():
        for pattern, repl in VIT_NAMES:
            if re.search(pattern, name):
                name = re.sub(pattern, repl, name)
                break
        out[name] = value
    return out


def vision_config(vit: dict):
    """BlipVisionConfig of the checkpoint's ViT, read from its tensor shapes (BLIP's ViT: LayerNorm eps 1e-6)."""
    from transformers import BlipVisionConfig

    width = vit["cls_token"].shape[-1]
    patch = vit["patch_embed.proj.weight"].shape[-1]
    grid = int(round((vit["pos_embed"].shape[1] - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[1]) for k in vit if k.startswith("blocks."))
    return BlipVisionConfig(hidden_size=width, intermediate_size=vit["blocks.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=layers, num_attention_heads=width // 64 if width >= 64 else 1,
                            image_size=grid * patch, patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu")


def text_config(med: dict):
    """BlipTextConfig of BLIP's med_config.json (a BertConfig with `encoder_width`, the ViT's width)."""
    from transformers import BlipTextConfig

    return BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                          encoder_hidden_size=med["encoder_width"], intermediate_size=med["intermediate_size"],
                          num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
                          max_position_embeddings=med["max_position_embeddings"], hidden_act=med.get("hidden_act", "gelu"),
                          layer_norm_eps=med.get("layer_norm_eps", 1e-12), pad_token_id=med.get("pad_token_id", 0))


class ImageRewardModel(nn.Module):
    """ViT + cross-attending BERT + MLP: `score(pixel_values, input_ids, attention_mask)` -> [B] (normalised)."""

    def __init__(self, vision, text, mlp):
        super().__init__()
        self.visual_encoder, self.text_encoder, self.mlp = vision, text, mlp

    def score(self, pixel_values, input_ids, attention_mask):
        image = self.visual_encoder(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                                 encoder_attention_mask=image_mask, return_dict=True).last_hidden_state[:, 0]
        return ((self.mlp(text.float()) - SCORE_MEAN) / SCORE_STD).squeeze(-1)


def load_tokenizer(tokenizer, key: str):
    """BERT's uncased tokenizer with BLIP's [DEC] (bos) and [ENC] tokens, from a folder or a cached hub id."""
    from transformers import BertTokenizer

    name = tokenizer or "bert-base-uncased"
    try:
        tok = BertTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        raise ValueError(f"ImageReward: no BERT tokenizer at {name!r} (a bert-base-uncased folder or a hub id in the "
                         f"local cache): set {key}=/path/to/bert-base-uncased") from None
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_imagereward(weights=None, med_config=None, tokenizer=None, key_prefix="method.reward"):
    """(ImageRewardModel in eval mode with frozen weights, its tokenizer, the checkpoint's sha256)."""
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    path = file_or_hub_cache(weights, HUB_REPO, "ImageReward.pt", "ImageReward", f"{key_prefix}.weights")
    med_file = file_or_hub_cache(med_config, HUB_REPO, "med_config.json", "ImageReward", f"{key_prefix}.med_config")
    med = json.loads(med_file.read_text())
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    parts = {p: {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
             for p in ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")}
    if not all(parts.values()):
        raise ValueError(f"{path} is not an ImageReward checkpoint (needs blip.visual_encoder.*, blip.text_encoder.*, "
                         f"mlp.*): set {key_prefix}.weights to ImageReward.pt")
    vision = BlipVisionModel(vision_config(parts["blip.visual_encoder."]))
    vision.load_state_dict(rename_vit(parts["blip.visual_encoder."]))
    text = BlipTextModel(text_config(med), add_pooling_layer=False)
    text_state = {k: v for k, v in parts["blip.text_encoder."].items() if not k.endswith("position_ids")}
    missing, unexpected = text.load_state_dict(text_state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ValueError(f"{path}: its text encoder does not match {key_prefix}.med_config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    mlp = AestheticMLP(parts["mlp."]["layers.0.weight"].shape[1])
    mlp.load_state_dict(parts["mlp."])
    model = ImageRewardModel(vision, text, mlp).eval().requires_grad_(False)
    return model, load_tokenizer(tokenizer, f"{key_prefix}.tokenizer"), sha256_file(path)


class ImageRewardScorer:
    """ImageReward of pixels in [-1, 1] and prompts, differentiable in the pixels."""

    column = "imagereward"

    def __init__(self, weights=None, med_config=None, tokenizer=None, key_prefix="method.reward"):
        self.model, self.tokenizer, self.weights_sha256 = load_imagereward(weights, med_config, tokenizer, key_prefix)
        self.image_size = self.model.visual_encoder.config.image_size

    def __call__(self, pixels: torch.Tensor, prompts) -> torch.Tensor:
        device = pixels.device
        self.model.to(device)
        x = resize_crop_normalise((pixels.float().clamp(-1, 1) + 1) * 127.5, self.image_size, CLIP_MEAN, CLIP_STD)
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                                return_tensors="pt").to(device)
        return self.model.score(x, tokens.input_ids, tokens.attention_mask)
