"""README.md and the documentation pages as the tests read them: pages, sections, the nav of
mkdocs.yml, and the code examples with the marker that says which test runs each one.

A marker is an HTML comment on the line just above a fenced example:

    <!-- example: run by tests/service/test_readme.py -->
    <!-- example: not run (server, suite) -->
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "DOCS",
    "EXAMPLE_LANGUAGES",
    "README",
    "ROOT",
    "Example",
    "examples",
    "examples_run_by",
    "nav_pages",
    "pages",
    "section",
]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXAMPLE_LANGUAGES = ("bash", "sh", "shell", "console", "python")

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_MARKER = re.compile(r"^<!-- example: (.*?) -->$")


@dataclass(frozen=True)
class Example:
    """One fenced example: where it is, its language, its code and its marker (None: none)."""

    page: Path
    line: int
    language: str
    code: str
    marker: str | None

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """README.md and every Markdown page of the site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, in order, relative to docs/."""

    def walk(items: list) -> list[str]:
        found: list[str] = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += walk(value) if isinstance(value, list) else [value]
        return found

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    return walk(config["nav"])


def section(page: Path, heading: str) -> str:
    """The text under ``heading`` (a whole Markdown heading line) up to the next heading of
    the same or a higher level."""
    text = page.read_text(encoding="utf-8")
    level = len(heading) - len(heading.lstrip("#"))
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{level}}} |\Z)", text, re.M | re.S)
    assert match, f"{page.relative_to(ROOT)} has no {heading!r}"
    return match.group(1)


def examples(page: Path) -> list[Example]:
    """The fenced examples (shell and Python) of ``page``, each with its marker."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        language = match.group(1)
        if language not in EXAMPLE_LANGUAGES:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.match(before)
        found.append(
            Example(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                language=language,
                code=match.group(2),
                marker=marker.group(1) if marker else None,
            )
        )
    return found


def examples_run_by(runner: str) -> list[Example]:
    """Every example, on any page, whose marker says ``run by <runner>`` (a path from the
    repository root, e.g. ``tests/service/test_readme.py``)."""
    return [e for page in pages() for e in examples(page) if e.marker == f"run by {runner}"]
