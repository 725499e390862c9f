"""DMD: the distribution-matching gradient and its normalisation against hand-computed values, the real score's CFG,
phases that touch only their own network, the GAN classifier on the fake score's encoder, one-step sampling,
checkpoints, and a short points run that beats the untrained control."""

import math

import lightning as L
import pytest
import torch
from test_ufogen import PROMPTS, RandomDigits, changed, snapshot  # the UFOGen tests' data and helpers
from torch.utils.data import DataLoader

from fastgen.core import distribution_matching_gradient, distribution_matching_loss
from fastgen.fit import run
from fastgen.methods.dmd import DMD
from fastgen.networks import build_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def make_method(cache_dir, **kwargs):
    kwargs.setdefault("real_guidance_scale", 2.0)  # real ≠ fake at initialisation: the first G step has a gradient
    return DMD(build_random("mnist_pixel", cache_dir=cache_dir), **kwargs)


def fit(method, training_steps, callbacks=()):
    """A bare Trainer for `training_steps` training steps (Lightning's max_steps counts optimizer steps)."""
    g_updates = sum(1 for k in range(training_steps) if k % method.hparams.fake_updates_per_g == 0)
    trainer = L.Trainer(max_steps=training_steps + g_updates, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=list(callbacks))
    trainer.fit(method, train_dataloaders=DataLoader(RandomDigits(), batch_size=2, shuffle=True))
    return trainer


# -- the gradient ----------------------------------------------------------------------------------------------------
def test_distribution_matching_gradient_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    real = torch.tensor([[0.0, 2.0, 5.0, 4.0], [1.0, -1.0, 1.0, -1.0]])
    fake = torch.tensor([[1.0, 1.0, 5.0, 2.0], [3.0, -1.0, 1.0, 1.0]])
    # mean |x − real| per sample: (1 + 0 + 2 + 0)/4 = 0.75 and (1 + 1 + 1 + 1)/4 = 1
    expected = torch.tensor([[1.0, -1.0, 0.0, -2.0], [2.0, 0.0, 0.0, 2.0]]) / torch.tensor([[0.75], [1.0]])
    grad = distribution_matching_gradient(x, real, fake)
    assert torch.allclose(grad, expected)
    # a sample the real denoiser reproduces exactly: 0/0 -> 0, not NaN
    assert torch.equal(distribution_matching_gradient(real[:1], real[:1], real[:1]), torch.zeros(1, 4))
    # the normalisation makes the gradient invariant to the scale of the error: scaling every x0 by c leaves it
    assert torch.allclose(distribution_matching_gradient(3 * x, 3 * real, 3 * fake), expected)
    # the loss 0.5·mean((x − sg(x − g))²) has value 0.5·mean(g²) and gradient g / numel with respect to x
    x = x.clone().requires_grad_(True)
    loss = distribution_matching_loss(x, expected)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * expected.pow(2).mean().item())
    assert torch.allclose(x.grad, expected / x.numel())


