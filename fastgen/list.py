"""`python -m fastgen.list [GROUP ...]`: what can be selected on the command line, with one line on each.

Lists the experiments (`experiment=NAME`), the config groups (`method=`, `model=`, `data=`, `eval=`, `logger=`)
and the benchmark suites (`python -m fastgen.bench suite=NAME`), each with the first comment line of its YAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastgen.runtime.config import CONFIG_PATH

GROUPS = {
    "experiment": "python -m fastgen.fit experiment=NAME",
    "method": "method=NAME",
    "model": "model=NAME",
    "data": "data=NAME",
    "eval": "eval=NAME",
    "logger": "logger=NAME",
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


def options(group: str) -> list[tuple[str, str]]:
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
