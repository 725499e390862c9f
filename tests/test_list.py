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


def test_one_group_and_an_unknown_group(capsys):
    assert main(["suite"]) == 0
    assert capsys.readouterr().out.startswith("suite  ")
    with pytest.raises(SystemExit):
        main(["nonsense"])
