"""DDGAN and SIDDM: the posterior pair, what each discriminator sees, SIDDM's AFD term, phase-owned updates,
named finite losses, checkpoints and sampling."""

import copy
import json

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import fastgen.methods.gan_phases as gan_phases
import fastgen.methods.posterior_chain_gan as posterior_chain_gan
from fastgen.core import q_posterior_sample, q_sample, q_step
from fastgen.fit import run
from fastgen.methods.posterior_chain_gan import LevelPair
from fastgen.methods.ddgan import DDGAN
from fastgen.methods.siddm import SIDDM
from fastgen.networks import build_random

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

METHODS = {"ddgan": DDGAN, "siddm": SIDDM}
PROMPTS = ["a handwritten digit one", "a handwritten digit seven", "a handwritten digit two"]


@pytest.fixture(scope="module")
def mnist_backbone():
    return build_random("mnist_pixel")


def make(name, backbone, checkpointing=False, **kw):
    backbone = copy.deepcopy(backbone)
    if checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    return METHODS[name](backbone, eval_teacher=False, **kw)


def batch(n=3):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(n, 1, 32, 32, generator=g) * 2 - 1, "prompt": PROMPTS[:n]}


def closed_form_posterior(x0, x_t, a_t, a_s):
    """q(x_s | x_t, x0) for the VP process, written out (Ho et al. 2020, eqs. 6-7 with a gap)."""
    a_ts = a_t / a_s
    mean = a_s**0.5 * (1 - a_ts) / (1 - a_t) * x0 + a_ts**0.5 * (1 - a_s) / (1 - a_t) * x_t
    return mean, (1 - a_s) * (1 - a_ts) / (1 - a_t)


@pytest.mark.parametrize("name", ["ddgan", "siddm"])
def test_levels_steps_and_latent_generator(mnist_backbone, name):
    m = make(name, mnist_backbone, num_steps=4, nz=8)
    assert m.levels.tolist() == [249, 499, 749, 999] and m.prev_levels.tolist() == [-1, 249, 499, 749]
    assert m.supported_steps == (4,) and m.nfe(4) == 4
    assert m.backbone.unet.config.time_cond_proj_dim == 8
    # all other generator weights are the backbone UNet's; z changes the output
    ref = mnist_backbone.unet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in m.backbone.unet.state_dict().items() if "cond_proj" not in k)
    x, t, cond = torch.randn(2, 1, 32, 32), torch.tensor([999, 249]), m.backbone.encode_prompts(PROMPTS[:2])
    a, b = (m.generate(m.backbone.unet, x, t, cond, torch.randn(2, 8)) for _ in range(2))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"samples with \(4,\) steps only"):
        m.sample(torch.randn(1, 1, 32, 32), PROMPTS[:1], 2)


def test_bad_config_names_the_key(mnist_backbone):
    with pytest.raises(ValueError, match="method.num_steps=0"):
        make("ddgan", mnist_backbone, num_steps=0)
    with pytest.raises(ValueError, match="method.lambda_afd=-1"):
        make("siddm", mnist_backbone, lambda_afd=-1)


