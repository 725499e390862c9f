"""Reward models loaded with their real loading code from files laid out as the published checkpoints, built here as
random-init models of the same architectures at tiny sizes: ImageReward (BLIP ViT + cross-attending BERT + MLP),
HPSv2 (open_clip CLIP, {"state_dict": ...}), PickScore (transformers CLIPModel + processor folders); the digit reward
of MNIST; each differentiable in the pixels, a missing file one line naming the file and the key, and each an
evaluation column only where its files are configured."""

import json
import math
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

from fastgen.eval.models.imagereward import CLIP_MEAN, CLIP_STD, SCORE_MEAN, SCORE_STD
from fastgen.eval.models.open_clip import clip_preprocess, resize_crop_normalise
from fastgen.eval.models.rewards import DigitReward, build_reward

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a handwritten digit three", "a red car"]


def pixels(n=2, size=32, seed=0):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1).requires_grad_(True)


def assert_differentiable(reward, x, prompts=PROMPTS):
    scores = reward(x, prompts)
    assert scores.shape == (x.shape[0],) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    return scores.detach()


# -- ImageReward ---------------------------------------------------------------------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "handwritten", "digit", "three", "red", "car"]
MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
       "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
       "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
       "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(VOCAB) + 2,
       "encoder_width": 64, "add_cross_attention": True}


