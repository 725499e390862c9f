"""`python -m fastgen.generate`: the evaluation's images for the same index and seed, PNGs and a grid, prompt files,
one-line errors."""

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fastgen.runtime.config import CONFIG_PATH, register_resolvers


def generate_cfg(tmp_path, *overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("generate", overrides=["experiment=ufogen_mnist", "experiment_name=ufogen_mnist",
                                              f"paths.output_dir={tmp_path}", "model=mnist_pixel_random", "device=cpu",
                                              f"paths.runs_dir={tmp_path}/runs", "progress=false", *overrides])


@pytest.mark.usefixtures("one_thread")
def test_generate_writes_the_evaluations_samples(tmp_path):
    from fastgen.eval.metrics.images import pixels_to_uint8
    from fastgen.eval.evaluator.run_eval import sample_and_decode
    from fastgen.evaluate import build_method
    from fastgen.generate import generate

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a handwritten digit seven\n\na handwritten digit three\n")
    cfg = generate_cfg(tmp_path, f"prompts_file={prompts_file}", "num_images=2", "steps=2", "seed=11",
                       "batch_size=3", f"out={tmp_path}/out")
    images, prompts, paths = generate(cfg)
    assert prompts == ["a handwritten digit seven"] * 2 + ["a handwritten digit three"] * 2
    method = build_method(cfg, torch.device("cpu"))[0]
    expected = pixels_to_uint8(sample_and_decode(method, prompts, torch.arange(4), 2, 11))
    assert torch.equal(pixels_to_uint8(images), expected)  # index i of seed S = the evaluation's sample i
    assert [p.name for p in paths] == ["0000_a_handwritten_digit_seven.png", "0001_a_handwritten_digit_seven.png",
                                       "0002_a_handwritten_digit_three.png", "0003_a_handwritten_digit_three.png",
                                       "grid.png"]
    png = torch.tensor(list(Image.open(paths[2]).convert("L").getdata()), dtype=torch.uint8).view(32, 32)
    assert torch.equal(png, expected[2, 0])
    assert Image.open(paths[-1]).size == (2 * 34 + 2, 2 * 34 + 2)  # 2 x 2 grid, 2-pixel padding


@pytest.mark.parametrize("overrides, message", [
    (["steps=3"], r"steps=3: ufogen samples with \[1, 2, 4, 8\] steps only"),
    (["ckpt=/no/such.ckpt"], "ckpt=/no/such.ckpt does not exist"),
    (["init_image=/no/such.png"], "init_image=/no/such.png does not exist"),
    (["strength=1.5"], r"strength=1.5 must be in \[0, 1\]"),
    (["prompt=null"], "give one of prompt="),
])
def test_bad_input_is_one_line(tmp_path, overrides, message):
    from fastgen.generate import generate

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        generate(generate_cfg(tmp_path, 'prompt="a handwritten digit one"', *overrides))


def test_the_command_line_prints_one_line_for_an_unsupported_step_count(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastgen.generate", "experiment=dpm_solver_mnist", "prompt=x",
                             "steps=0", f"paths.runs_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["fastgen: error: steps=0 must be a positive integer"]
