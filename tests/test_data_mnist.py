"""MNIST-5k data module: real digits, correct labels, a fixed stratified split, prompts that round-trip."""

import pytest
import torch

from fastgen.data import DataError, MNISTDataModule, digit_prompt, label_from_prompt, load_mnist_5k
from fastgen.data.mnist import DIGIT_WORDS, DigitPromptDataset, split_indices


@pytest.fixture(scope="module")
def dm():
    return MNISTDataModule(batch_size=16)


def test_load_mnist_5k_values_and_labels():
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert int(images.max()) == 255 and int(images.min()) == 0
    assert torch.bincount(labels).tolist() == [500] * 10
    # the shipped file is sorted by label (label = last column)
    assert [int(labels[i]) for i in (0, 499, 500, 2500, 4999)] == [0, 0, 1, 5, 9]


def test_images_look_like_their_labels():
    images, labels = load_mnist_5k()
    centre = images[:, 12:16, 12:16].float().mean(dim=(1, 2))
    # a zero has a hole in the middle, a one is a stroke through it
    assert centre[labels == 1].mean() > 4 * centre[labels == 0].mean()


def test_split_is_deterministic_disjoint_stratified_and_interleaved():
    train, heldout = split_indices(0)
    _, labels = load_mnist_5k()
    assert len(train) == 4000 and len(heldout) == 1000
    assert set(train.tolist()).isdisjoint(heldout.tolist())
    assert sorted(train.tolist() + heldout.tolist()) == list(range(5000))
    assert torch.bincount(labels[heldout]).tolist() == [100] * 10
    assert labels[heldout[:20]].tolist() == list(range(10)) * 2
    again, _ = split_indices(0)
    other, _ = split_indices(1)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_train_batch_contract(dm):
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert (batch["image"][..., :2, :] == -1).all() and (batch["image"][..., -2:] == -1).all()  # zero border
    assert batch["label"].dtype == torch.int64
    assert [label_from_prompt(p) for p in batch["prompt"]] == batch["label"].tolist()
    assert len(dm.train_dataloader()) == 4000 // 16


def test_reference_images_and_labelled_splits(dm):
    ref = dm.reference_images()
    assert ref.shape == (1000, 1, 32, 32) and ref.dtype == torch.uint8 and int(ref.max()) == 255
    assert torch.equal(dm.reference_images(n=10), ref[:10])
    assert dm.reference_images("train").shape == (4000, 1, 32, 32)
    images, labels = dm.train_labelled("heldout")
    assert torch.equal(((images + 1) * 127.5).round().to(torch.uint8), ref)
    assert labels[:10].tolist() == list(range(10))
    with pytest.raises(DataError, match="split='test'"):
        dm.reference_images("test")
    with pytest.raises(DataError, match="n=1001"):
        dm.reference_images(n=1001)


def test_eval_prompts_balanced_and_seeded(dm):
    prompts = dm.eval_prompts(50, seed=0)
    assert prompts == dm.eval_prompts(50, seed=0) and prompts != dm.eval_prompts(50, seed=1)
    assert torch.bincount(torch.tensor([label_from_prompt(p) for p in prompts])).tolist() == [5] * 10
    assert dm.name == "mnist" and dm.resolution == 32


def test_prompt_label_round_trip():
    for d in range(10):
        assert label_from_prompt(digit_prompt(d)) == d
    assert digit_prompt(7) == "a handwritten digit seven"
    assert label_from_prompt("  A handwritten digit Seven ") == 7
    with pytest.raises(DataError, match="canonical"):
        label_from_prompt("a photo of a cat")


def test_templates_and_their_validation():
    dm = MNISTDataModule(batch_size=8, templates=["the number {digit}", "{word}, handwritten"])
    batch = next(iter(dm.train_dataloader()))
    for prompt, label in zip(batch["prompt"], batch["label"].tolist()):
        assert prompt in (f"the number {label}", f"{DIGIT_WORDS[label]}, handwritten")
    with pytest.raises(DataError, match="names no digit"):
        MNISTDataModule(templates=["a digit"])
    with pytest.raises(DataError, match=r"data.templates\[0\]"):
        MNISTDataModule(templates=["a {colour} digit {word}"])


def test_hflip_flips_some_draws():
    image = torch.arange(4.0).view(1, 1, 2, 2)
    dataset = DigitPromptDataset(image, torch.tensor([3]), ["{word}"], hflip=True)
    torch.manual_seed(0)
    seen = {tuple(dataset[0]["image"].flatten().tolist()) for _ in range(20)}
    assert seen == {(0.0, 1.0, 2.0, 3.0), (1.0, 0.0, 3.0, 2.0)}