def blip_vit_reference(vit, x, heads):
    """BLIP's vit.py forward, written from its state-dict names: the reference the key mapping is checked against."""
    patches = F.conv2d(x, vit["patch_embed.proj.weight"], vit["patch_embed.proj.bias"], stride=vit["patch_embed.proj.weight"].shape[-1])
    h = torch.cat([vit["cls_token"].expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], 1) + vit["pos_embed"]
    width = h.shape[-1]
    layer_norm = lambda t, p: F.layer_norm(t, (width,), vit[f"{p}.weight"], vit[f"{p}.bias"], eps=1e-6)  # noqa: E731
    for i in range(1 + max(int(k.split(".")[1]) for k in vit if k.startswith("blocks."))):
        b = f"blocks.{i}"
        q, k, v = F.linear(layer_norm(h, f"{b}.norm1"), vit[f"{b}.attn.qkv.weight"], vit[f"{b}.attn.qkv.bias"]).chunk(3, -1)
        split = lambda t: t.unflatten(-1, (heads, width // heads)).transpose(1, 2)  # noqa: E731
        attn = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1) @ split(v)
        h = h + F.linear(attn.transpose(1, 2).flatten(2), vit[f"{b}.attn.proj.weight"], vit[f"{b}.attn.proj.bias"])
        m = F.gelu(F.linear(layer_norm(h, f"{b}.norm2"), vit[f"{b}.mlp.fc1.weight"], vit[f"{b}.mlp.fc1.bias"]))
        h = h + F.linear(m, vit[f"{b}.mlp.fc2.weight"], vit[f"{b}.mlp.fc2.bias"])
    return layer_norm(h, "norm")


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    """ImageReward.pt with BLIP's names (a 2-block ViT of width 64 at 32 px, a 2-layer BERT), med_config.json, and a
    BERT vocabulary folder."""
    from transformers import BertTokenizer

    from fastgen.eval.models.aesthetic import AestheticMLP
    from fastgen.eval.models.imagereward import text_config
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    folder = tmp_path_factory.mktemp("imagereward")
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    vit = {"cls_token": r(1, 1, 64), "pos_embed": r(1, 5, 64), "patch_embed.proj.weight": r(64, 3, 16, 16),
           "patch_embed.proj.bias": r(64), "norm.weight": 1 + r(64), "norm.bias": r(64)}
    for i in range(2):
        vit |= {f"blocks.{i}.norm1.weight": 1 + r(64), f"blocks.{i}.norm1.bias": r(64), f"blocks.{i}.attn.qkv.weight": r(192, 64),
                f"blocks.{i}.attn.qkv.bias": r(192), f"blocks.{i}.attn.proj.weight": r(64, 64), f"blocks.{i}.attn.proj.bias": r(64),
                f"blocks.{i}.norm2.weight": 1 + r(64), f"blocks.{i}.norm2.bias": r(64), f"blocks.{i}.mlp.fc1.weight": r(128, 64),
                f"blocks.{i}.mlp.fc1.bias": r(128), f"blocks.{i}.mlp.fc2.weight": r(64, 128), f"blocks.{i}.mlp.fc2.bias": r(64)}
    torch.manual_seed(0)
    text = BlipTextModel(text_config(MED), add_pooling_layer=False)
    mlp = AestheticMLP(32)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {"blip.vision_proj.weight": r(16, 64), "blip.vision_proj.bias": r(16)}
    state |= {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(MED))
    (folder / "bert").mkdir()
    (folder / "bert" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(str(folder / "bert" / "vocab.txt")).save_pretrained(folder / "bert")
    return folder, vit, text, mlp


def test_imagereward_is_blip_text_on_the_vit_through_the_mlp(imagereward_files):
    folder, vit, text, mlp = imagereward_files
    spec = {"name": "imagereward", "weights": str(folder / "ImageReward.pt"), "med_config": str(folder / "med_config.json"),
            "tokenizer": str(folder / "bert")}
    reward = build_reward(spec)
    x = pixels()
    scores = assert_differentiable(reward, x)
    assert len(reward.tokenizer) == len(VOCAB) + 2  # BLIP's [DEC] and [ENC]
    # the reference: BLIP's ViT from the checkpoint's own names, the BERT cross-attending to it, the MLP, normalised
    with torch.no_grad():
        image = blip_vit_reference(vit, resize_crop_normalise((x + 1) * 127.5, 32, CLIP_MEAN, CLIP_STD), heads=1)
        tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        cls = text.eval()(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, encoder_hidden_states=image,
                          encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long)).last_hidden_state[:, 0]
        expected = ((mlp.eval()(cls) - SCORE_MEAN) / SCORE_STD).squeeze(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    # each missing file is one line naming it and its key
    with pytest.raises(ValueError, match=r"ImageReward: .*missing.pt does not exist: set method.reward.weights=/path/to/ImageReward.pt"):
        build_reward({**spec, "weights": str(folder / "missing.pt")})
    with pytest.raises(ValueError, match=r"set eval.rewards.imagereward.med_config=/path/to/med_config.json"):
        build_reward({**spec, "med_config": str(folder / "nope.json")}, key_prefix="eval.rewards.imagereward")
    with pytest.raises(ValueError, match=r"no BERT tokenizer at .*: set method.reward.tokenizer=/path/to/bert-base-uncased"):
        build_reward({**spec, "tokenizer": str(folder / "no-bert")})
    torch.save({"layers.0.weight": torch.zeros(1, 768)}, folder / "other.pt")
    with pytest.raises(ValueError, match=r"is not an ImageReward checkpoint"):
        build_reward({**spec, "weights": str(folder / "other.pt")})


# -- HPSv2 and PickScore -------------------------------------------------------------------------------------
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def hps_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps")
    (folder / "fastgen-test-tiny-hps.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "fastgen-test-tiny-hps.json")
    torch.manual_seed(0)
    model = open_clip.create_model("fastgen-test-tiny-hps", pretrained=None)
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, folder / "HPS_v2.1_compressed.pt")
    return folder / "HPS_v2.1_compressed.pt", model


def test_hpsv2_is_the_cosine_of_its_clip_embeddings(hps_file):
    path, model = hps_file
    reward = build_reward({"name": "hpsv2", "weights": str(path), "clip_model": "fastgen-test-tiny-hps"})
    x = pixels(size=48)
    scores = assert_differentiable(reward, x)
    with torch.no_grad():
        image = F.normalize(model.eval().encode_image(clip_preprocess((x + 1) * 127.5, model)), dim=-1)
        text = F.normalize(model.encode_text(open_clip.get_tokenizer("fastgen-test-tiny-hps")(PROMPTS)), dim=-1)
    torch.testing.assert_close(scores, (image * text).sum(-1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"HPSv2: .*gone.pt does not exist: set method.reward.weights=/path/to/HPS_v2.1_compressed.pt"):
        build_reward({"name": "hpsv2", "weights": str(path.parent / "gone.pt")})
    with pytest.raises(ValueError, match=r"is not an HPSv2 checkpoint of ViT-B-32 .*: set method.reward.weights"):
        build_reward({"name": "hpsv2", "weights": str(path), "clip_model": "ViT-B-32"})


@pytest.fixture(scope="module")
def pickscore_folders(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fastgen.networks.builders import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder / "PickScore_v1")
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              build_clip_tokenizer(str(folder / "cache")))
    processor.save_pretrained(folder / "processor")
    return folder


def test_pickscore_is_the_scaled_cosine_of_the_processors_inputs(pickscore_folders):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    folder = pickscore_folders
    spec = {"name": "pickscore", "model": str(folder / "PickScore_v1"), "processor": str(folder / "processor")}
    reward = build_reward(spec)
    x = pixels()
    scores = assert_differentiable(reward, x)
    # the model card's computation on the processor's own inputs (images already at its crop size)
    model, processor = CLIPModel.from_pretrained(folder / "PickScore_v1"), CLIPProcessor.from_pretrained(folder / "processor")
    images = [Image.fromarray(((x[i].detach() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()) for i in range(2)]
    inputs = processor(images=images, text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        feats = lambda o: o if torch.is_tensor(o) else o.pooler_output  # noqa: E731
        image = F.normalize(feats(model.get_image_features(pixel_values=inputs.pixel_values)), dim=-1)
        text = F.normalize(feats(model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)), dim=-1)
    torch.testing.assert_close(scores, model.logit_scale.exp() * (image * text).sum(-1), rtol=0.02, atol=0.05)
    with pytest.raises(ValueError, match=r"PickScore: no CLIPModel at .*: set method.reward.model=/path/to/PickScore_v1"):
        build_reward({**spec, "model": str(folder / "absent")})
    with pytest.raises(ValueError, match=r"PickScore: no CLIP processor at .*: set method.reward.processor="):
        build_reward({**spec, "processor": str(folder / "absent")})


# -- the digit reward and the evaluation's reward columns ------------------------------------------------------
def test_digit_reward_is_the_classifiers_log_probability_of_the_prompted_digit():
    from fastgen.eval.models.digit_classifier import load_classifier, uint8_to_classifier_input

    reward = DigitReward()
    x = pixels(2, 28)
    scores = assert_differentiable(reward, x, ["a handwritten digit three", "a handwritten digit seven"])
    images = ((x.detach() + 1) * 127.5).round().byte()
    expected = load_classifier()(uint8_to_classifier_input(images)).log_softmax(-1)[[0, 1], [3, 7]]
    torch.testing.assert_close(scores, expected.detach(), atol=0.05, rtol=0.05)  # uint8 rounding apart
    assert (scores <= 0).all()
    with pytest.raises(ValueError, match=r"digit reward's classifier weights .* do not exist: set method.reward.weights"):
        DigitReward("/nonexistent/classifier.safetensors")


def test_reward_columns_only_where_their_files_are_set(tmp_path):
    from fastgen.eval.metrics.suite import MetricSuite, load_rewards
    from fastgen.eval.evaluator.settings import eval_settings

    assert load_rewards(eval_settings().rewards) == {}  # nothing configured: no column, no warning
    settings = eval_settings({"fid": {"enabled": False}, "clip": {"enabled": False}, "aesthetic": {"enabled": False},
                              "latency": {"enabled": False},
                              "rewards": {"digit": {"enabled": True}, "hpsv2": {"weights": str(tmp_path / "HPS.pt")},
                                          "pickscore": {"model": str(tmp_path / "missing")}}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        suite = MetricSuite.load(settings, datamodule=None)
    assert sorted(suite.rewards) == ["digit"]
    assert any("hpsv2 not computed" in str(w.message) and "eval.rewards.hpsv2.weights" in str(w.message) for w in caught)
    assert any("pickscore not computed" in str(w.message) and "eval.rewards.pickscore.model" in str(w.message) for w in caught)
    images = ((pixels(4, 28).detach() + 1) * 127.5).round().byte()
    prompts = ["a handwritten digit three"] * 4
    row = suite.summarise(suite.score(images, prompts))
    assert row["digit_reward"] == pytest.approx(float(DigitReward()(images.float() / 127.5 - 1, prompts).mean()), abs=1e-5)
    assert row["imagereward"] is None and row["hpsv2"] is None and row["pickscore"] is None
    assert suite.fingerprint()["reward_models"].startswith("digit=")
