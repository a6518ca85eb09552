"""Print the project's dependencies from pyproject.toml, one requirement a line.

The Dockerfile installs these (pinned by constraints.txt) before it copies the source, so a
source change does not reinstall numpy and onnxruntime. Standard library only: it runs in a bare
Python 3.11 base image.

    python pyproject_requirements.py pyproject.toml                      # serving (base) deps
    python pyproject_requirements.py pyproject.toml --extra export       # + training/export
    python pyproject_requirements.py pyproject.toml --replace onnxruntime=onnxruntime-gpu
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

__all__ = ["requirements"]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(
    pyproject: Path, extras: list[str] | None = None, replace: dict[str, str] | None = None
) -> list[str]:
    """Base dependencies plus the named extras; ``replace`` swaps a distribution for another
    (keeping its version specifier and markers). Unknown extras or replaced names are errors."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    wanted = list(project.get("dependencies", []))
    for extra in extras or []:
        if extra not in optional:
            raise SystemExit(f"pyproject has no extra {extra!r} (has: {', '.join(optional)})")
        wanted += optional[extra]
    swaps = {_normalize(k): v for k, v in (replace or {}).items()}
    found: set[str] = set()
    out: list[str] = []
    for requirement in wanted:
        match = _NAME.match(requirement)
        if match is None:
            raise SystemExit(f"cannot read requirement {requirement!r}")
        name = _normalize(match.group(1))
        if name in swaps:
            found.add(name)
            requirement = swaps[name] + requirement[match.end() :]
        out.append(requirement)
    if missing := set(swaps) - found:
        raise SystemExit(f"nothing to replace: {', '.join(sorted(missing))} is not a dependency")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional extra to add")
    parser.add_argument(
        "--replace", action="append", default=[], metavar="OLD=NEW", help="swap a distribution"
    )
    args = parser.parse_args(argv)
    swaps = {}
    for item in args.replace:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            parser.error(f"--replace takes OLD=NEW, got {item!r}")
        swaps[old] = new
    sys.stdout.write("".join(f"{r}\n" for r in requirements(args.pyproject, args.extra, swaps)))


if __name__ == "__main__":
    main()
