"""The method contract is declared, not probed: no method module imports the evaluation or names a discriminator
class (the backbone builds D), `sharded_networks` names attributes a method has, and every frozen copy (teacher, EMA)
is made by one helper."""

import ast
import copy
from pathlib import Path

import pytest
import torch

import fastgen
from fastgen.methods.base import frozen_copy
from fastgen.methods.lcm import LCM
from fastgen.methods.ufogen import UFOGen
from fastgen.networks.points import build_points_random

METHODS_DIR = Path(fastgen.__file__).parent / "methods"
FORBIDDEN = ("fastgen.eval", "fastgen.networks.discriminators")


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in `tree` (functions included) names."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_method_module_imports_the_evaluation_or_a_discriminator_class():
    offenders = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        bad = sorted(m for m in imported_modules(ast.parse(path.read_text())) if m.startswith(FORBIDDEN))
        if bad:
            offenders[path.name] = bad
    assert not offenders, f"methods import what they must be given: {offenders}"


def test_the_import_check_catches_an_import_inside_a_function():
    tree = ast.parse("def f():\n    from fastgen.eval.models.aesthetic import load_aesthetic_scorer\n")
    assert "fastgen.eval.models.aesthetic" in imported_modules(tree)
    assert "fastgen.eval" in imported_modules(ast.parse("from fastgen import eval\n"))


@pytest.fixture(scope="module")
def backbone():
    return build_points_random(2, hidden_dim=16, num_layers=1)


def test_sharded_networks_are_resolved_strictly(backbone):
    lora = LCM(copy.deepcopy(backbone), lora_rank=2, guidance_embed_dim=None, target_ema_decay=None)
    assert lora.networks_to_shard() == [lora.backbone.unet]  # target_unet: declared, None in LCM-LoRA
    ufogen = UFOGen(copy.deepcopy(backbone), eval_teacher=False)
    assert ufogen.networks_to_shard() == [ufogen.backbone.unet, ufogen.ema_unet, ufogen.discriminator]
    ufogen.sharded_networks = ("backbone.unet", "ema_unt")
    with pytest.raises(AttributeError, match=r"UFOGen.sharded_networks names 'ema_unt', which it does not have"):
        ufogen.networks_to_shard()


def test_a_frozen_copy_is_independent_frozen_and_cast_only_when_asked(backbone):
    unet = backbone.unet
    copied = frozen_copy(unet)
    assert not copied.training and not any(p.requires_grad for p in copied.parameters())
    assert all(p.requires_grad for p in unet.parameters())  # the original keeps training
    assert not any(p is q for p in copied.parameters() for q in unet.parameters())
    assert all(torch.equal(p, q) for p, q in zip(copied.parameters(), unet.parameters()))
    assert {p.dtype for p in frozen_copy(unet, torch.bfloat16).parameters()} == {torch.bfloat16}


def test_methods_without_a_teacher_declare_none(backbone):
    ufogen = UFOGen(copy.deepcopy(backbone), eval_teacher=False, teacher_guidance_scale=3.0)
    assert ufogen.teacher_unet is None and ufogen.teacher_guidance_scale is None
    with_teacher = UFOGen(copy.deepcopy(backbone), teacher_guidance_scale=3.0)
    assert with_teacher.teacher_guidance_scale == 3.0
    assert not any(p.requires_grad for p in with_teacher.teacher_unet.parameters())
