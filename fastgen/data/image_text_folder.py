"""Image-text folder in the Hugging Face `imagefolder` layout, as a text-to-image data module.

Layout: `root/metadata.jsonl` holds one {"file_name": "<path relative to root>", "text": "<caption>"} per
line (blank lines skipped); extra keys are ignored. `setup()` validates every line up front (missing folder,
missing or empty metadata, malformed JSON, missing keys, missing image files: each error names the file
and line); an image that exists but cannot be decoded is reported, with its file name, when it is loaded.

Split (`heldout_fraction`, `split_seed`): round(N * heldout_fraction) images (at least one when the fraction is
positive, at most N - 1) drawn by `torch.randperm(N)` seeded with `split_seed` are held out, the rest train;
each split keeps metadata order. With a held-out split the folder can be its own FID reference
(`eval.fid.reference_split=heldout`) and the evaluation prompts are the held-out captions; with
`heldout_fraction=0` (the default) every image trains and there is no held-out split.

Preprocessing (as in diffusers' train_text_to_image.py; PREPROCESSING names it in reference cache keys): RGB;
shorter side resized to `resolution` (PIL bicubic, antialiased); centre crop, or a uniformly random crop when
`center_crop=False`; optional random horizontal flip; pixels scaled to [-1, 1]. `reference_images` and
`ordered_dataloader` always use the centre crop without flips, in metadata order.
"""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fastgen.data.errors import DataError
from fastgen.data.loading import decode_image, files_sha256, read_jsonl, shuffled_loader, uint8_to_pixels
from fastgen.data.prompts import sample_prompts

METADATA_FILE = "metadata.jsonl"
METADATA_KEYS = ("file_name", "text")
PREPROCESSING = "pil_bicubic_short_side_center_crop"
SPLITS = ("train", "heldout")


def read_image_text_metadata(root):
    """[(image path, caption)] from `root/metadata.jsonl`, validated line by line (see module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r}: folder does not exist")
    metadata = root / METADATA_FILE
    if not metadata.is_file():
        raise DataError(
            f"{metadata} is missing: an image-text folder needs one "
            '{"file_name": "<image path relative to the folder>", "text": "<caption>"} per line'
        )
    items = []
    for lineno, record in read_jsonl(metadata, METADATA_KEYS):
        image = root / str(record["file_name"])
        if not image.is_file():
            raise DataError(f"{metadata} line {lineno}: image {image} does not exist")
        items.append((image, str(record["text"])))
    if not items:
        raise DataError(f"{metadata} is empty: it lists no images")
    return items


def load_image(path, resolution, center_crop=True, flip=False):
    """uint8 [3, resolution, resolution]: RGB, shorter side resized (bicubic), centre or random crop, flip."""
    image = decode_image(path)
    scale = resolution / min(image.size)
    width, height = (max(resolution, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.BICUBIC)
    if center_crop:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left, top = (int(torch.randint(extent - resolution + 1, ())) for extent in (width, height))
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return pixels.flip(-1) if flip else pixels


class ImageTextDataset(Dataset):
    """{"image": [3, R, R] in [-1, 1], "prompt": caption} for each (image path, caption) pair, loaded on access."""

    def __init__(self, items, resolution, center_crop=True, random_flip=False):
        self.items, self.resolution, self.center_crop, self.random_flip = items, resolution, center_crop, random_flip

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, caption = self.items[i]
        flip = self.random_flip and bool(torch.rand(()) < 0.5)
        image = load_image(path, self.resolution, self.center_crop, flip)
        return {"image": uint8_to_pixels(image), "prompt": caption}


def split_items(items, heldout_fraction, seed):
    """{"train": items, "heldout": items}: a seeded random `heldout_fraction` held out, metadata order kept."""
    if not 0 <= heldout_fraction < 1:
        raise DataError(f"data.heldout_fraction={heldout_fraction!r} must be in [0, 1)")
    k = min(max(round(len(items) * heldout_fraction), 1), len(items) - 1) if heldout_fraction > 0 else 0
    if heldout_fraction > 0 and k < 1:
        raise DataError(f"data.heldout_fraction={heldout_fraction}: a folder of one image cannot be split")
    heldout = set(torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:k].tolist())
    return {"train": [item for i, item in enumerate(items) if i not in heldout],
            "heldout": [item for i, item in enumerate(items) if i in heldout]}


class ImageTextFolderDataModule(L.LightningDataModule):
    """Batches {"image", "prompt"} from an image-text folder, plus the evaluation hooks (name = folder name)."""

    def __init__(self, root, resolution=512, center_crop=True, random_flip=False, batch_size=4, num_workers=0,
                 heldout_fraction=0.0, split_seed=0):
        super().__init__()
        self.save_hyperparameters()
        if not isinstance(resolution, int) or resolution < 1:
            raise DataError(f"data.resolution={resolution!r} must be a positive integer")
        self.root, self.resolution = Path(root), resolution
        self.center_crop, self.random_flip = center_crop, random_flip
        self.batch_size, self.num_workers = batch_size, num_workers
        self.heldout_fraction, self.split_seed = float(heldout_fraction), split_seed
        self.name = self.root.name
        self.items = self.splits = None

    def setup(self, stage=None):
        """Read and validate metadata.jsonl and split it (once)."""
        if self.items is None:
            items = read_image_text_metadata(self.root)
            self.splits = split_items(items, self.heldout_fraction, self.split_seed)
            self.items = items

    def _split(self, split):
        if split not in SPLITS:
            raise DataError(f"split={split!r} is not one of {SPLITS}")
        self.setup()
        if not self.splits[split]:
            raise DataError(f"{self.root} has no held-out split (data.heldout_fraction=0): set "
                            "data.heldout_fraction=0.1 to hold out images as the reference, or eval.coco_root=DIR")
        return self.splits[split]

    def split_size(self, split):
        """Number of images in `split`."""
        return len(self._split(split))

    def train_dataloader(self):
        dataset = ImageTextDataset(self._split("train"), self.resolution, self.center_crop, self.random_flip)
        return shuffled_loader(dataset, self.batch_size, self.num_workers)

    def ordered_dataloader(self):
        """Every training image once, in metadata order, centre-cropped and unflipped (for a latent cache)."""
        dataset = ImageTextDataset(self._split("train"), self.resolution)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def _first(self, split, n):
        items = self._split(split)
        if n is not None and not 0 < n <= len(items):
            raise DataError(f"asked for n={n} reference images but the {split} split of {self.root} holds {len(items)}")
        return items[:n]

    def reference_images(self, split="train", n=None):
        """uint8 [N, 3, R, R]: the first `n` images of `split` (all if None) in metadata order, centre-cropped."""
        return torch.stack([load_image(path, self.resolution) for path, _ in self._first(split, n)])

    def reference_spec(self, split="train", n=None):
        """Everything `reference_images(split, n)` depends on, the images' content hash included (cache key)."""
        paths = [path for path, _ in self._first(split, n)]
        return {"dataset": self.name, "split": split, "split_seed": self.split_seed,
                "heldout_fraction": self.heldout_fraction, "resolution": self.resolution,
                "preprocessing": PREPROCESSING, "n": len(paths), "images_sha256": files_sha256(self.root, paths)}

    def eval_prompts(self, n, seed=0):
        """`n` captions of the held-out images (of all images without a held-out split) in a seeded order,
        cycling if `n` exceeds them."""
        self.setup()
        return sample_prompts([caption for _, caption in self.splits["heldout"] or self.items], n, seed)
