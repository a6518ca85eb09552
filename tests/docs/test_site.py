"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor, or a
page left out of the nav, fails it. And the user pages say nothing about the build machines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, ROOT, nav_pages, pages

MKDOCS = Path(sys.executable).parent / "mkdocs"
# Words that only make sense on the project's own machines: their home is docs/contributing.md.
BUILD_MACHINE = re.compile(
    r"docker_engine\.sh|Docker\s+Hub|local/python|no\s+network(?!\s+client)|this\s+machine"
    r"|these\s+machines|out\s+of\s+reach|private\s+(Docker\s+)?engine",
    re.IGNORECASE,
)
NOT_USER_PAGES = {"contributing.md", "DESIGN.md"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )


def test_site_builds_strictly(tmp_path: Path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    for page in nav_pages():
        built = "index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html"
        assert (tmp_path / "site" / built).is_file(), page
    # The benchmark charts are published with the page that shows them.
    page = (DOCS / "benchmarks.md").read_text()
    charts = re.findall(r"\]\(\.\./benchmarks/results/([^)]+\.png)\)", page)
    assert charts
    for chart in charts:
        assert (tmp_path / "site" / "benchmarks" / "results" / chart).is_file(), chart


def test_nav_lists_every_page_once():
    site_pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav_pages()) == site_pages


@pytest.fixture
def copy_of_the_site(tmp_path: Path) -> Path:
    """The sources in a scratch folder, laid out as in the repository."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    assert build(tmp_path / "mkdocs.yml", tmp_path / "site").returncode == 0
    return tmp_path


@pytest.mark.parametrize(
    ("page", "added"),
    [
        ("cli.md", "\nSee [the options](no-such-page.md).\n"),
        ("cli.md", "\nSee [the options](serving.md#no-such-heading).\n"),
        ("extra-page.md", "# A page the nav forgot\n"),
    ],
    ids=["broken link", "broken anchor", "page missing from the nav"],
)
def test_strict_build_fails_on(copy_of_the_site: Path, page: str, added: str):
    target = copy_of_the_site / "docs" / page
    with target.open("a") as f:
        f.write(added)
    result = build(copy_of_the_site / "mkdocs.yml", copy_of_the_site / "site")
    assert result.returncode != 0, result.stderr


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_say_nothing_about_the_build_machines(page: Path):
    if page.name in NOT_USER_PAGES:
        return
    text = page.read_text(encoding="utf-8")
    found = [m.group(0) for m in BUILD_MACHINE.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)}: {found}; move it to docs/contributing.md"