def test_real_and_fake_pairs_follow_the_posterior(mnist_backbone, monkeypatch):
    """With an oracle generator (x̂0 = x0), real and fake x_{t−1} given x_t both follow the closed-form
    posterior q(x_{t−1} | x_t, x0): standardised residuals have mean 0 and variance 1 (Monte Carlo over noises);
    x_t given x_{t−1} is one forward step; at the clean end both are x0 exactly."""
    m = make("ddgan", mnist_backbone)
    n = 6000
    x0 = torch.linspace(-1, 1, 8).repeat(n, 1).reshape(n, 2, 2, 2)
    monkeypatch.setattr(m, "generate", lambda unet, x_t, t, cond, z: x0)
    torch.manual_seed(0)
    pair = m.training_pair(x0, cond=None)
    acp = m.backbone.alphas_cumprod.double()
    for t, s in zip(m.levels.tolist(), m.prev_levels.tolist()):
        sel = pair.t == t
        assert (pair.s[sel] == s).all() and sel.sum() > n // 8
        if s < 0:
            assert torch.equal(pair.x_prev[sel], x0[sel]) and torch.equal(pair.fake_prev[sel], x0[sel])
            continue
        a_t, a_s = acp[t], acp[s]
        mean, var = closed_form_posterior(x0[sel].double(), pair.x_t[sel].double(), a_t, a_s)
        for sample in (pair.x_prev[sel], pair.fake_prev[sel]):
            z = (sample.double() - mean) / var.sqrt()
            assert z.mean().abs() < 0.04 and (z.var() - 1).abs() < 0.05
        step = (pair.x_t[sel].double() - (a_t / a_s).sqrt() * pair.x_prev[sel]) / (1 - a_t / a_s).sqrt()
        assert step.mean().abs() < 0.04 and (step.var() - 1).abs() < 0.05  # x_t ~ q(x_t | x_{t−1})


def record_discriminator_inputs(m, monkeypatch):
    calls, pairs = [], []
    forward, training_pair = m.discriminator.forward, m.training_pair

    def spy(x, t, cond, x_cond=None):
        calls.append((x, x_cond))
        return forward(x, t, cond, x_cond=x_cond)

    def keep(*args):
        pairs.append(training_pair(*args))
        return pairs[-1]

    monkeypatch.setattr(m.discriminator, "forward", spy)
    monkeypatch.setattr(m, "training_pair", keep)
    return calls, pairs


@pytest.mark.parametrize("name", ["ddgan", "siddm"])
def test_what_the_discriminator_sees(mnist_backbone, monkeypatch, name):
    """DDGAN's D gets x_t next to x_{t−1} (real and fake halves alike); SIDDM's never sees x_t."""
    m = make(name, mnist_backbone, nz=4)
    calls, pairs = record_discriminator_inputs(m, monkeypatch)
    b = batch()
    x0, cond = m.backbone.batch_to_x0(b), m.backbone.batch_to_cond(b)
    m.d_losses(x0, cond, r1_weight=0.0)
    m.g_losses(x0, cond)
    (d_x, d_cond), (g_x, g_cond) = calls
    d_pair, g_pair = pairs
    assert torch.equal(d_x, torch.cat([d_pair.x_prev, d_pair.fake_prev])) and torch.equal(g_x, g_pair.fake_prev)
    if name == "ddgan":
        assert torch.equal(d_cond, torch.cat([d_pair.x_t, d_pair.x_t])) and torch.equal(g_cond, g_pair.x_t)
    else:
        assert d_cond is None and g_cond is None


