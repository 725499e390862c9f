"""From a trained method to images people use: text-to-image and image-to-image sampling on the evaluation's
noises (sampling.py), image files (images.py), and export to diffusers pipelines (export.py); ControlNet residuals
for any method's UNet are `fastgen.networks.controlnet`."""
