"""Image-text folder (HF imagefolder layout): resize + crop to [-1, 1] RGB, and errors that name file and line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen.data import DataError, ImageTextFolderDataModule


def write_folder(root, entries, images):
    """`images`: {file_name: PIL image or raw bytes}; `entries`: metadata lines (dicts, or raw strings)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        if isinstance(image, bytes):
            (root / name).write_bytes(image)
        else:
            image.save(root / name)
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def half_black_half_white(width, height):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels)


@pytest.fixture
def folder(tmp_path):
    images = {
        "wide.png": half_black_half_white(40, 20),
        "tall.jpg": Image.new("RGB", (20, 50), (255, 0, 0)),
        "grey.png": Image.new("L", (16, 16), 128),
    }
    entries = [
        {"file_name": "wide.png", "text": "a wide picture", "extra": 1},
        {"file_name": "tall.jpg", "text": "a red tower"},
        "",
        {"file_name": "grey.png", "text": "grey"},
    ]
    return write_folder(tmp_path / "pics", entries, images)


def test_happy_path_batches(folder):
    dm = ImageTextFolderDataModule(folder, resolution=16, batch_size=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 1  # 3 images, batch 2, last partial batch dropped
    batch = batches[0]
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert set(batch["prompt"]) <= {"a wide picture", "a red tower", "grey"}
    assert dm.name == "pics" and dm.resolution == 16


def test_resize_and_centre_crop(folder):
    ref = ImageTextFolderDataModule(folder, resolution=16).reference_images()
    assert ref.shape == (3, 3, 16, 16) and ref.dtype == torch.uint8
    wide, tall, grey = ref.int()
    # 40x20 -> 32x16, centre crop keeps columns 8..23: black left half, white right half
    assert (wide[:, :, :6] < 10).all() and (wide[:, :, 10:] > 245).all()
    assert (tall[0] > 245).all() and (tall[1:] < 10).all()
    assert (grey == 128).all()  # greyscale converted to RGB
    assert ImageTextFolderDataModule(folder, resolution=16).reference_images(n=1).shape == (1, 3, 16, 16)


def test_random_flip_and_random_crop(folder):
    torch.manual_seed(0)
    flipping = ImageTextFolderDataModule(folder, resolution=16, random_flip=True, batch_size=1)
    dataset = flipping.train_dataloader().dataset
    left_columns = {float(dataset[0]["image"][:, :, 0].mean()) for _ in range(30)}
    assert min(left_columns) < -0.9 and max(left_columns) > 0.9  # both orientations drawn
    cropping = ImageTextFolderDataModule(folder, resolution=16, center_crop=False, batch_size=1)
    dataset = cropping.train_dataloader().dataset
    white_fractions = {round(float(dataset[0]["image"].mean()), 2) for _ in range(30)}
    assert len(white_fractions) > 3  # the crop window moves along the wide image


def test_eval_prompts_from_captions(folder):
    dm = ImageTextFolderDataModule(folder, resolution=16)
    prompts = dm.eval_prompts(7, seed=3)
    assert len(prompts) == 7 and prompts == dm.eval_prompts(7, seed=3)
    assert set(prompts[:3]) == {"a wide picture", "a red tower", "grey"}


def test_ordered_dataloader_keeps_metadata_order(folder):
    dm = ImageTextFolderDataModule(folder, resolution=16, batch_size=2)
    prompts = [p for batch in dm.ordered_dataloader() for p in batch["prompt"]]
    assert prompts == ["a wide picture", "a red tower", "grey"]


def setup_error(root, **kwargs):
    with pytest.raises(DataError) as info:
        ImageTextFolderDataModule(root, resolution=16, **kwargs).setup()
    return str(info.value)


def test_missing_folder_and_metadata(tmp_path):
    assert "does not exist" in setup_error(tmp_path / "nowhere")
    assert "metadata.jsonl is missing" in setup_error(tmp_path)


def test_empty_metadata(tmp_path):
    root = write_folder(tmp_path / "d", ["", "  "], {})
    assert "metadata.jsonl is empty" in setup_error(root)


def test_malformed_json_names_line(tmp_path):
    image = {"a.png": Image.new("RGB", (8, 8))}
    root = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "x"}, '{"file_name": "a.png", '], image)
    message = setup_error(root)
    assert "metadata.jsonl line 2" in message and "not valid JSON" in message


