"""Every shell and Python example in README.md and the documentation is run by a test, or is
marked as not runnable here with a reason that fits every command in it (see the markers in
tests/docs/pages.py)."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest

from tests.docs.pages import ROOT, Example, examples, pages

# Why an example may stay unrun, and what each of its commands must then start with.
NOT_RUN = {
    # Starts a server that runs until stopped; the tests start the same command on a free port
    # (tests/service/process.py).
    "server": ("make run", "normserve serve"),
    # The test suite itself, or the benchmarks (minutes; tests/benchmarks runs their parts).
    "suite": ("make test", "make bench"),
    # Needs a container engine or a cluster: the docker-marked tests in tests/deploy/ run the
    # image and check the files these commands use (curl talks to the container).
    "container": (
        "docker",
        "docker-compose",
        "kubectl",
        "hadolint",
        "kubernetes-validate",
        "make image",
        "scripts/docker_engine.sh",
        "export DOCKER_HOST=",
        "curl -s 127.0.0.1:",
    ),
}
HOW_TO_MARK = (
    "put '<!-- example: run by tests/PATH.py -->' (that module's examples() must list it) or "
    f"'<!-- example: not run (REASON) -->' with REASON in {sorted(NOT_RUN)} on the line above it"
)

ALL = [example for page in pages() for example in examples(page)]


def commands(code: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments and blanks dropped,
    leading VAR=value assignments removed."""
    joined = code.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words.pop(0)
        found.append(shlex.join(words) if words else line)
    return found


def test_there_are_examples_to_check():
    assert len(ALL) >= 15
    assert {e.page.name for e in ALL} >= {"README.md", "cli.md", "serving.md", "deploy.md"}


@pytest.mark.parametrize("example", ALL, ids=Example.where)
def test_example_is_run_or_says_why_not(example: Example):
    assert example.marker is not None, f"{example.where()}: unmarked example; {HOW_TO_MARK}"
    run_by = re.fullmatch(r"run by (tests/\S+\.py)", example.marker)
    not_run = re.fullmatch(r"not run \(([a-z, ]+)\)", example.marker)
    assert run_by or not_run, f"{example.where()}: {example.marker!r}; {HOW_TO_MARK}"
    if run_by:
        path = run_by.group(1)
        assert (ROOT / path).is_file(), f"{example.where()}: {path} does not exist"
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        listed = [(e.page, e.line) for e in module.examples()]
        assert (example.page, example.line) in listed, f"{path}.examples() does not list it"
        return
    assert example.language != "python", f"{example.where()}: a Python example must be run"
    reasons = [r.strip() for r in not_run.group(1).split(",")]
    assert set(reasons) <= set(NOT_RUN), f"{example.where()}: unknown reason in {reasons}"
    allowed = tuple(prefix for r in reasons for prefix in NOT_RUN[r])
    for command in commands(example.code):
        assert command.startswith(allowed), (
            f"{example.where()}: {command!r} is not what {reasons} covers ({allowed}); run it "
            "in a test instead"
        )
