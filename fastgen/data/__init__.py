"""Data modules yielding the batch contract {"image" | "latent", "prompt", "prompt_embeds"?, "label"?}."""

from fastgen.data.errors import DataError
from fastgen.data.image_text_folder import ImageTextFolderDataModule
from fastgen.data.latent_cache import LatentCacheDataModule, build_latent_cache
from fastgen.data.mnist import MNISTDataModule, digit_prompt, label_from_prompt, load_mnist_5k
from fastgen.data.prompts import load_prompt_set, prompts_sha256

__all__ = [
    "DataError",
    "ImageTextFolderDataModule",
    "LatentCacheDataModule",
    "MNISTDataModule",
    "build_latent_cache",
    "digit_prompt",
    "label_from_prompt",
    "load_mnist_5k",
    "load_prompt_set",
    "prompts_sha256",
]