def test_missing_keys_named(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "a.png"}], {"a.png": Image.new("RGB", (8, 8))})
    message = setup_error(root)
    assert "metadata.jsonl line 1" in message and "['text']" in message


def test_missing_image_named(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "gone.png", "text": "x"}], {})
    message = setup_error(root)
    assert "line 1" in message and "gone.png" in message


def test_unreadable_image_named_when_loaded(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "junk.png", "text": "x"}], {"junk.png": b"not a png"})
    dm = ImageTextFolderDataModule(root, resolution=16, batch_size=1)
    dm.setup()  # metadata is fine; the bytes are only decoded on load
    with pytest.raises(DataError, match="junk.png: cannot read image"):
        next(iter(dm.train_dataloader()))


def test_batch_larger_than_folder(folder):
    with pytest.raises(DataError, match="data.batch_size=8"):
        ImageTextFolderDataModule(folder, resolution=16, batch_size=8).train_dataloader()


def numbered_folder(root, n):
    images = {f"{i}.png": Image.new("RGB", (8, 8), (i, i, i)) for i in range(n)}
    return write_folder(root, [{"file_name": f"{i}.png", "text": f"caption {i}"} for i in range(n)], images)


def test_heldout_split_is_seeded_disjoint_and_keeps_metadata_order(tmp_path):
    root = numbered_folder(tmp_path / "d", 10)
    dm = ImageTextFolderDataModule(root, resolution=8, batch_size=1, heldout_fraction=0.3, split_seed=0)
    dm.setup()
    train, heldout = dm.splits["train"], dm.splits["heldout"]
    assert len(heldout) == 3 and len(train) == 7 and sorted(train + heldout) == sorted(dm.items)
    assert train == [item for item in dm.items if item in train]  # metadata order within each split
    again = ImageTextFolderDataModule(root, resolution=8, heldout_fraction=0.3, split_seed=0)
    again.setup()
    assert again.splits == dm.splits
    other_seeds = [ImageTextFolderDataModule(root, resolution=8, heldout_fraction=0.3, split_seed=s) for s in (1, 2)]
    assert any((m.setup(), m.splits["heldout"])[1] != heldout for m in other_seeds)

    assert len(dm.train_dataloader().dataset) == 7 and dm.split_size("heldout") == 3
    grey = [int(path.stem) for path, _ in heldout]
    assert dm.reference_images("heldout")[:, 0, 0, 0].tolist() == grey  # image k of the split is its k-th item
    assert sorted(set(dm.eval_prompts(6))) == sorted(f"caption {i}" for i in grey)  # prompts of held-out images


def test_heldout_fraction_bounds_and_the_folder_without_one(tmp_path):
    root = numbered_folder(tmp_path / "d", 4)
    assert ImageTextFolderDataModule(root, resolution=8).reference_images().shape[0] == 4  # all train
    with pytest.raises(DataError, match=r"no held-out split .*data\.heldout_fraction=0\.1"):
        ImageTextFolderDataModule(root, resolution=8).reference_images("heldout")
    for bad in (1.0, -0.1):
        with pytest.raises(DataError, match="data.heldout_fraction"):
            ImageTextFolderDataModule(root, resolution=8, heldout_fraction=bad).setup()
    small = ImageTextFolderDataModule(root, resolution=8, heldout_fraction=0.01)  # rounds to 0: one is held out
    assert small.split_size("heldout") == 1 and small.split_size("train") == 3