def test_afd_renoises_the_fake_with_fresh_noise(mnist_backbone):
    """SIDDM's AFD (Xu et al. 2023, eq. 11) re-noises the fake x'_{t−1} one forward step with noise ε' of its own:
    its value is the closed form ‖√ᾱ_{t|s}(x'_{t−1} − x_{t−1}) + √(1 − ᾱ_{t|s})(ε' − ε)‖², so even the perfect fake
    x'_{t−1} = x_{t−1} pays 2(1 − ᾱ_{t|s}) on average; with ε' = ε (the real pair's noise) it would vanish — that
    form is an x0 regression in disguise."""
    m = make("siddm", mnist_backbone)
    acp = m.backbone.alphas_cumprod
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, s = torch.tensor([249, 499, 749, 999]), torch.tensor([-1, 249, 499, 749])
    x_prev = q_sample(x0, s, torch.randn_like(x0), acp)
    step_noise = torch.randn_like(x0)
    x_t = q_step(x_prev, s, t, step_noise, acp)
    a_t, a_s = acp[t].view(-1, 1, 1, 1), torch.cat([acp.new_ones(1), acp])[s + 1].view(-1, 1, 1, 1)
    mean, var = closed_form_posterior(x0, x_t, a_t, a_s)
    posterior_noise = torch.where(var > 0, (x_prev - mean) / var.clamp(min=1e-12).sqrt(), 0.0)
    fake_prev = q_posterior_sample(x0, x_t, t, s, posterior_noise, acp)
    assert torch.allclose(fake_prev, x_prev, atol=1e-5)
    pair = LevelPair(t, s, x_prev, x_t, fake_prev)
    assert m.afd(pair, noise=step_noise) < 1e-10  # only the real pair's own noise gives back x_t
    fresh = torch.randn_like(x0)
    a_ts = (a_t / a_s).float()
    expected = (a_ts.sqrt() * (fake_prev - x_prev) + (1 - a_ts).sqrt() * (fresh - step_noise)).pow(2).mean()
    torch.testing.assert_close(m.afd(pair, noise=fresh), expected, atol=1e-5, rtol=1e-4)
    torch.manual_seed(0)
    drawn = torch.stack([m.afd(pair) for _ in range(200)]).mean()
    assert (drawn - ((1 - a_ts) * (1 + step_noise**2)).mean()).abs() < 0.05  # E over ε' of ‖√(1−a)(ε' − ε)‖²


def test_lazy_r1_at_the_official_strength():
    """NVlabs/denoising-diffusion-gan adds (γ/2)‖∇D‖² on every r1_every-th D step, unscaled; StyleGAN2's lazy
    scaling (×r1_every) is the option."""
    weights = [gan_phases.lazy_r1_weight(0.02, 15, k) for k in range(30)]
    assert weights[0] == weights[15] == pytest.approx(0.01) and sum(w > 0 for w in weights) == 2
    assert gan_phases.lazy_r1_weight(0.02, 15, 30, scale_by_interval=True) == pytest.approx(0.15)
    assert gan_phases.lazy_r1_weight(0.0, 15, 0) == 0.0


def train_one_step(m, monkeypatch):
    """One training step on a Trainer; returns {optimizer index: names of the parameters its phase changed}."""
    params = dict(m.named_parameters())
    changed, phase = {}, gan_phases.adversarial_phase

    def spy(method, opt, compute_losses, max_grad_norm=None):
        before = {k: p.detach().clone() for k, p in params.items()}
        losses = phase(method, opt, compute_losses, max_grad_norm)
        index = [o.optimizer for o in method.optimizers()].index(opt.optimizer)
        changed[index] = {k for k, p in params.items() if not torch.equal(before[k], p)}
        return losses

    monkeypatch.setattr(posterior_chain_gan, "adversarial_phase", spy)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, DataLoader([batch(2)], batch_size=None))
    return changed, trainer


@pytest.mark.parametrize("name", ["ddgan", "siddm"])
def test_one_step_named_losses_and_phase_owned_updates(mnist_backbone, monkeypatch, name):
    # step 0 is a lazy-R1 step; SIDDM's backbone checkpoints gradients (G keeps it, D drops it for R1)
    m = make(name, mnist_backbone, checkpointing=name == "siddm", nz=4, r1_gamma=1.0)
    assert m.backbone.unet.is_gradient_checkpointing == (name == "siddm")
    ema_before = [p.clone() for p in m.ema_unet.parameters()]
    changed, trainer = train_one_step(m, monkeypatch)
    expected = {"d_real", "d_fake", "d_r1", "g_adv"} | ({"g_afd"} if name == "siddm" else set())
    logged = {k.removeprefix("train/"): v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert set(logged) == expected and all(torch.isfinite(v) for v in logged.values())
    g_changed, d_changed = changed[0], changed[1]
    assert d_changed and all(k.startswith("discriminator.") for k in d_changed)
    assert g_changed and all(k.startswith("backbone.unet.") for k in g_changed)
    assert "backbone.unet.time_embedding.cond_proj.weight" in g_changed
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, m.ema_unet.parameters()))
    assert m.images_seen.item() == 2 and m.train_steps.item() == 1


