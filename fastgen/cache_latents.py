"""`python -m fastgen.cache_latents --data DIR --pretrained SD15 --out CACHE`: encode an image-text folder once into
a latent cache for SD-scale training.

Then train with the latent-cache data module pointed at --out. Re-running the same command resumes:
shards already written are kept (see fastgen/data/latent_cache.py).
"""

import argparse
import hashlib

from fastgen.data.errors import DataError
from fastgen.data.image_text_folder import METADATA_FILE, ImageTextFolderDataModule
from fastgen.data.latent_cache import build_latent_cache


def cache_latents(data, backbone, out, model_id, resolution=512, batch_size=8, shard_size=1024, num_workers=0):
    """Encode `data` (an image-text folder) with `backbone.encode` / `.encode_prompts` into shards under `out`."""
    datamodule = ImageTextFolderDataModule(data, resolution=resolution, batch_size=batch_size, num_workers=num_workers)
    datamodule.setup()
    metadata_sha = hashlib.sha256((datamodule.root / METADATA_FILE).read_bytes()).hexdigest()
    fingerprint = f"model={model_id} resolution={resolution} metadata_sha256={metadata_sha}"
    device = next(backbone.parameters()).device
    return build_latent_cache(
        datamodule.ordered_dataloader(),
        encode_images=lambda pixels: backbone.encode(pixels.to(device)),
        encode_prompts=backbone.encode_prompts,
        out_dir=out,
        shard_size=shard_size,
        fingerprint=fingerprint,
        resolution=resolution,
    )


def pick_device(parser, name):
    """The torch device to encode on: `name`, or cuda when there is one, else cpu; a device that does not exist
    here ends the command with one line."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        parser.exit(2, f"error: --device {name}: {e}\n")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        parser.exit(2, f"error: --device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                       "use --device cpu or leave --device out\n")
    if device.type not in ("cuda", "cpu"):
        parser.exit(2, f"error: --device {name}: use cuda, cuda:N or cpu\n")
    return device


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="image-text folder (images + metadata.jsonl)")
    parser.add_argument("--pretrained", required=True, help="SD1.5 weights: a local diffusers folder or hub id")
    parser.add_argument("--out", required=True, help="cache directory to write (or resume)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if there is one, else cpu)")
    args = parser.parse_args(argv)
    device = pick_device(parser, args.device)

    from fastgen.networks import MissingWeightsError, build_pretrained

    try:
        backbone = build_pretrained(args.pretrained, dtype=args.dtype, config_key="--pretrained")
        index = cache_latents(
            args.data,
            backbone.to(device).eval(),
            args.out,
            model_id=f"{args.pretrained} ({args.dtype})",
            resolution=args.resolution,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            num_workers=args.num_workers,
        )
    except (DataError, MissingWeightsError) as e:
        parser.exit(2, f"error: {e}\n")
    print(f"cached {index['count']} samples in {len(index['shards'])} shard(s) under {args.out}")


if __name__ == "__main__":
    main()
