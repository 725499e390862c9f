"""The MNIST prompt-accuracy classifier: the shipped copy reads real held-out digits; training is cached by data."""

import pytest
import torch
from safetensors import safe_open

from fastgen.data.mnist import MNISTDataModule, digit_prompt
from fastgen.eval.models.digit_classifier import SHIPPED_WEIGHTS, PromptAccuracy, classifier_for, load_classifier, predict


@pytest.fixture(scope="module")
def mnist():
    datamodule = MNISTDataModule()
    datamodule.setup()
    return datamodule


def test_shipped_classifier_reads_heldout_digits(mnist):
    pixels, labels = mnist.train_labelled("heldout")
    accuracy = (predict(load_classifier(), pixels) == labels).float().mean().item()
    assert accuracy >= 0.97
    with safe_open(str(SHIPPED_WEIGHTS), "pt") as f:
        assert abs(float(f.metadata()["heldout_accuracy"]) - accuracy) < 1e-6
    assert SHIPPED_WEIGHTS.stat().st_size < 1_000_000


def test_prompt_accuracy_checks_the_prompted_digit(mnist):
    images, labels = mnist.reference_images("heldout", 40), mnist.train_labelled("heldout")[1][:40]
    scorer = PromptAccuracy(load_classifier())
    right = scorer(images, [digit_prompt(int(d)) for d in labels])
    wrong = scorer(images, [digit_prompt((int(d) + 1) % 10) for d in labels])
    assert right.mean() >= 0.95 and wrong.mean() <= 0.05
    assert scorer(images.expand(-1, 3, -1, -1)[:, :, 2:-2, 2:-2], [digit_prompt(int(d)) for d in labels]).mean() > 0.9


class TinyDigits:
    def train_labelled(self, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return torch.rand(64, 1, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (64,), generator=g)


class OtherDigits(TinyDigits):
    def train_labelled(self, split):
        images, labels = super().train_labelled(split)
        return images.flip(-1), labels


def test_classifier_for_caches_by_training_data_hash(tmp_path, monkeypatch):
    """The second call loads the cached file (training again would raise); other training data trains anew."""
    import fastgen.eval.models.digit_classifier as digit_classifier

    model, accuracy = classifier_for(TinyDigits(), tmp_path, epochs=1)
    files = list(tmp_path.glob("digit_classifier-*.safetensors"))
    assert len(files) == 1 and 0 <= accuracy <= 1
    trainer = digit_classifier.train_digit_classifier

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a classifier for this data is cached")

    monkeypatch.setattr(digit_classifier, "train_digit_classifier", no_training)
    again, _ = classifier_for(TinyDigits(), tmp_path, epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(AssertionError, match="retrained"):  # the key is the data: flipped images are not a hit
        classifier_for(OtherDigits(), tmp_path, epochs=1)
    monkeypatch.setattr(digit_classifier, "train_digit_classifier", trainer)
    classifier_for(OtherDigits(), tmp_path, epochs=1)
    assert len(list(tmp_path.glob("digit_classifier-*.safetensors"))) == 2
