"""`python -m fastgen.list [GROUP ...]`: what can be selected on the command line, with one line on each.

Lists the commands (`python -m fastgen.NAME`: every module at the package's top level, with the first line of its
docstring), the experiments (`experiment=NAME`), the config groups (`method=`, `model=`, `data=`, `eval=`,
`logger=`, `debug=`) and the benchmark suites (`python -m fastgen.bench suite=NAME`), each with the first comment
line of its YAML.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from fastgen.runtime.config import CONFIG_PATH

PACKAGE = Path(__file__).resolve().parent
GROUPS = {
    "commands": "python -m fastgen.NAME",
    "experiment": "python -m fastgen.fit experiment=NAME",
    "method": "method=NAME",
    "model": "model=NAME",
    "data": "data=NAME",
    "eval": "eval=NAME",
    "logger": "logger=NAME",
    "debug": "debug=NAME",
    "suite": "python -m fastgen.bench suite=NAME",
}


def describe(path: Path) -> str:
    """The first comment line of a YAML file that is not a Hydra directive."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("# ").strip()
        if line.startswith("#") and text and not text.startswith("@package"):
            return text
        if line.strip() and not line.startswith("#"):
            break
    return ""


def command_summary(path: Path) -> str:
    """The first sentence of a command module's docstring after its `python -m ...` usage line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    for text in (" ".join(p.split()) for p in doc.split("\n\n") if p.strip()):
        if text.startswith("`python -m"):
            text = text.split("`:", 1)[1].strip() if "`:" in text else ""
        if text:
            return text.split(". ")[0].rstrip(".")
    return ""


def options(group: str) -> list[tuple[str, str]]:
    if group == "commands":
        return [(p.stem, command_summary(p)) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"]
    return [(p.stem, describe(p)) for p in sorted((Path(CONFIG_PATH) / group).glob("*.yaml"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgen.list", description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", choices=[[], *GROUPS], metavar="GROUP",
                        help=f"one or more of: {', '.join(GROUPS)} (default: all)")
    args = parser.parse_args(argv)
    for group in args.groups or GROUPS:
        print(f"{group}  ({GROUPS[group]})")
        entries = options(group)
        width = max(len(name) for name, _ in entries)
        for name, text in entries:
            print(f"  {name:<{width}}  {text}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
