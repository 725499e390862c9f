"""Backbones (UNet + text encoder + tokenizer + optional VAE + schedule) and discriminators."""

from fastgen.networks.backbone import Backbone
from fastgen.networks.builders import MissingWeightsError, build_pretrained, build_random, resolve_pretrained, save_backbone

__all__ = ["Backbone", "MissingWeightsError", "build_pretrained", "build_random", "resolve_pretrained", "save_backbone"]
