"""MkDocs hook: publish the benchmark charts from ``benchmarks/results/`` with the site.

docs/benchmarks.md links them as ``../benchmarks/results/NAME.png``, a path that works when the
Markdown is read in the repository. The site cannot reach outside ``docs/``, so this hook adds
each chart as a site file under ``benchmarks/results/`` and points the page's links there.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
REPOSITORY_LINK = "](../benchmarks/results/"
SITE_FOLDER = "benchmarks/results/"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for chart in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{SITE_FOLDER}{chart.name}", abs_src_path=str(chart)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return markdown.replace(REPOSITORY_LINK, f"]({SITE_FOLDER}")
