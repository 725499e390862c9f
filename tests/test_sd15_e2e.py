"""Every `*_sd15` experiment end to end, as the README's walkthrough runs it, on tiny stand-ins made here: a
Stable Diffusion 1.5-format pipeline directory (diffusers `save_pretrained`, random init, 64 px out), an MS-COCO
2017-layout folder and an image-text folder. Each experiment trains two steps and evaluates against the COCO
reference -- FID/KID, CLIP and aesthetic scores (small random-weight open_clip / MLP files), latency -- next to
the DPM-Solver++ baseline and the `real_data` floor; then `fastgen.leaderboard` renders the rows and
`fastgen.evaluate ckpt=...` re-evaluates one checkpoint. In-process: one import of torch/diffusers for all."""

import json
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fastgen.runtime.config import CONFIG_PATH, register_resolvers
from fastgen.eval.models.aesthetic import AestheticMLP
from fastgen.eval.leaderboard.io import read_leaderboard
from fastgen.networks.clip_tokenizer import build_clip_tokenizer
from test_data_coco import write_coco

pytestmark = pytest.mark.usefixtures("one_thread")

N = 8  # evaluation samples
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_PATH) / "experiment").glob("*_sd15.yaml"))
TINY_CLIP = {  # a 1-layer ViT with ViT-L-14's 768-d embedding (what the aesthetic MLP reads), as an open_clip config
    "embed_dim": 768,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def save_tiny_sd15_pipeline(out, cache_dir):
    """SD1.5's layout and component classes at toy size: 8x8 latents, a 4-level KL-VAE (x8, so 64 px images),
    77-token CLIP text encoder, SD1.5's PNDM scheduler config, written by StableDiffusionPipeline.save_pretrained."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu"))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(str(cache_dir)),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def write_image_text_folder(root, n=24):
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
            f.write(json.dumps({"file_name": f"{i:03d}.png", "text": f"a photo of object number {i}"}) + "\n")
    return root


def write_clip_files(folder):
    """A random-init open_clip model file (registered config) and a random LAION-style aesthetic MLP file."""
    config = folder / "fastgen-e2e-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(open_clip.create_model("fastgen-e2e-tiny-clip", pretrained=None).state_dict(), folder / "clip.pt")
    torch.save(AestheticMLP().state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    return [f"eval.clip.model=fastgen-e2e-tiny-clip", f"eval.clip.pretrained={folder / 'clip.pt'}",
            f"eval.aesthetic.clip_model=fastgen-e2e-tiny-clip", f"eval.aesthetic.clip_pretrained={folder / 'clip.pt'}",
            f"eval.aesthetic.weights={folder / 'sac+logos+ava1-l14-linearMSE.pth'}"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd15_e2e")
    return {
        "tmp": tmp,
        "pipeline": save_tiny_sd15_pipeline(tmp / "tiny-sd15", tmp / "cache"),
        "data": write_image_text_folder(tmp / "images"),
        "coco": write_coco(tmp / "coco", [139, 285, 632, 724, 776, 785, 802, 872, 885, 1000, 1268, 1296, 1353,
                                          1425, 1490, 1503, 1532, 1584], size=(80, 60)),
        "metrics": write_clip_files(tmp),
        "board": tmp / "sd15.csv",
    }


def compose_config(name, overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(name, overrides=overrides)


def acceptance_overrides(experiment, world):
    """The README's command (`python -m fastgen.fit experiment=... model.pretrained=DIR data.root=DIR
    eval.coco_root=DIR ...`) at eval.num_samples=N (Inception on the CPU is most of this test's time), plus
    where this test keeps its files and its metric weights."""
    tmp = world["tmp"]
    return [
        f"experiment={experiment}", f"model.pretrained={world['pipeline']}", f"data.root={world['data']}",
        f"eval.coco_root={world['coco']}", "data.resolution=64", "trainer.max_steps=2", "trainer.max_kimg=null",
        "trainer.precision=32-true", f"eval.num_samples={N}", "eval.steps=[1,4]", "eval.baseline_steps=[1,4]",
        f"eval.leaderboard={world['board']}",
        # test-only: outputs under tmp, metric weights written above, no worker processes on a 2-core machine
        f"experiment_name={experiment}", f"run_name={experiment}", f"paths.runs_dir={tmp}/runs",
        f"paths.output_dir={tmp}/runs/{experiment}", f"paths.cache_dir={tmp}/cache", "data.num_workers=0",
        "trainer.accelerator=cpu", "~callbacks.progress", *world["metrics"],
    ]


def test_every_sd15_experiment_trains_evaluates_against_coco_and_renders(world, capsys):
    from fastgen.evaluate import evaluate
    from fastgen.fit import run
    from fastgen.leaderboard import main as leaderboard_main

    assert EXPERIMENTS == ["ddgan_sd15", "dmd_sd15", "lcm_lora_sd15", "lcm_sd15", "siddm_sd15", "tscd_sd15", "ufogen_sd15"]
    start, seconds = time.perf_counter(), {}
    for experiment in EXPERIMENTS:
        began = time.perf_counter()
        method = run(compose_config("config", acceptance_overrides(experiment, world)))
        seconds[experiment] = time.perf_counter() - began
        with capsys.disabled():
            print(f"[sd15 e2e] {experiment}: {seconds[experiment]:.1f} s")
        assert method.trainer.global_step >= 2 and method.backbone.image_shape == (3, 64, 64)

    board = read_leaderboard(world["board"])
    assert set(board["experiment"]) == set(EXPERIMENTS)
    assert board["reference"].str.startswith(f"coco2017-val2017-64px-n{N}-pil_bicubic_short_side_center_crop-").all()
    assert board["reference_sha256"].nunique() == 1 and board["prompts_sha256"].nunique() == 1
    floors = board[board["method"] == "real_data"]
    assert len(floors) == len(EXPERIMENTS) and (floors["fid"] > 0).all() and (floors["kid"].abs() > 0).all()
    baseline = board[board["method"] == "dpm_solver"]
    assert sorted(set(baseline["steps"].astype(int))) == [1, 4]  # computed once per teacher and guidance, cached
    trained = board[~board["method"].isin(["real_data", "dpm_solver"])]
    assert set(trained["method"]) == {"ufogen", "siddm", "ddgan", "lcm", "lcm_lora", "tscd", "tscd@final", "tscd@unified", "dmd"}
    for method, steps in trained.groupby("method")["steps"]:
        expected = [4] if method in ("ddgan", "siddm") else [1] if method == "dmd" else [1, 4]  # T = 4 GAN chains; one step
        assert sorted(steps.astype(int)) == expected, method
    scored = board[board["method"] != "real_data"]
    for column in ("fid", "kid", "clip_score", "aesthetic_score", "ms_per_image"):
        assert scored[column].notna().all() and np.isfinite(scored[column]).all(), column
    assert (scored["fid"] > 0).all() and (scored["ms_per_image"] > 0).all()

    assert leaderboard_main([str(world["board"]), "--out", str(world["tmp"] / "tables")]) == 0
    table = (world["tmp"] / "tables" / "sd15.md").read_text()
    assert all(name in table for name in ("ufogen", "lcm_lora", "tscd", "dpm_solver", "real_data"))
    assert list((world["tmp"] / "tables").glob("*.png"))

    ckpt = world["tmp"] / "runs" / "ufogen_sd15" / "checkpoints" / "last.ckpt"
    again = world["tmp"] / "again.csv"
    rows = evaluate(compose_config("evaluate", [
        f"ckpt={ckpt}", "eval=coco5k", f"eval.coco_root={world['coco']}", f"eval.num_samples={N}", "eval.steps=[1]",
        f"eval.leaderboard={again}", f"eval.cache_dir={world['tmp']}/cache/eval", "device=cpu",
        f"paths.runs_dir={world['tmp']}/runs", *world["metrics"]]))
    assert [r["method"] for r in rows] == ["ufogen", "real_data"] and len(read_leaderboard(again)) == 2
    first = trained[(trained["method"] == "ufogen") & (trained["steps"] == 1)].iloc[0]
    assert rows[0]["reference"] == first["reference"] and rows[0]["fid"] == pytest.approx(first["fid"], rel=1e-4)
    total = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[sd15 e2e] {total:.1f} s in all; per experiment: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
