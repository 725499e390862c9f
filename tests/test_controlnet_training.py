"""Training a ControlNet with a method's objective (`method.controlnet`): control images from MNIST digits, only the
ControlNet (and the method's critic) trains, the frozen generator stays bit-identical, the checkpoint comes back
without the generator's file, and the written ControlNet samples the same images through `controlnet=DIR` in
fastgen.generate and in diffusers' StableDiffusionControlNetPipeline."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fastgen.data import DataError, MNISTDataModule
from fastgen.data.controls import control_iou, control_map
from fastgen.fit import run
from fastgen.networks.controlnet import controlnet_for, load_controlnet
from fastgen.methods.controlnet import ControlledUNet, controlled_networks, sampling_controlnet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# -- control images ------------------------------------------------------------------------------------------------
def square(lo=9, hi=19):
    x = -torch.ones(1, 1, 32, 32)
    x[..., lo:hi, lo:hi] = 1.0
    return x


def test_mask_and_edges_of_a_square():
    mask = control_map(square(), "mask")
    expected = torch.zeros(1, 1, 32, 32)
    expected[..., 8:20, 8:20] = 1  # ink rows 9..18 touch the 4-pixel cells 2, 3 and 4
    assert torch.equal(mask, expected)
    edges = control_map(square(), "edges")
    ring = torch.zeros(1, 1, 32, 32)
    ring[..., 7:21, 7:21] = 1
    ring[..., 11:17, 11:17] = 0  # the gradient (rows 8..19 minus 10..17) dilated by one pixel
    assert torch.equal(edges, ring)
    assert control_iou(mask, square(), "mask").item() == 1.0
    shifted = control_iou(control_map(square(), "edges"), square(13, 23), "edges").item()
    assert 0 < shifted < 1
    with pytest.raises(ValueError, match="not one of"):
        control_map(square(), "depth")


def test_mnist_batches_carry_the_control_of_their_own_flipped_image():
    dm = MNISTDataModule(batch_size=8, control="edges", hflip=True)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["control"], control_map(batch["image"], "edges"))
    assert batch["control"].shape == (8, 1, 32, 32)
    assert "control" not in next(iter(MNISTDataModule(batch_size=2).train_dataloader()))
    with pytest.raises(DataError, match="data.control='depth'"):
        MNISTDataModule(control="depth")


# -- training ------------------------------------------------------------------------------------------------------
def generator_checkpoint(cfg, path, seed=1):
    """A 'trained' generator checkpoint of cfg's method: the teacher's weights moved by noise (so that they are not
    what the backbone loads), saved as fastgen.fit saves (state dict + config)."""
    method = instantiate(cfg.method, backbone=instantiate(cfg.model), _convert_="all")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if not name.startswith(("backbone.text_encoder", "teacher_unet")):
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
    state = {k: v for k, v in method.state_dict().items() if not k.startswith(("backbone.text_encoder", "teacher_unet"))}
    torch.save({"state_dict": state, "fastgen_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return state


def frozen_key(key):
    """The generator checkpoint's key of a ControlNet-trained method's generator weight (None: anything else)."""
    if ".controlnet." in key or not key.startswith(("backbone.unet.", "ema_unet.", "target_unet.")):
        return None  # a ControlNet's, the critic's or a counter
    return key.replace(".unet.unet.", ".unet.").replace("ema_unet.unet.", "ema_unet.").replace("target_unet.unet.",
                                                                                                "target_unet.")


def assert_only_controlnet_trained(trained, generator_state, initial_controlnet=None):
    """Every generator weight is the checkpoint's, bit for bit; the online ControlNet's output convolutions moved
    (from zero, or from `initial_controlnet`)."""
    state = trained.state_dict()
    frozen = {k: frozen_key(k) for k in state if frozen_key(k) in generator_state}
    assert len(frozen) > 100
    for key, old in frozen.items():
        assert torch.equal(state[key], generator_state[old]), key
    online = trained.backbone.unet.controlnet.state_dict()
    outputs = [k for k in online if k.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]
    start = initial_controlnet or {k: torch.zeros_like(v) for k, v in online.items()}
    assert outputs and all(not torch.equal(online[k], start[k]) for k in outputs if k.endswith("weight"))


def test_ufogen_trains_only_its_controlnet_and_round_trips(experiment_cfg, tmp_path):
    from fastgen.eval.evaluator.checkpoint import method_from_checkpoint
    from fastgen.generate import generate

    base = experiment_cfg("ufogen_mnist", "method.eval_teacher=false")
    ckpt = tmp_path / "ufogen.ckpt"
    generator_state = generator_checkpoint(base, ckpt)
    # two G updates (4 optimizer steps, D's counted), a large step and no EMA lag: a ControlNet whose control visibly
    # changes the samples (the first update moves only its zero convolutions, the second its control embedding too)
    cfg = experiment_cfg("controlnet_ufogen_mnist", f"method.controlnet.generator_ckpt={ckpt}", "method.lr_g=0.05",
                         "method.ema_decay=0", "trainer.max_steps=4")
    trained = run(cfg).eval()
    assert len(controlled_networks(trained)) == 2  # the online generator and its EMA
    assert_only_controlnet_trained(trained, generator_state)
    d_state = trained.discriminator.state_dict()  # the critic trains against the controlled generator
    assert any(not torch.equal(v, generator_state[f"discriminator.{k}"]) for k, v in d_state.items())
    assert all(c.control is None for c in controlled_networks(trained))  # no batch's control left behind

    # the checkpoint alone rebuilds it: the generator's file is not read again
    run_dir = tmp_path / "runs" / "test_controlnet_ufogen_mnist"
    moved = tmp_path / "moved.ckpt"
    ckpt.rename(moved)
    loaded = method_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")[0]
    assert loaded.state_dict().keys() == trained.state_dict().keys()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
    moved.rename(ckpt)

    # <run>/controlnet is the EMA copy's ControlNet, and generate(ckpt=generator, controlnet=DIR) samples what the
    # trained method samples with the control on its ControlledUNets
    saved = load_controlnet(run_dir / "controlnet")
    assert all(torch.equal(v, sampling_controlnet(trained).state_dict()[k]) for k, v in saved.state_dict().items())
    from fastgen.generation.export import export_method  # python -m fastgen.export ckpt=... format=controlnet

    exported = load_controlnet(export_method(loaded, tmp_path / "exported", "controlnet"))
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in exported.state_dict().items())
    from PIL import Image

    digits, _ = MNISTDataModule().train_labelled("heldout")
    control = control_map(digits[:1], "mask")
    Image.fromarray((control[0, 0] * 255).to(torch.uint8).numpy()).save(tmp_path / "mask.png")
    from hydra import compose, initialize_config_dir

    from fastgen.runtime.config import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        gen_cfg = compose("generate", overrides=[f"ckpt={ckpt}", "prompt=a handwritten digit seven", "steps=2",
                                                 f"out={tmp_path}/gen", f"controlnet={run_dir}/controlnet",
                                                 f"control_image={tmp_path}/mask.png", "device=cpu", "progress=false"])
        images = generate(gen_cfg)[0]
    from fastgen.generation.sampling import sample_pixels

    for net in controlled_networks(trained):
        net.control = control
    ours = sample_pixels(trained, ["a handwritten digit seven"], torch.arange(1), 2, seed=0)
    torch.testing.assert_close(images, ours, atol=1e-5, rtol=0)
    for net in controlled_networks(trained):  # and the control is what moved them
        net.control = 1 - control
    assert (sample_pixels(trained, ["a handwritten digit seven"], torch.arange(1), 2, seed=0) - ours).abs().max() > 1e-3


def test_a_controlnet_run_counts_its_own_images_not_the_generators(experiment_cfg, tmp_path):
    """The generator checkpoint's counters (30 kimg seen, 940 steps) are the generator's history: the ControlNet's
    run starts from 0, so trainer.max_kimg budgets its own training (with the generator's count it stopped at once)."""
    ckpt = tmp_path / "ufogen.ckpt"
    generator_checkpoint(experiment_cfg("ufogen_mnist", "method.eval_teacher=false"), ckpt)
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"]["images_seen"], saved["state_dict"]["train_steps"] = torch.tensor(30000), torch.tensor(940)
    torch.save(saved, ckpt)
    cfg = experiment_cfg("controlnet_ufogen_mnist", f"method.controlnet.generator_ckpt={ckpt}", "trainer.max_steps=-1",
                         "trainer.max_kimg=0.008")  # two training steps at debug=fast's batch of 4
    trained = run(cfg)
    assert trained.images_seen.item() == 8 and trained.train_steps.item() == 2


def test_lcm_distils_its_controlnet_from_the_controlled_teacher(experiment_cfg, tmp_path):
    base = experiment_cfg("lcm_mnist", "method.export_dir=null")
    ckpt = tmp_path / "lcm.ckpt"
    generator_state = generator_checkpoint(base, ckpt)
    teacher = instantiate(base.model).unet
    teacher_cn = controlnet_for(teacher, conditioning_channels=1)
    with torch.no_grad():  # a teacher ControlNet that does something
        for name, p in teacher_cn.named_parameters():
            if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    teacher_cn.save_pretrained(tmp_path / "teacher_cn")
    cfg = experiment_cfg("controlnet_lcm_mnist", f"method.controlnet.generator_ckpt={ckpt}",
                         f"method.controlnet.init={tmp_path}/teacher_cn",
                         f"method.controlnet.teacher_controlnet={tmp_path}/teacher_cn", "method.warmup_steps=1")
    trained = run(cfg).eval()
    assert isinstance(trained.teacher_unet, ControlledUNet)
    assert len(controlled_networks(trained)) == 3  # student, EMA target, teacher
    initial = teacher_cn.state_dict()
    assert_only_controlnet_trained(trained, generator_state, initial)
    # the teacher's ControlNet is frozen
    assert all(torch.equal(v, initial[k]) for k, v in trained.teacher_unet.controlnet.state_dict().items())


def test_controlnet_training_says_what_is_missing(experiment_cfg, tmp_path):
    base = experiment_cfg("ufogen_mnist", "method.eval_teacher=false")
    ckpt = tmp_path / "ufogen.ckpt"
    generator_checkpoint(base, ckpt)
    with pytest.raises(ValueError, match="set data.control"):
        run(experiment_cfg("controlnet_ufogen_mnist", f"method.controlnet.generator_ckpt={ckpt}", "data.control=null"))
    with pytest.raises(FileNotFoundError, match="generator_ckpt=.*does not exist"):
        run(experiment_cfg("controlnet_ufogen_mnist", f"method.controlnet.generator_ckpt={tmp_path}/none.ckpt"))
    with pytest.raises(ValueError, match="not a checkpoint of this method"):
        lcm = experiment_cfg("lcm_mnist", "method.export_dir=null")
        generator_checkpoint(lcm, tmp_path / "lcm.ckpt")
        run(experiment_cfg("controlnet_ufogen_mnist", f"method.controlnet.generator_ckpt={tmp_path}/lcm.ckpt"))


def test_a_trained_controlnet_runs_in_diffusers_controlnet_pipeline(tmp_path):
    """A ControlNet trained with UFOGen's objective on a tiny SD1.5-format generator, written by ControlFromBatch,
    gives in StableDiffusionControlNetPipeline (on the generator's export) the images fastgen samples with it."""
    import copy

    import lightning as L
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from torch.utils.data import DataLoader

    from fastgen.eval.evaluator.run_eval import eval_noise, sampler_generators
    from fastgen.networks.controlnet import attach_controlnet
    from fastgen.generation.export import export_method
    from fastgen.generation.sampling import sample_pixels
    from fastgen.methods.controlnet import ControlFromBatch, add_controlnet
    from fastgen.methods.ufogen import UFOGen
    from fastgen.networks import build_random

    prompts = ["a red square", "a small blue circle"]
    method = UFOGen(build_random("tiny_latent", seed=0), eval_teacher=False, lr_g=0.05, ema_decay=0.0)
    generator = copy.deepcopy(method).eval()  # the frozen generator, sampled with the ControlNet at sampling time
    pipe = StableDiffusionPipeline.from_pretrained(export_method(generator, tmp_path / "pipe"), safety_checker=None)
    add_controlnet(method, conditioning_channels=3)
    g = torch.Generator().manual_seed(0)
    images, controls = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.rand(4, 3, 32, 32, generator=g).round()
    data = [{"image": images[i], "prompt": prompts[i % 2], "control": controls[i]} for i in range(4)]
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ControlFromBatch(tmp_path / "controlnet")])
    trainer.fit(method, DataLoader(data, batch_size=2))
    controlnet = load_controlnet(tmp_path / "controlnet")
    control, indices, seed = controls[:1], torch.arange(2), 3
    plain = (sample_pixels(generator, prompts, indices, 2, seed) + 1) / 2
    with attach_controlnet(generator, controlnet, control):
        ours = (sample_pixels(generator, prompts, indices, 2, seed) + 1) / 2
    pipe = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    theirs = pipe(prompts, image=control, num_inference_steps=2, guidance_scale=0.0, output_type="pt",
                  latents=eval_noise(indices, (4, 16, 16), seed), generator=sampler_generators(indices, seed)).images
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-3  # the trained ControlNet changes the images
