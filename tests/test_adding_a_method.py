"""A sixth method, written as README "Adding a method" says — a FewStepMethod subclass with the declared contract, a
method config and an experiment YAML, all here in the test (the configs in a folder on Hydra's search path) — trains
through `fastgen.fit` on the points testbed, is evaluated with the DPM-Solver++ baseline on its declared teacher
beside it, reloads from its checkpoint, and learns, with no edit anywhere in fastgen."""

import pytest
import torch
import torch.nn.functional as F

from fastgen.eval.evaluator.checkpoint import method_from_checkpoint
from fastgen.eval.leaderboard.io import read_leaderboard
from fastgen.fit import run
from fastgen.methods.base import FewStepMethod
from fastgen.methods.dpm_solver import dpm_solver_sample

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class KnowledgeDistillation(FewStepMethod):
    """One-step knowledge distillation (Luhman & Luhman 2021, arXiv 2101.02388): the student G(x_T, T, c) → x̂0
    regresses the teacher's `teacher_steps`-step DPM-Solver++ sample from the same noise x_T. Loss logged: `kd`."""

    name = "kd"
    supported_steps = (1,)
    sharded_networks = ("backbone.unet",)

    def __init__(self, backbone, lr: float = 1e-3, teacher_steps: int = 8, teacher_guidance_scale: float = 1.0):
        super().__init__(backbone)
        self.save_hyperparameters(ignore=["backbone"])
        self.set_teacher(backbone.unet, teacher_guidance_scale)

    def one_step(self, noise, prompts):
        t = torch.full((noise.shape[0],), self.backbone.num_train_timesteps - 1, device=noise.device)
        return self.backbone.denoise(self.backbone.unet, noise, t, self.backbone.encode_prompts(prompts))[0]

    def training_step(self, batch, batch_idx):
        # 1. fresh noise shaped like the data; 2. the teacher's multi-step sample from it; 3. regress it in one step
        x0 = self.backbone.batch_to_x0(batch)
        noise = torch.randn_like(x0)
        target = dpm_solver_sample(self.backbone, self.teacher_unet, noise, batch["prompt"], self.hparams.teacher_steps,
                                   self.teacher_guidance_scale)
        loss = F.mse_loss(self.one_step(noise, batch["prompt"]), target)
        self.count_images(x0.shape[0])
        self.log_losses({"kd": loss}, x0.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.backbone.unet.parameters(), lr=self.hparams.lr)

    @torch.no_grad()
    def sample(self, noise, prompts, steps, generator=None):
        self.check_steps(steps)
        return self.one_step(noise, prompts)


METHOD_YAML = f"""# One-step knowledge distillation (Luhman & Luhman 2021): tests/test_adding_a_method.py
_target_: {__name__}.KnowledgeDistillation
lr: 3e-3
teacher_steps: 8
teacher_guidance_scale: 1.0
"""
EXPERIMENT_YAML = """# @package _global_
defaults:
  - override /method: kd
  - override /model: mlp_points
  - override /data: points
  - override /eval: points
"""


@pytest.fixture
def config_dir(tmp_path):
    root = tmp_path / "configs"
    (root / "method").mkdir(parents=True)
    (root / "experiment").mkdir()
    (root / "method" / "kd.yaml").write_text(METHOD_YAML)
    (root / "experiment" / "kd_points.yaml").write_text(EXPERIMENT_YAML)
    return root


def test_a_sixth_method_trains_evaluates_with_its_baseline_and_reloads(experiment_cfg, config_dir, tmp_path):
    evaluation = ("eval.enabled=true", "eval.num_samples=400", "eval.batch_size=400", "eval.steps=[1]",
                  "eval.baseline_steps=[2]", f"eval.cache_dir={tmp_path}/cache")
    common = (f"hydra.searchpath=[file://{config_dir}]", "data.batch_size=64", *evaluation)
    untrained = run(experiment_cfg("kd_points", *common, "trainer.max_steps=1", "method.lr=0",
                        f"paths.output_dir={tmp_path}/runs/kd_init"))
    method = run(experiment_cfg("kd_points", *common, "trainer.max_steps=300"))
    assert method.trainer.global_step == 300 * method.optimizer_steps_per_training_step

    board = read_leaderboard(tmp_path / "runs" / "test_kd_points" / "leaderboard.csv")
    rows = {(r.method, int(r.steps)): r for r in board.itertuples() if r.method != "real_data"}
    assert set(rows) == {("kd", 1), ("dpm_solver", 2), ("dpm_solver_sde", 2)}  # the baseline on the declared teacher
    assert rows["kd", 1].nfe == 1 and rows["dpm_solver", 2].guidance == 1.0
    before = read_leaderboard(tmp_path / "runs" / "kd_init" / "leaderboard.csv")
    before = before[before.method == "kd"].energy_distance.item()
    # at initialisation one step returns the teacher's x̂0 at t = T, the conditional mean between the modes (measured:
    # energy distance 0.69); trained, 0.033, where the teacher's own 2-step DPM-Solver++ reaches 0.39
    trained = rows["kd", 1].energy_distance
    assert trained < 0.25 * before and trained < rows["dpm_solver", 2].energy_distance, (trained, before)

    reloaded, _, _ = method_from_checkpoint(tmp_path / "runs" / "test_kd_points" / "checkpoints" / "last.ckpt")
    noise, prompts = torch.randn(5, 2), ["a point in the top row"] * 5
    assert torch.equal(reloaded.sample(noise, prompts, 1), method.eval().sample(noise, prompts, 1))
