"""Prompt accuracy for MNIST: a small CNN reads each generated digit and checks it against the prompted one.

MNIST has no text-image model, so prompt accuracy is this dataset's stand-in for CLIP score: the fraction of
generated images that the classifier labels as the digit named in their prompt ("a handwritten digit seven" ->
7, via `fastgen.data.mnist.label_from_prompt`). The classifier is trained on the data module's real training
split (`train_labelled("train")`) and its held-out accuracy bounds what the metric can resolve (it is the
`prompt_accuracy` of the `real_data` row). A trained copy ships as fastgen/assets/digit_classifier.safetensors
(loaded by default; `eval.prompt_accuracy.weights` overrides); `classifier_for(datamodule, cache_dir)` retrains
one for other data, cached under the cache dir keyed by a hash of the training images and labels.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fastgen.core.files import atomic_path
from fastgen.eval.models.assets import sha256_file

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "digit_classifier.safetensors"
INPUT_SIZE = 32


class DigitClassifier(nn.Module):
    """Three conv blocks (16, 32, 64 channels, each conv-ReLU-maxpool) and a 2-layer head: ~90k parameters."""

    def __init__(self, num_classes=10):
        super().__init__()
        blocks = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, pixels):
        """Logits [N, 10] of grayscale pixels in [-1, 1], [N, 1, 32, 32]."""
        return self.head(self.features(pixels))


def uint8_to_classifier_input(images):
    """uint8 [N, 1|3, H, W] -> grayscale float in [-1, 1] at 32x32 (bilinear resize when the size differs)."""
    x = images.float().mean(dim=1, keepdim=True) / 127.5 - 1
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def training_data_hash(images, labels):
    """sha256 of the training images (as float32 bytes) and labels: the cache key of a trained classifier."""
    digest = hashlib.sha256(images.float().contiguous().numpy().tobytes())
    digest.update(labels.long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def random_shift(pixels, max_shift, generator):
    """Translate each image by up to `max_shift` pixels in x and y (background -1 fills the border)."""
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_digit_classifier(images, labels, epochs=25, batch_size=64, lr=2e-3, seed=0):
    """Train a DigitClassifier on pixels in [-1, 1] with random shifts of up to 2 px (Adam, cosine LR)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(random_shift(images[batch], 2, generator)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model, pixels, batch_size=500):
    """Predicted digits [N] of classifier inputs (pixels in [-1, 1] at 32x32)."""
    device = next(model.parameters()).device
    return torch.cat([model(pixels[i:i + batch_size].to(device)).argmax(-1).cpu()
                      for i in range(0, len(pixels), batch_size)])


def save_classifier(model, path, metadata):
    """Write the classifier's state dict as safetensors (atomically) with string metadata."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.chmod(tmp, 0o644)


def load_classifier(path=None):
    """A DigitClassifier from a safetensors file (default: the shipped one)."""
    path = Path(path or SHIPPED_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"digit classifier weights {path} not found (eval.prompt_accuracy.weights)")
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    model.weights_path = path
    return model.eval()


def classifier_for(datamodule, cache_dir, **train_kwargs):
    """A classifier trained on `datamodule.train_labelled("train")`, cached under cache_dir by data hash.

    Returns (model, heldout accuracy).
    """
    images, labels = datamodule.train_labelled("train")
    path = Path(cache_dir) / f"digit_classifier-{training_data_hash(images, labels)[:16]}.safetensors"
    if path.is_file():
        model = load_classifier(path)
    else:
        model = train_digit_classifier(images, labels, **train_kwargs)
        save_classifier(model, path, {"train_sha256": training_data_hash(images, labels)})
        model.weights_path = path
    heldout_images, heldout_labels = datamodule.train_labelled("heldout")
    return model, float((predict(model, heldout_images) == heldout_labels).float().mean())


class PromptAccuracy:
    """Per-image correctness (1.0 / 0.0) of uint8 images against the digit named in their prompts."""

    def __init__(self, model):
        self.model = model
        self.weights_sha256 = sha256_file(model.weights_path)

    def __call__(self, images, prompts):
        from fastgen.data.mnist import label_from_prompt

        targets = torch.tensor([label_from_prompt(p) for p in prompts])
        return (predict(self.model, uint8_to_classifier_input(images)) == targets).float()
