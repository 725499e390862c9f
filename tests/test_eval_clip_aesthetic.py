"""CLIP score and LAION aesthetic score end to end with random-init open_clip models loaded from temporary files,
"not computed" (None + one warning naming the key) without weights, and the activation OpenAI weights need."""

import hashlib
import json
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastgen.eval.models.aesthetic import AestheticMLP, load_aesthetic_scorer
from fastgen.eval.metrics.clip_score import load_clip_scorer
from fastgen.eval.models.open_clip import clip_preprocess, openai_release_sha256s, quick_gelu_needed

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
    assert scorer.model_id.split(":")[1] == hashlib.sha256(vit_s32_file.read_bytes()).hexdigest()  # the file's sha256
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


# --- QuickGELU: OpenAI's weights were trained with it; open_clip's plain architectures build nn.GELU ---------


def _activations(model):
    """The activation classes of the model's transformer MLPs."""
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}


@pytest.fixture
def openai_like(tiny_768_file, monkeypatch):
    """Register, the way open_clip registers OpenAI's releases, tags for the tiny architecture: `openai`
    (trained with QuickGELU, as the registry says of every OpenAI tag) and `laion_test` (GELU), both local files."""
    registry = dict(open_clip.pretrained._PRETRAINED)
    registry["fastgen-test-tiny-768"] = {
        "openai": {"file": str(tiny_768_file / "clip.pt"), "quick_gelu": True},
        "laion_test": {"file": str(tiny_768_file / "clip.pt")},
    }
    monkeypatch.setattr(open_clip.pretrained, "_PRETRAINED", registry)
    return tiny_768_file


def test_openai_tag_builds_quickgelu_and_other_tags_gelu(openai_like):
    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai")["quick_gelu"]  # the real tag: what its weights need
    assert quick_gelu_needed("ViT-L-14", "openai")[0] and not quick_gelu_needed("ViT-L-14", "laion2b_s32b_b82k")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # open_clip's "QuickGELU mismatch" warning would be an error
        openai = load_clip_scorer("fastgen-test-tiny-768", "openai")
        laion = load_clip_scorer("fastgen-test-tiny-768", "laion_test")
    assert _activations(openai.model) == {"QuickGELU"} and _activations(laion.model) == {"GELU"}
    assert openai.model_id.endswith(":quickgelu") and laion.model_id.endswith(":gelu")
    assert openai.model_id.split(":")[1] == "openai=" + hashlib.sha256((openai_like / "clip.pt").read_bytes()).hexdigest()


def _traced_quickgelu_clip(path):
    """An OpenAI-style release: a QuickGELU model saved as a TorchScript archive (random weights)."""
    torch.manual_seed(1)
    model = open_clip.create_model("fastgen-test-tiny-768", pretrained=None, force_quick_gelu=True).eval()
    image, text = torch.rand(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks
        traced = torch.jit.trace_module(model, {"encode_image": (image,), "encode_text": (text,)})
    torch.jit.save(traced, path)
    return traced


def test_an_openai_torchscript_file_loads_with_the_activation_it_was_traced_with(tiny_768_file, tmp_path):
    jit = _traced_quickgelu_clip(tmp_path / "ViT-tiny.pt")
    scorer = load_clip_scorer("fastgen-test-tiny-768", str(tmp_path / "ViT-tiny.pt"))  # a GELU architecture name
    assert scorer is not None and _activations(scorer.model) == {"QuickGELU"}
    x = clip_preprocess(_images(2, (64, 64)), scorer.model)
    with torch.no_grad():
        assert torch.allclose(scorer.model.encode_image(x), jit.encode_image(x), atol=1e-5)


def test_a_file_with_an_openai_release_hash_gets_quickgelu(tiny_768_file, monkeypatch, tmp_path):
    weights = tmp_path / "ViT-tiny-openai.pt"
    weights.write_bytes((tiny_768_file / "clip.pt").read_bytes())
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setattr("fastgen.eval.models.open_clip.openai_release_sha256s", lambda: frozenset({sha}))
    scorer = load_clip_scorer("fastgen-test-tiny-768", str(weights))
    assert _activations(scorer.model) == {"QuickGELU"}
    known = openai_release_sha256s.__wrapped__()  # from open_clip's registry: RN50 ... ViT-L-14-336
    assert len(known) >= 9 and "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836" in known  # ViT-L-14


def test_a_plain_state_dict_is_gelu_for_clip_score_unless_set_and_quickgelu_for_the_aesthetic_predictor(tiny_768_file):
    clip_file = str(tiny_768_file / "clip.pt")
    assert _activations(load_clip_scorer("fastgen-test-tiny-768", clip_file).model) == {"GELU"}
    assert _activations(load_clip_scorer("fastgen-test-tiny-768", clip_file, quick_gelu=True).model) == {"QuickGELU"}
    weights = str(tiny_768_file / "sac+logos+ava1-l14-linearMSE.pth")
    scorer = load_aesthetic_scorer(weights, "fastgen-test-tiny-768", clip_file)
    assert _activations(scorer.clip_model) == {"QuickGELU"}  # the predictor is defined on OpenAI's ViT-L/14
    sha = hashlib.sha256(open(clip_file, "rb").read()).hexdigest()
    assert scorer.clip_id == f"fastgen-test-tiny-768:{sha}:quickgelu"  # the row's aesthetic_clip
    off = load_aesthetic_scorer(weights, "fastgen-test-tiny-768", clip_file, clip_quick_gelu=False)
    assert _activations(off.clip_model) == {"GELU"} and off.clip_id.endswith(":gelu")
