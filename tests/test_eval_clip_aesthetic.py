"""CLIP score and LAION aesthetic score end to end with random-init open_clip models loaded from temporary files,
and "not computed" (None + one warning naming the key) without weights."""

import json
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastgen.eval.aesthetic import AestheticMLP, load_aesthetic_scorer
from fastgen.eval.clip_score import load_clip_scorer
from fastgen.eval.open_clip_models import clip_preprocess

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_768 = {  # a 1-layer ViT with ViT-L-14's 768-d embedding, registered as an open_clip architecture
    "embed_dim": 768,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def vit_s32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "vit_s32_random.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-S-32", pretrained=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_768_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny768")
    (folder / "fastgen-test-tiny-768.json").write_text(json.dumps(TINY_768))
    open_clip.add_model_config(folder / "fastgen-test-tiny-768.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("fastgen-test-tiny-768", pretrained=None).state_dict(), folder / "clip.pt")
    mlp = AestheticMLP()
    torch.save(mlp.state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    return folder


def _images(n=3, size=(48, 40)):
    return torch.randint(0, 256, (n, 3, *size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_clip_score_from_a_weights_file(vit_s32_file):
    scorer = load_clip_scorer("ViT-S-32", str(vit_s32_file))
    prompts = ["a photo of a cat", "a red car", "a handwritten digit seven"]
    scores = scorer(_images(), prompts)
    model = scorer.model
    image = F.normalize(model.encode_image(clip_preprocess(_images(), model)), dim=-1)
    text = F.normalize(model.encode_text(open_clip.get_tokenizer("ViT-S-32")(prompts)), dim=-1)
    assert torch.allclose(scores, (image * text).sum(-1).clamp(min=0), atol=1e-5)
    assert scores.shape == (3,) and (scores >= 0).all() and (scores <= 1).all()
    assert len(scorer.weights_id) == 64  # a file's sha256 fingerprints the weights
    assert scorer(_images(3, (16, 16))[:, :1], prompts).shape == (3,)  # grayscale works


def test_tensor_preprocessing_matches_open_clip_transform(vit_s32_file):
    model, _, transform = open_clip.create_model_and_transforms("ViT-S-32", pretrained=str(vit_s32_file))
    image = _images(1, (96, 64))
    reference = transform(Image.fromarray(image[0].permute(1, 2, 0).numpy()))
    ours = clip_preprocess(image, model)[0]
    assert ours.shape == reference.shape and (ours - reference).abs().mean() < 0.03


def test_clip_score_not_computed_without_weights(tmp_path):
    with pytest.warns(UserWarning, match="eval.clip.pretrained"):
        assert load_clip_scorer("ViT-S-32", None) is None
    with pytest.warns(UserWarning, match="eval.clip.pretrained"):
        assert load_clip_scorer("ViT-S-32", str(tmp_path / "missing.pt")) is None


def test_aesthetic_score_end_to_end_in_the_real_layout(tiny_768_file):
    weights = tiny_768_file / "sac+logos+ava1-l14-linearMSE.pth"
    state = torch.load(weights, weights_only=True)
    assert list(state) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
    assert state["layers.0.weight"].shape == (1024, 768) and state["layers.7.weight"].shape == (1, 16)
    scorer = load_aesthetic_scorer(str(weights), "fastgen-test-tiny-768", str(tiny_768_file / "clip.pt"))
    scores = scorer(_images())
    embeddings = F.normalize(scorer.clip_model.encode_image(clip_preprocess(_images(), scorer.clip_model)), dim=-1)
    assert torch.allclose(scores, scorer.mlp(embeddings).squeeze(-1), atol=1e-5) and scores.shape == (3,)


def test_aesthetic_not_computed_without_weights_and_rejects_a_wrong_clip(tiny_768_file, vit_s32_file):
    with pytest.warns(UserWarning, match="eval.aesthetic.weights"):
        assert load_aesthetic_scorer(None) is None
    weights = str(tiny_768_file / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.warns(UserWarning, match="eval.aesthetic.clip_pretrained"):
        assert load_aesthetic_scorer(weights, "ViT-L-14", None) is None
    with pytest.raises(ValueError, match="eval.aesthetic.clip_model=ViT-L-14"):
        load_aesthetic_scorer(weights, "ViT-S-32", str(vit_s32_file))


@pytest.mark.slow
def test_aesthetic_with_a_random_init_vit_l_14(tmp_path):
    torch.save(open_clip.create_model("ViT-L-14", pretrained=None).state_dict(), tmp_path / "vit_l_14.pt")
    torch.save(AestheticMLP().state_dict(), tmp_path / "mlp.pth")
    scorer = load_aesthetic_scorer(str(tmp_path / "mlp.pth"), "ViT-L-14", str(tmp_path / "vit_l_14.pt"))
    assert scorer(_images(2)).shape == (2,)
