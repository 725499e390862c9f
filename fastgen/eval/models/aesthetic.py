"""LAION aesthetic predictor v2: an MLP on L2-normalised CLIP ViT-L/14 image embeddings -> a score (about 1..10).

Weights: `eval.aesthetic.weights` = path to `sac+logos+ava1-l14-linearMSE.pth` (christophschuhmann/
improved-aesthetic-predictor), a state dict of `layers` = Linear(768, 1024), Dropout(0.2), Linear(1024, 128),
Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1) -- no activations, as trained. The
MLP was fit on OpenAI CLIP ViT-L/14 embeddings: `eval.aesthetic.clip_model` = ViT-L-14 and
`eval.aesthetic.clip_pretrained` = the `openai` tag or a local file of those weights. Other ViT-L-14 weights
also give 768-d embeddings and a plausible-looking but meaningless score. Missing either -> not computed.
OpenAI's weights need QuickGELU: the CLIP is built with it unless `eval.aesthetic.clip_quick_gelu=false` or a
tag that open_clip registers as GELU-trained (a local file is taken as OpenAI's, see open_clip_models.py).
The row records both: `aesthetic_sha256` (the MLP) and `aesthetic_clip` (model, weights sha256, activation).
"""

from pathlib import Path

import torch
from torch import nn

from fastgen.eval.models.assets import AssetLookup, sha256_file, warn_not_computed
from fastgen.eval.models.open_clip import clip_model_id, image_embeddings, load_open_clip

WEIGHTS_KEY = "eval.aesthetic.weights"
CLIP_KEY = "eval.aesthetic.clip_pretrained"


class AestheticMLP(nn.Module):
    """The predictor's head, in the layout of `sac+logos+ava1-l14-linearMSE.pth` (keys layers.{0,2,4,6,7})."""

    def __init__(self, input_size=768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings):
        return self.layers(embeddings)


class AestheticScorer:
    """Per-image aesthetic scores of uint8 images, with the fingerprint of both weight files."""

    def __init__(self, mlp, clip_model, weights_path, clip_name, clip_pretrained):
        self.mlp, self.clip_model = mlp, clip_model
        self.weights_sha256 = sha256_file(weights_path)
        self.clip_id = clip_model_id(clip_name, clip_pretrained, clip_model)

    @torch.no_grad()
    def __call__(self, images, prompts=None):
        """Scores float [N] on the CPU (prompts are ignored: the score is image-only)."""
        return self.mlp(image_embeddings(self.clip_model, images)).squeeze(-1).cpu()


def lookup_aesthetic_weights(weights=None):
    return AssetLookup("LAION aesthetic MLP", WEIGHTS_KEY).consider(weights)


def load_aesthetic_mlp(path):
    """AestheticMLP from a state dict file in the predictor's layout (input size read from layers.0.weight)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in state:
        raise ValueError(f"{path} is not a LAION aesthetic predictor state dict (no 'layers.0.weight'; {WEIGHTS_KEY})")
    mlp = AestheticMLP(state["layers.0.weight"].shape[1])
    mlp.load_state_dict(state)
    return mlp.eval()


def load_aesthetic_scorer(weights=None, clip_model="ViT-L-14", clip_pretrained=None, device="cpu", clip_quick_gelu=None):
    """An AestheticScorer, or None (not computed, one warning naming the key to set) when weights are missing."""
    lookup = lookup_aesthetic_weights(weights)
    if lookup.found is None:
        reason = f"{weights} does not exist" if weights else "no predictor weights configured"
        warn_not_computed("aesthetic score", WEIGHTS_KEY, reason)
        return None
    loaded = load_open_clip(clip_model, clip_pretrained, "aesthetic score", CLIP_KEY, device, clip_quick_gelu,
                            presume_openai=True)
    if loaded is None:
        return None
    mlp = load_aesthetic_mlp(lookup.found).to(device)
    embed_dim = getattr(loaded[0].visual, "output_dim", None)
    if embed_dim is not None and embed_dim != mlp.layers[0].in_features:
        raise ValueError(
            f"{Path(lookup.found).name} expects {mlp.layers[0].in_features}-d CLIP embeddings but {clip_model} "
            f"gives {embed_dim}-d: set eval.aesthetic.clip_model=ViT-L-14"
        )
    return AestheticScorer(mlp, loaded[0], lookup.found, clip_model, clip_pretrained)
