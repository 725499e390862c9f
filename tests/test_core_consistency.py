"""LCM consistency parameterisation, guidance embedding and CFG agree with diffusers / closed forms."""
import pytest
import torch
from diffusers import LCMScheduler

from fastgen.core import classifier_free_guidance, consistency_output, guidance_scale_embedding, lcm_boundary_scalings


def test_boundary_scalings_match_lcm_scheduler():
    sched = LCMScheduler(num_train_timesteps=1000, timestep_scaling=10.0)
    t = torch.tensor([0, 19, 259, 499, 999])
    c_skip, c_out = lcm_boundary_scalings(t)
    assert c_skip.shape == (5,) and c_skip[0] == 1 and c_out[0] == 0
    for i, ti in enumerate(t.tolist()):
        ref_skip, ref_out = sched.get_scalings_for_boundary_condition_discrete(ti)
        assert abs(c_skip[i].item() - ref_skip) < 1e-7 and abs(c_out[i].item() - ref_out) < 1e-6
    torch.testing.assert_close(c_skip, 0.25 / ((10.0 * t.float()) ** 2 + 0.25))


def test_consistency_output_broadcasts():
    x_t, x0 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    out = consistency_output(x_t, x0, torch.tensor([0, 999]))
    torch.testing.assert_close(out[0], x_t[0])  # boundary condition f(x, 0) = x
    c_skip, c_out = lcm_boundary_scalings(999)
    torch.testing.assert_close(out[1], c_skip * x_t[1] + c_out * x0[1])
    assert consistency_output(x_t.half(), x0.half(), 500).dtype == torch.float16


def test_guidance_embedding_matches_lcm_pipeline():
    pipelines = pytest.importorskip("diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_text2img")
    w = torch.tensor([0.0, 4.0, 6.5, 14.0])
    ref = pipelines.LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    ours = guidance_scale_embedding(w, dim=256)
    assert ours.shape == (4, 256) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    assert guidance_scale_embedding(w, dim=7).shape == (4, 7)
    with pytest.raises(ValueError, match="1-D"):
        guidance_scale_embedding(w[:, None])


def test_classifier_free_guidance():
    cond, uncond = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)
    omega = 7.0  # LCM's x_c + ω(x_c − x_u) is scale = 1 + ω
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1 + omega), cond + omega * (cond - uncond))
    scale = torch.tensor([[2.0], [5.0]])
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, scale), uncond + scale * (cond - uncond))