@pytest.mark.parametrize("name", ["ddgan", "siddm"])
def test_finite_difference_r1_adds_a_perturbed_real_batch(mnist_backbone, monkeypatch, name):
    """r1_sigma > 0: D sees [real; fake; real + σε] (DDGAN: x_t beside each) and d_r1 trains D without a double backward."""
    m = make(name, mnist_backbone, nz=4, r1_gamma=1.0, r1_sigma=0.05)
    calls, pairs = record_discriminator_inputs(m, monkeypatch)
    b = batch()
    losses = m.d_losses(m.backbone.batch_to_x0(b), m.backbone.batch_to_cond(b), r1_weight=0.5)
    (d_x, d_cond), = calls
    real, fake, perturbed = d_x.chunk(3)
    assert torch.equal(real, pairs[0].x_prev) and torch.equal(fake, pairs[0].fake_prev)
    assert 0.03 < (perturbed - real).std() < 0.07 and not real.requires_grad
    assert (d_cond is None) == (name == "siddm")
    if name == "ddgan":
        assert torch.equal(d_cond, torch.cat([pairs[0].x_t] * 3))
    assert torch.isfinite(losses["d_r1"]) and losses["d_r1"] > 0
    losses["d_r1"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.discriminator.parameters())


def test_sampling_is_deterministic_given_a_seeded_generator(mnist_backbone):
    m = make("ddgan", mnist_backbone, nz=4, num_steps=2)
    noise = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = m.sample(noise, PROMPTS[:2], 2, generator=torch.Generator().manual_seed(3))
    b = m.sample(noise, PROMPTS[:2], 2, generator=torch.Generator().manual_seed(3))
    c = m.sample(noise, PROMPTS[:2], 2, generator=torch.Generator().manual_seed(4))
    assert a.shape == noise.shape and torch.equal(a, b) and not torch.allclose(a, c)


def test_ddgan_mnist_trains_checkpoints_and_reloads(experiment_cfg, tmp_path):
    """The MNIST experiment end to end (random-init backbone, 2 steps): a weights-only checkpoint without
    the frozen teacher, which loads into a fresh method and samples the same digits."""
    method = run(experiment_cfg("ddgan_mnist", "model=mnist_pixel_random"))
    ckpt = torch.load(tmp_path / "runs/test_ddgan_mnist/checkpoints/last.ckpt", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("discriminator.") for k in keys) and any(k.startswith("ema_unet.") for k in keys)
    assert not any(k.startswith(("teacher_unet.", "backbone.text_encoder.")) for k in keys)
    fresh = DDGAN(build_random("mnist_pixel", seed=0), **ckpt["hyper_parameters"])  # the run's frozen text encoder
    noise = torch.randn(2, 1, 32, 32)
    kw = dict(prompts=PROMPTS[:2], steps=4)
    sample = lambda m: m.sample(noise, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    assert not torch.equal(sample(method), sample(fresh))  # one training step moved the EMA generator
    fresh.load_state_dict(ckpt["state_dict"])
    assert torch.equal(sample(method), sample(fresh))


def test_siddm_tiny_latent_experiment_runs(experiment_cfg, tmp_path):
    """The latent path (VAE encode, cross-attention generator and discriminator) on a tiny image folder."""
    root = tmp_path / "folder"
    root.mkdir()
    lines = []
    for i in range(4):
        Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"noise picture {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    method = run(experiment_cfg("siddm_sd15", "debug=tiny", f"data.root={root}"))
    assert method.images_seen.item() == 4  # debug=fast: 2 optimizer steps = 1 D+G step of batch 4
    assert {"train/g_afd", "train/d_r1"} <= set(method.trainer.callback_metrics)
