"""CLIP score with open_clip: how well each image matches its prompt.

Definition (reported in the `clip_score` column): the mean over images of max(cos(E_img, E_txt), 0), with
E_img, E_txt the L2-normalised open_clip image and text embeddings -- the "0.311" convention of the few-step
papers' tables. torchmetrics' CLIPScore and some papers report 100 x this number (31.1); multiply by 100 to
compare with those. Which model and weights matter: UFOGen/InstaFlow-comparable numbers use ViT-g-14
(`eval.clip.model`); the weights are `eval.clip.pretrained` (an open_clip tag such as laion2b_s12b_b42k, or a
local file path). Without weights the score is not computed. OpenAI weights get the QuickGELU activation they
were trained with (`eval.clip.quick_gelu`: null = auto, see open_clip_models.py); `clip_model` in the row records
the model, the weights' sha256 and the activation.
"""

import torch
import torch.nn.functional as F

from fastgen.eval.models.open_clip import clip_model_id, image_embeddings, load_open_clip

CONFIG_KEY = "eval.clip.pretrained"


class ClipScorer:
    """Per-image CLIP scores of uint8 images against their prompts, with the model's fingerprint."""

    def __init__(self, model, tokenizer, model_name, pretrained):
        self.model, self.tokenizer = model, tokenizer
        self.model_name, self.model_id = model_name, clip_model_id(model_name, pretrained, model)

    @torch.no_grad()
    def text_embeddings(self, prompts):
        device = next(self.model.parameters()).device
        return F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(device)).float(), dim=-1)

    @torch.no_grad()
    def __call__(self, images, prompts):
        """max(cosine, 0) per image, float [N] on the CPU."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        cosine = (image_embeddings(self.model, images) * self.text_embeddings(prompts)).sum(-1)
        return cosine.clamp(min=0).cpu()


def load_clip_scorer(model_name="ViT-g-14", pretrained=None, device="cpu", quick_gelu=None):
    """A ClipScorer, or None (not computed, one warning naming eval.clip.pretrained) without weights."""
    loaded = load_open_clip(model_name, pretrained, "CLIP score", CONFIG_KEY, device, quick_gelu)
    return None if loaded is None else ClipScorer(*loaded, model_name, pretrained)
