"""Latent cache: encode once with toy encoders, read back the same tensors, resume, and refuse bad caches."""

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from fastgen.cache_latents import cache_latents, main
from fastgen.data import DataError, LatentCacheDataModule, build_latent_cache
from fastgen.data.latent_cache import INDEX_FILE, LatentCacheDataset, read_latent_cache_index, shard_file

N, SHARD = 10, 4


def toy_vae(pixels):
    """A stand-in "VAE": 4x average pooling."""
    return F.avg_pool2d(pixels, 4)


def toy_text_encoder(prompts):
    """A stand-in text encoder: a fixed random [3, 5] embedding per prompt, seeded by the prompt's crc32."""
    return torch.stack([torch.randn(3, 5, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts])


class Counting:
    """Wraps an encoder and counts the rows it was asked to encode."""

    def __init__(self, fn):
        self.fn, self.rows = fn, 0

    def __call__(self, x):
        self.rows += len(x)
        return self.fn(x)


def toy_loader(prompt_prefix="p"):
    images = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = [{"image": images[i], "prompt": f"{prompt_prefix}{i}"} for i in range(N)]
    return DataLoader(rows, batch_size=3, shuffle=False), images  # batches straddle shard boundaries


def build(out, encode_images=toy_vae, encode_prompts=toy_text_encoder, fingerprint="toy", prefix="p"):
    loader, _ = toy_loader(prefix)
    return build_latent_cache(loader, encode_images, encode_prompts, out, shard_size=SHARD, fingerprint=fingerprint)


def test_round_trip(tmp_path):
    index = build(tmp_path / "cache")
    _, images = toy_loader()
    assert index["count"] == N and [s["count"] for s in index["shards"]] == [4, 4, 2]
    assert index["latent_shape"] == [3, 2, 2] and index["prompt_embeds_shape"] == [3, 5]
    assert json.loads((tmp_path / "cache" / INDEX_FILE).read_text())["fingerprint"] == "toy"
    dataset = LatentCacheDataset(tmp_path / "cache", read_latent_cache_index(tmp_path / "cache"))
    for i in range(N):
        row = dataset[i]
        assert row["prompt"] == f"p{i}"
        torch.testing.assert_close(row["latent"], toy_vae(images[i : i + 1])[0])
        torch.testing.assert_close(row["prompt_embeds"], toy_text_encoder([f"p{i}"])[0])
    dm = LatentCacheDataModule(tmp_path / "cache", batch_size=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    assert batches[0]["latent"].shape == (4, 3, 2, 2) and batches[0]["prompt_embeds"].shape == (4, 3, 5)
    assert len(batches[0]["prompt"]) == 4
    assert dm.eval_prompts(3, seed=0) == dm.eval_prompts(3, seed=0)


def test_resume_encodes_only_missing_shards(tmp_path):
    out = tmp_path / "cache"
    first = build(out)
    before = (out / shard_file(0)).read_bytes()
    (out / shard_file(1)).unlink()
    (out / INDEX_FILE).unlink()
    images, prompts = Counting(toy_vae), Counting(toy_text_encoder)
    assert build(out, images, prompts) == first
    assert images.rows == SHARD and prompts.rows == SHARD  # only shard 1's rows were encoded again
    assert (out / shard_file(0)).read_bytes() == before
    images, prompts = Counting(toy_vae), Counting(toy_text_encoder)
    build(out, images, prompts)
    assert images.rows == 0 and prompts.rows == 0


def test_resume_refuses_other_encoder_or_data(tmp_path):
    out = tmp_path / "cache"
    build(out)
    with pytest.raises(DataError, match="shard-00000.safetensors was built with fingerprint 'toy'"):
        build(out, fingerprint="other")
    with pytest.raises(DataError, match="holds other prompts"):
        build(out, prefix="q")


def test_bad_caches_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist.*python -m fastgen.cache_latents"):
        LatentCacheDataModule(tmp_path / "none").setup()
    out = tmp_path / "cache"
    build(out)
    index = json.loads((out / INDEX_FILE).read_text())
    (out / shard_file(2)).unlink()
    with pytest.raises(DataError, match="shard-00002.safetensors is listed in .*index.json but missing"):
        LatentCacheDataModule(out).setup()
    (out / INDEX_FILE).write_text(json.dumps({**index, "count": 11}))
    with pytest.raises(DataError, match="count 11 disagrees"):
        LatentCacheDataModule(out).setup()
    (out / INDEX_FILE).unlink()
    with pytest.raises(DataError, match="index.json is missing.*python -m fastgen.cache_latents"):
        LatentCacheDataModule(out).setup()


class ToyBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def encode(self, pixels):
        return toy_vae(pixels)

    def encode_prompts(self, prompts):
        return toy_text_encoder(prompts)


def test_cache_latents_from_image_folder(tmp_path):
    root = tmp_path / "pics"
    root.mkdir()
    lines = []
    for i in range(3):
        Image.fromarray(np.full((12, 10, 3), 40 * i, dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines))
    index = cache_latents(root, ToyBackbone(), tmp_path / "cache", model_id="toy", resolution=8, batch_size=2)
    assert index["count"] == 3 and index["prompts"] == ["caption 0", "caption 1", "caption 2"]
    assert index["fingerprint"].startswith("model=toy resolution=8 metadata_sha256=")
    batch = next(iter(LatentCacheDataModule(tmp_path / "cache", batch_size=3).train_dataloader()))
    assert batch["latent"].shape == (3, 3, 2, 2)


def test_cli_reports_missing_weights(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--data", str(tmp_path), "--pretrained", str(tmp_path / "no-sd15"), "--out", str(tmp_path / "c")])
    assert info.value.code == 2 and "--pretrained" in capsys.readouterr().err