def test_the_generator_loss_follows_the_real_scores_cfg_and_the_fake_score(cache_dir, monkeypatch):
    """Stub denoisers: the teacher returns R_c (prompt) / R_u (empty prompt), the fake network F. The generator's
    gradient must be (F − (R_u + w(R_c − R_u))) / mean|x̂0 − real| / numel, whatever t and the noise are."""
    w = 3.0
    method = make_method(cache_dir, real_guidance_scale=w)
    n = 2
    R_c, R_u, F = torch.full((1, 32, 32), 0.5), torch.full((1, 32, 32), -0.25), torch.zeros(1, 32, 32)
    F[0, :16] = 1.0
    uncond_row = method.backbone.encode_prompts([""])[0]

    def denoise(unet, x_t, t, cond):
        if unet is method.fake_unet:
            out = F.expand_as(x_t)
        else:
            assert unet is method.teacher_unet
            is_uncond = torch.tensor([torch.equal(c, uncond_row) for c in cond]).view(-1, 1, 1, 1)
            out = torch.where(is_uncond, R_u, R_c).expand_as(x_t)
        return out.clone(), torch.zeros_like(x_t)

    monkeypatch.setattr(method.backbone, "denoise", denoise)
    x0_gen = torch.linspace(-1, 1, n * 32 * 32).reshape(n, 1, 32, 32).requires_grad_(True)
    cond = method.backbone.encode_prompts(PROMPTS[:n])
    uncond = uncond_row.expand_as(cond)
    losses = method.g_losses(x0_gen, None, None, cond, uncond)
    assert set(losses) == {"dm"}
    losses["dm"].backward()
    real = R_u + w * (R_c - R_u)  # 1.25 everywhere
    grad = (F - real) / (x0_gen.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(x0_gen.grad, grad / x0_gen.numel(), atol=1e-9)
    assert losses["dm"].item() == pytest.approx(0.5 * grad.pow(2).mean().item(), rel=1e-5)


def test_distribution_matching_times_and_the_generator_timestep(cache_dir):
    method = make_method(cache_dir)
    torch.manual_seed(0)
    t = method.draw_dm_times(20000, "cpu")
    assert t.min() == 20 and t.max() == 980 and len(t.unique()) > 950  # DMD2: U{0.02T..0.98T}
    assert method.generator_timestep == 999
    assert make_method(cache_dir, generator_timestep=500).generator_timestep == 500


def test_bad_options_name_the_config_key(cache_dir):
    for key, value in [("fake_updates_per_g", 0), ("gan_weight", -1.0), ("real_guidance_scale", 0.5),
                       ("generator_timestep", 1000), ("max_t_fraction", 1.5), ("gan_max_t", 0)]:
        with pytest.raises(ValueError, match=f"method.{key}"):
            make_method(cache_dir, **{key: value})


# -- the phases ------------------------------------------------------------------------------------------------------
def test_each_phase_changes_only_its_own_network(cache_dir, monkeypatch):
    method = make_method(cache_dir, fake_updates_per_g=1)
    assert not any(p.requires_grad for p in method.teacher_unet.parameters())
    teacher = snapshot(method.teacher_unet)
    # fake-score phase alone: the fake score moves; the generator and its EMA do not
    g0, f0, e0 = snapshot(method.backbone.unet), snapshot(method.fake_unet), snapshot(method.ema_unet)
    monkeypatch.setattr(DMD, "g_step", lambda self, *args: {})
    fit(method, 1)
    assert changed(method.fake_unet, f0)
    assert not changed(method.backbone.unet, g0) and not changed(method.ema_unet, e0)
    monkeypatch.undo()
    # generator phase alone: the generator and its EMA move; the fake score does not
    g0, f0, e0 = snapshot(method.backbone.unet), snapshot(method.fake_unet), snapshot(method.ema_unet)
    monkeypatch.setattr(DMD, "fake_step", lambda self, *args: {})
    fit(method, 1)
    assert changed(method.backbone.unet, g0) and changed(method.ema_unet, e0)
    assert not changed(method.fake_unet, f0)
    assert not changed(method.teacher_unet, teacher)


def test_two_time_scales(cache_dir, monkeypatch):
    """One fake-score update per training step, a generator update on every fake_updates_per_g-th (first included)."""
    method = make_method(cache_dir, fake_updates_per_g=3)
    calls = []
    monkeypatch.setattr(DMD, "g_step", lambda self, *args: calls.append("g") or {"g": torch.zeros(())})
    monkeypatch.setattr(DMD, "fake_step", lambda self, *args: calls.append("f") or {"f": torch.zeros(())})
    trainer = L.Trainer(max_epochs=1, limit_train_batches=7, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(method, train_dataloaders=DataLoader(RandomDigits(), batch_size=2))
    assert "".join(calls) == "gfffgfffgf"
    assert method.optimizer_steps_per_training_step == pytest.approx(1 + 1 / 3)


def test_the_fake_score_learns_the_generator_samples_with_the_teachers_loss(cache_dir):
    """`fake_denoise` is the backbone's own denoising loss on the (detached) generator samples: at a fixed t and noise
    it equals the MSE of the fake network's output to ε (this backbone predicts ε)."""
    method = make_method(cache_dir)
    assert method.backbone.prediction_type == "epsilon"
    x0_gen = torch.randn(2, 1, 32, 32, requires_grad=True)
    cond = method.backbone.encode_prompts(PROMPTS[:2])
    torch.manual_seed(3)
    losses = method.fake_losses(x0_gen, None, cond)
    torch.manual_seed(3)
    t = torch.randint(0, 1000, (2,))
    noise = torch.randn(2, 1, 32, 32)
    acp = method.backbone.alphas_cumprod
    a = acp[t].sqrt().view(-1, 1, 1, 1)
    x_t = a * x0_gen.detach() + (1 - acp[t]).sqrt().view(-1, 1, 1, 1) * noise
    out = method.fake_unet(x_t, t, encoder_hidden_states=cond).sample
    assert set(losses) == {"fake_denoise"}
    assert losses["fake_denoise"].item() == pytest.approx((out - noise).pow(2).mean().item(), rel=1e-5)
    losses["fake_denoise"].backward()
    assert x0_gen.grad is None  # the generator's samples are detached


# -- the GAN classifier on the fake score's encoder ------------------------------------------------------------------
def test_gan_classifier_reads_the_fake_score_network_and_trains_in_its_phase(cache_dir, monkeypatch):
    method = make_method(cache_dir, gan_weight=0.1, fake_updates_per_g=1)
    x = torch.randn(2, 1, 32, 32)
    cond = method.backbone.encode_prompts(PROMPTS[:2])
    torch.manual_seed(0)
    logits = method.classifier_logits(x, cond)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    # it is the fake network's encoder (no copy): moving the fake network's mid block moves the logits
    assert not any(p is q for p in method.gan_head.parameters() for q in method.fake_unet.parameters())
    with torch.no_grad():
        for p in method.fake_unet.mid_block.parameters():
            p.add_(0.05)
    torch.manual_seed(0)
    assert not torch.allclose(method.classifier_logits(x, cond), logits)
    # named losses of both phases
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    x0_gen = torch.randn(2, 1, 32, 32, requires_grad=True)
    uncond = method.backbone.encode_prompts([""]).expand_as(cond)
    assert set(method.g_losses(x0_gen, None, x0, cond, uncond)) == {"dm", "g_gan"}
    assert set(method.fake_losses(x0_gen, x0, cond)) == {"fake_denoise", "d_real", "d_fake"}
    # the fake phase trains the head and the fake network; the generator phase neither
    h0, f0, g0 = snapshot(method.gan_head), snapshot(method.fake_unet), snapshot(method.backbone.unet)
    monkeypatch.setattr(DMD, "fake_step", lambda self, *args: {})
    fit(method, 1)
    assert changed(method.backbone.unet, g0)
    assert not changed(method.gan_head, h0) and not changed(method.fake_unet, f0)
    monkeypatch.undo()
    h0, g0 = snapshot(method.gan_head), snapshot(method.backbone.unet)
    monkeypatch.setattr(DMD, "g_step", lambda self, *args: {})
    fit(method, 1)
    assert changed(method.gan_head, h0) and not changed(method.backbone.unet, g0)


def test_regression_term_targets_the_teachers_ode_output_from_the_same_noise(cache_dir, monkeypatch):
    import fastgen.methods.dmd as dmd

    method = make_method(cache_dir, regression_weight=2.0, regression_steps=3)
    seen = {}

    def fake_solver(backbone, unet, noise, prompts, steps, guidance):
        seen.update(unet=unet, noise=noise, prompts=prompts, steps=steps, guidance=guidance)
        return torch.zeros_like(noise)

    monkeypatch.setattr(dmd, "dpm_solver_sample", fake_solver)
    z, x0_gen = torch.randn(2, 1, 32, 32), torch.full((2, 1, 32, 32), 0.5)
    cond = method.backbone.encode_prompts(PROMPTS[:2])
    losses = method.g_losses(x0_gen, z, None, cond, method.backbone.encode_prompts([""]).expand_as(cond), PROMPTS[:2])
    assert losses["g_reg"].item() == pytest.approx(2.0 * 0.25)
    assert seen["unet"] is method.teacher_unet and seen["noise"] is z and seen["steps"] == 3 and seen["guidance"] == 2.0
    with pytest.raises(ValueError, match="method.regression_weight=0"):
        method.g_losses(x0_gen, z, None, cond, cond, None)


# -- sampling, checkpoints, runs -------------------------------------------------------------------------------------
def test_one_step_sampling_from_the_ema_generator(cache_dir):
    method = make_method(cache_dir).eval()
    noise = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = method.sample(noise, PROMPTS[:2], 1, generator=torch.Generator().manual_seed(1))
    b = method.sample(noise, PROMPTS[:2], 1, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 1, 32, 32) and torch.isfinite(a).all() and torch.equal(a, b)  # no draw beyond the noise
    t = torch.full((2,), 999)
    x0, _ = method.backbone.denoise(method.ema_unet, noise, t, method.backbone.encode_prompts(PROMPTS[:2]))
    assert torch.equal(a, x0)
    assert method.nfe(1) == 1
    with pytest.raises(ValueError, match=r"\(1,\)"):
        method.sample(noise, PROMPTS[:2], 2)


def test_checkpoint_round_trip_and_resume(experiment_cfg, tmp_path):
    method = run(experiment_cfg("dmd_mnist", "model=mnist_pixel_random"))  # max_steps 2: one G and one fake update
    ckpt = torch.load(tmp_path / "runs/test_dmd_mnist/checkpoints/last.ckpt", weights_only=True)
    keys = ckpt["state_dict"].keys()
    for prefix in ("backbone.unet.", "ema_unet.", "fake_unet."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert not any(k.startswith(("backbone.text_encoder.", "teacher_unet.")) for k in keys)
    assert len(ckpt["optimizer_states"]) == 2

    fresh = DMD(build_random("mnist_pixel", cache_dir=str(tmp_path)))
    assert changed(fresh.backbone.unet, snapshot(method.backbone.unet))
    fresh.load_state_dict(ckpt["state_dict"])
    for name in ("backbone.unet", "ema_unet", "fake_unet"):
        ours, theirs = method.get_submodule(name).state_dict(), fresh.get_submodule(name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    noise = torch.randn(2, 1, 32, 32)
    assert torch.equal(*[m.eval().sample(noise, PROMPTS[:2], 1) for m in (method, fresh)])

    # two more fake-score updates (optimizer steps 3 and 4), counted on from 1 training step and 4 images
    resumed = run(experiment_cfg("dmd_mnist", "model=mnist_pixel_random", "ckpt_path=last", "trainer.max_steps=4"))
    assert resumed.images_seen.item() == 12 and resumed.train_steps.item() == 3


def test_short_run_losses_move_and_stay_finite(cache_dir):
    history = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            history.append({k[6:]: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    torch.manual_seed(0)
    fit(make_method(cache_dir, lr_g=1e-3, lr_fake=1e-3, fake_updates_per_g=2, gan_weight=0.1), 16, [Record()])
    assert len(history) == 16
    for key in ("dm", "g_gan", "fake_denoise", "d_real", "d_fake"):
        values = [h[key] for h in history]
        assert all(math.isfinite(v) for v in values), key
        assert len(set(values)) > 4, key


@pytest.mark.slow  # 20-50 s on 2 shared cores
def test_a_short_points_run_beats_the_untrained_control():
    """On the 2-D grid with the committed teacher: the teacher's own one-step x̂0 lands on each prompt's conditional
    mean, between its four modes (the `dmd@init` control); 200 generator updates of distribution matching move the
    one-step samples towards the modes, and the energy distance to the held-out points falls well below the control's."""
    from fastgen.data.points import PointsDataModule
    from fastgen.eval.metrics.points import energy_distance
    from fastgen.networks.points import build_points_pretrained

    torch.manual_seed(0)
    data = PointsDataModule(shape="grid", batch_size=256)
    data.setup("fit")
    method = DMD(build_points_pretrained("fastgen/assets/points_teacher/grid", dim=2), real_guidance_scale=1.0,
                 lr_g=1e-3, lr_fake=1e-3, fake_updates_per_g=2, weight_decay=0.0, max_grad_norm=1.0,
                 teacher_guidance_scale=1.0)
    held, labels = data.points("heldout")
    prompts = [data.prompts[int(k)] for k in labels]

    def ed():
        method.eval()
        x = method.sample(torch.randn(len(prompts), 2, generator=torch.Generator().manual_seed(1)), prompts, 1)
        return sum(energy_distance(x[labels == k], held[labels == k]) for k in labels.unique()) / len(labels.unique())

    control = ed()
    # 400 training steps: 400 fake-score and 200 generator updates
    trainer = L.Trainer(max_steps=600, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(method, datamodule=data)
    trained = ed()
    assert control > 0.5 and trained < 0.5 * control, (control, trained)
