"""`python -m fastgen.list`: every experiment and group option is listed with its description."""

from pathlib import Path

import pytest

from fastgen.list import GROUPS, main, options

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_lists_every_experiment_and_group_option_with_a_description(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for path in EXPERIMENTS.glob("*.yaml"):
        assert f"  {path.stem} " in out
    for group in GROUPS:
        assert all(text for _, text in options(group)), f"a {group} YAML has no leading comment line"
    assert "python -m fastgen.bench suite=NAME" in out
    assert "  tiny " in out  # debug=tiny


def test_every_top_level_module_is_a_command_and_is_listed():
    """The package's naming rule: each module at fastgen/'s top level runs as `python -m fastgen.NAME` (it has a
    `__main__` guard) and is listed with a one-line summary; library code lives in the subpackages."""
    import ast

    package = Path(__file__).resolve().parents[1] / "fastgen"
    commands = dict(options("commands"))
    for path in package.glob("*.py"):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert guards, f"fastgen/{path.name} is at the top level but is not a command: move it into a subpackage"
        assert commands.get(path.stem), f"fastgen/{path.name} has no docstring summary for `python -m fastgen.list`"


def test_one_group_and_an_unknown_group(capsys):
    assert main(["suite"]) == 0
    assert capsys.readouterr().out.startswith("suite  ")
    with pytest.raises(SystemExit):
        main(["nonsense"])
