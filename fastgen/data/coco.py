"""MS-COCO 2017 val as the text-to-image evaluation's prompts and FID reference (`eval.coco_root=DIR`).

Layout (the official one): `DIR/annotations/captions_val2017.json` and `DIR/val2017/<file_name>` for every
image the annotation file lists (`{image_id:012d}.jpg` when it has no "images" list).

Selection: the listed images that have a caption, sorted by image id; each one's prompt is its lowest-id
caption, stripped (the "first" rule of fastgen.data.prompts). On the official annotations these are the
5,000 val2017 images in the order of the shipped `coco2017_5k` prompt list (built the same way, see
fastgen/assets/prompts/ATTRIBUTION.md): image k is the reference image of prompt k, and with
`eval.num_samples=n` the first n images and captions are used.

Preprocessing (PREPROCESSING, shared with the image-text folder): RGB, the shorter side resized to the
evaluated resolution with PIL's bicubic filter (antialiased when downscaling: PIL widens the kernel by the
scale factor), centre crop. The same filter as the training images of an image-text folder, so the `real_data`
floor compares like with like; an antialiased resize is what clean-fid (Parmar et al., CVPR 2022) shows FID
needs -- aliased resizes (OpenCV / torch bilinear without antialiasing) shift it by several points.
"""

import functools
from pathlib import Path

import torch

from fastgen.data.errors import DataError
from fastgen.data.image_text_folder import PREPROCESSING, load_image
from fastgen.data.loading import files_sha256
from fastgen.data.prompts import first_captions, load_prompt_set, read_coco_captions_file

SPLIT = "val2017"
ANNOTATIONS = Path("annotations") / f"captions_{SPLIT}.json"
STANDARD_PROMPT_SET = "coco2017_5k"  # the shipped list these captions reproduce on the official annotations


class CocoVal:
    """The captioned val2017 images of a COCO folder, as a reference source: `eval_prompts`, `reference_images`,
    `reference_spec` (the data modules' evaluation hooks), at `resolution` pixels."""

    name = "coco2017"

    def __init__(self, root, resolution=None):
        self.root, self.resolution = Path(root), resolution
        self._entries = None
        self._hashes = {}

    @property
    def annotations(self):
        return self.root / ANNOTATIONS

    def entries(self):
        """[(image path, first caption)] sorted by image id, read and checked once (DataError naming the key)."""
        if self._entries is None:
            if not self.root.is_dir():
                raise DataError(f"eval.coco_root={str(self.root)!r}: folder does not exist")
            if not self.annotations.is_file():
                raise DataError(f"eval.coco_root: {self.annotations} is missing (the MS-COCO 2017 layout has "
                                f"annotations/captions_{SPLIT}.json and {SPLIT}/*.jpg)")
            data = read_coco_captions_file(self.annotations)
            files = {image["id"]: image["file_name"] for image in data.get("images") or []}
            captions = first_captions(data["annotations"])
            self._entries = [(self.root / SPLIT / files.get(image_id, f"{image_id:012d}.jpg"), caption)
                             for image_id, caption in captions.items()]
            if not self._entries:
                raise DataError(f"{self.annotations}: holds no captions")
        return self._entries

    def first(self, n):
        """The first `n` entries (all if None), whether their images are on disk or not."""
        entries = self.entries()
        if n is not None and not 0 < n <= len(entries):
            raise DataError(f"eval.num_samples={n}: {self.annotations} captions only {len(entries)} images")
        return entries[:n]

    def used(self, n):
        """The first `n` entries, every image present on disk, else a DataError naming the first missing file."""
        entries = self.first(n)
        missing = [path for path, _ in entries if not path.is_file()]
        if missing:
            raise DataError(f"eval.coco_root: {len(missing)} of the {len(entries)} images used are missing, "
                            f"e.g. {missing[0]} (complete the download, or lower eval.num_samples)")
        return entries

    def eval_prompts(self, n, seed=0):
        """The first captions of the first `n` images, in image id order (a fixed list: `seed` is not used)."""
        return [caption for _, caption in self.first(n)]

    def reference_images(self, split=SPLIT, n=None):
        """uint8 [n, 3, R, R] of the first `n` images, preprocessed as the module doc says."""
        self._check(split)
        return torch.stack([load_image(path, self.resolution) for path, _ in self.used(n)])

    def reference_spec(self, split=SPLIT, n=None):
        """Everything the reference statistics depend on (the reference cache key)."""
        self._check(split)
        entries = self.used(n)
        if len(entries) not in self._hashes:
            self._hashes[len(entries)] = files_sha256(self.root, [path for path, _ in entries])
        return {"dataset": self.name, "split": SPLIT, "order": "image_id", "caption_rule": "first",
                "resolution": self.resolution, "preprocessing": PREPROCESSING, "n": len(entries),
                "images_sha256": self._hashes[len(entries)]}

    def _check(self, split):
        if split != SPLIT:
            raise DataError(f"split={split!r}: the COCO reference is {SPLIT!r}")
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise DataError("eval.coco_root needs the evaluated resolution: set data.resolution "
                            f"or eval.resolution (got {self.resolution!r})")

    def standard_prompts_match(self, n):
        """Whether the first `n` captions equal the first `n` of the shipped coco2017_5k list."""
        standard = load_prompt_set(STANDARD_PROMPT_SET)
        return n <= len(standard) and self.eval_prompts(n) == standard[:n]


@functools.lru_cache(maxsize=8)
def coco_val(root, resolution=None):
    """The `CocoVal` of a folder, one per (root, resolution) per process (its file hashes are computed once)."""
    return CocoVal(root, resolution)


def coco_prompts(settings):
    """The evaluation prompts under `eval.coco_root`: the first captions of the first `eval.num_samples` images.

    `eval.prompts` must then be null or coco2017_5k (the list these captions are on the official annotations)."""
    if settings.prompts not in (None, STANDARD_PROMPT_SET):
        raise DataError(f"eval.prompts={settings.prompts} conflicts with eval.coco_root (the prompts are the "
                        "captions of the COCO reference images): set eval.prompts=null")
    return coco_val(str(settings.coco_root)).eval_prompts(settings.num_samples)
