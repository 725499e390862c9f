"""fastgen: a benchmark framework for few-step text-to-image diffusion methods."""
__version__ = "0.1.0"
