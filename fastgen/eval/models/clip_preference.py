"""CLIP models fine-tuned on human preferences, scoring (image, prompt) by image-text similarity: HPSv2 and PickScore.

- HPSv2 (Wu et al. 2023, arXiv 2306.09341): open_clip ViT-H-14 fine-tuned on HPD v2. The checkpoint
  (`HPS_v2_compressed.pt` or `HPS_v2.1_compressed.pt`, hub repo xswu/HPSv2) is `{"state_dict": <open_clip CLIP state
  dict>}`, loaded into `create_model("ViT-H-14")` (GELU) as the `hpsv2` package does; score = cos(image, text) of the
  normalised embeddings (the package's `image_features @ text_features.T`), open_clip's tokenizer and eval transform.
  The `hpsv2` package cannot be installed beside fastgen (it pins pytest 7.2.0 and protobuf < 4), and it builds the
  same model with a vendored open_clip: fastgen uses open_clip itself.
- PickScore (Kirstain et al., NeurIPS 2023, arXiv 2305.01569): a transformers `CLIPModel` (yuvalkirstain/PickScore_v1,
  CLIP-H) with the processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K; score = logit_scale.exp()·cos(image, text),
  as its model card computes it.

Both take pixels in [-1, 1] and prompts and are differentiable in the pixels (the processors' resize, crop and
normalisation done on tensors); each file comes from a path or the local Hugging Face cache (offline flags honoured),
and a missing one is one line naming the file and the config key.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fastgen.eval.models.assets import file_or_hub_cache, sha256_file
from fastgen.eval.models.open_clip import clip_preprocess, resize_crop_normalise

HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_REPO = "xswu/HPSv2"


def _to_pixels255(pixels):
    return (pixels.float().clamp(-1, 1) + 1) * 127.5


class HPSv2Reward:
    """Human Preference Score v2 of pixels in [-1, 1] and prompts (see module doc)."""

    column = "hpsv2"

    def __init__(self, weights=None, version: str = "v2.1", clip_model: str = "ViT-H-14", key_prefix="method.reward"):
        import open_clip

        if version not in HPS_FILES:
            raise ValueError(f"{key_prefix}.version={version!r} is not one of {sorted(HPS_FILES)}")
        path = file_or_hub_cache(weights, HPS_REPO, HPS_FILES[version], "HPSv2", f"{key_prefix}.weights")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("state_dict", checkpoint)
        self.model = open_clip.create_model(clip_model, pretrained=None)
        try:
            self.model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except RuntimeError as e:
            raise ValueError(f"{path} is not an HPSv2 checkpoint of {clip_model} ({str(e).splitlines()[0]}): set "
                             f"{key_prefix}.weights to {HPS_FILES[version]}") from None
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(clip_model)
        self.weights_sha256 = sha256_file(path)

    def __call__(self, pixels: torch.Tensor, prompts) -> torch.Tensor:
        self.model.to(pixels.device)
        image = F.normalize(self.model.encode_image(clip_preprocess(_to_pixels255(pixels), self.model)).float(), dim=-1)
        text = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(pixels.device)).float(), dim=-1)
        return (image * text).sum(-1)


def _features(output):
    """Projected features from transformers' get_*_features (a tensor in 4.x, an output with them pooled in 5.x)."""
    return output if torch.is_tensor(output) else output.pooler_output


class PickScoreReward:
    """PickScore of pixels in [-1, 1] and prompts (see module doc): `model` = the PickScore_v1 folder or hub id,
    `processor` = the CLIP-H processor folder or hub id (both from local files)."""

    column = "pickscore"

    def __init__(self, model="yuvalkirstain/PickScore_v1", processor="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 key_prefix="method.reward"):
        from transformers import AutoProcessor, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(model, local_files_only=True).eval().requires_grad_(False)
        except (OSError, ValueError):
            raise ValueError(f"PickScore: no CLIPModel at {model!r} (a PickScore_v1 folder, or the hub id in the local "
                             f"cache): set {key_prefix}.model=/path/to/PickScore_v1") from None
        try:
            self.processor = AutoProcessor.from_pretrained(processor, local_files_only=True)
        except (OSError, ValueError):
            raise ValueError(f"PickScore: no CLIP processor at {processor!r}: set {key_prefix}.processor="
                             "/path/to/CLIP-ViT-H-14-laion2B-s32B-b79K (its preprocessor and tokenizer files)") from None
        self.weights_sha256 = sha256_file(Path(self.model.name_or_path) / "model.safetensors") \
            if (Path(self.model.name_or_path) / "model.safetensors").is_file() else str(model)

    def __call__(self, pixels: torch.Tensor, prompts) -> torch.Tensor:
        ip = self.processor.image_processor
        crop = ip.crop_size if isinstance(ip.crop_size, int) else ip.crop_size["height"]
        self.model.to(pixels.device)
        x = resize_crop_normalise(_to_pixels255(pixels), crop, ip.image_mean, ip.image_std)
        tokens = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=77,
                                          return_tensors="pt").to(pixels.device)
        image = F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)
        text = F.normalize(_features(self.model.get_text_features(**tokens)).float(), dim=-1)
        return self.model.logit_scale.exp().float() * (image * text).sum(-1)
