"""Every distilled method comes back from its checkpoint: `fastgen.fit` on the points testbed (the committed teacher,
two steps), then `method_from_checkpoint` — what `python -m fastgen.evaluate ckpt=...` calls — rebuilds it from the
checkpoint alone and samples exactly what the trained method samples (SIDDM's generator with its latent input and
EMA, full LCM's ω-conditioned student and EMA target, LCM-LoRA's adapters, ...), none of it equal to the teacher's."""

import pytest
import torch

from fastgen.eval.evaluator.checkpoint import method_from_checkpoint
from fastgen.fit import run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

STEPS = {"ufogen": 1, "ddgan": 4, "siddm": 4, "lcm": 4, "lcm_lora": 4, "tscd": 4}
PROMPTS = ["a point in the top row", "a point in the bottom row", "a point in the third row"]
DEFAULT = ("siddm", "lcm", "lcm_lora")  # no other reload test covers these; UFOGen, DDGAN, TSCD have MNIST ones
FAST = ("method.warmup_steps=1",)  # consistency methods: full lr from the first step, so 2 steps move the weights


def _samples(method, steps):
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    return method.sample(noise, PROMPTS, steps, generator=[torch.Generator().manual_seed(i) for i in range(3)])


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in STEPS])
def test_method_from_checkpoint_samples_as_the_trained_method(experiment_cfg, tmp_path, name):
    extra = FAST if name in ("lcm", "lcm_lora", "tscd") else ()
    trained = run(experiment_cfg(f"{name}_points", "data.num_points=512", *extra)).eval()
    ckpt = tmp_path / "runs" / f"test_{name}_points" / "checkpoints" / "last.ckpt"
    loaded, datamodule, config = method_from_checkpoint(ckpt)
    assert type(loaded) is type(trained) and config["method"] == trained.run_config["method"]
    assert loaded.images_seen == trained.images_seen > 0 and not loaded.training
    steps = STEPS[name]
    expected = _samples(trained, steps)
    assert torch.equal(_samples(loaded, steps), expected)
    # the checkpoint's weights were loaded, not the teacher's: the untrained method samples otherwise
    from hydra.utils import instantiate

    untrained = instantiate(config["method"], backbone=instantiate(config["model"]), _convert_="all").eval()
    assert not torch.equal(_samples(untrained, steps), expected)
