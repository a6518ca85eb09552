"""``normserve serve`` takes every serving setting as an option, generated from the Settings
fields: its help names each variable and default, a new field becomes an option by itself, an
option wins over its variable, and a bad value is one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest
import typer
from pydantic_settings import SettingsConfigDict
from typer.testing import CliRunner

from normserve.cli import app
from normserve.serve_options import setting_options
from normserve.service.settings import Settings
from tests.service.fake_models import write_entry
from tests.service.process import wait_until

NORMSERVE = str(Path(sys.executable).parent / "normserve")
QUIET = ["--access-log", "false"]


def _serve_options() -> dict[str, list[str]]:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    with command.make_context("serve", [], resilient_parsing=True) as ctx:
        params = command.get_params(ctx)
    return {p.name: p.opts for p in params if p.name != "help"}


def test_serve_options_are_the_settings_fields():
    options = _serve_options()
    assert set(options) == set(Settings.model_fields)
    for name, opts in options.items():
        assert opts == ["--" + name.replace("_", "-")]


def _help() -> str:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_help_shows_each_variable_and_default_whole_at_80_columns():
    text = _help()
    assert max(len(line) for line in text.splitlines()) <= 80
    words = " ".join(text.split())  # the help is wrapped: compare it unwrapped
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else str(default)
        shown = shown.lower() if isinstance(default, bool) else shown
        assert f"--{name.replace('_', '-')} " in words, name
        assert f"Variable NORMSERVE_{name.upper()}, default {shown}." in words, name
    assert "--provider [auto|cpu|cuda]" in words
    assert "--access-log [true|false]" in words
    assert "--port INTEGER" in words


class _Extended(Settings):
    """Settings with one more field, as another change would add one."""

    model_config = SettingsConfigDict(env_prefix="NORMSERVE_")

    grpc_port: int = 8001
    """Port of the gRPC server."""


def test_a_new_setting_becomes_an_option_by_itself():
    options = {p.name: p for p in setting_options(_Extended)}
    assert set(options) == set(Settings.model_fields) | {"grpc_port"}
    added = options["grpc_port"]
    assert added.opts == ["--grpc-port"]
    assert added.help == "Port of the gRPC server. Variable NORMSERVE_GRPC_PORT, default 8001."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "invalid setting port: Input should be less than or equal to 65535"),
        (["--port", "eighty"], "invalid setting port: Input should be a valid integer"),
        (
            ["--provider", "gpu"],
            "invalid setting provider: Input should be 'auto', 'cpu' or 'cuda'",
        ),
        (["--access-log", "maybe"], "invalid setting access_log: Input should be a valid boolean"),
        (["--tracing", "sometimes"], "invalid setting tracing: Input should be 'auto', 'on' or"),
    ],
)
def test_a_bad_option_value_is_one_line(tmp_path: Path, args: list[str], message: str):
    result = CliRunner().invoke(app, ["serve", "--repository", str(tmp_path), *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {message}")


def test_an_option_wins_over_its_variable(tmp_path: Path):
    """A real server: NORMSERVE_PORT names a busy port, --port a free one; it serves there.
    NORMSERVE_ACCESS_LOG=true is overridden by --access-log false: no access line."""
    repo = tmp_path / "repo"
    write_entry(repo, "affine", 1)
    with socket.socket() as busy, socket.socket() as probe:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSERVE_")}
        env |= {
            "NORMSERVE_PORT": str(busy.getsockname()[1]),
            "NORMSERVE_ACCESS_LOG": "true",
            "NORMSERVE_PROVIDER": "cpu",
        }
        log_path = tmp_path / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [NORMSERVE, "serve", "--repository", str(repo), "--port", str(port), *QUIET],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            url = f"http://127.0.0.1:{port}/v2/health/ready"
            wait_until(lambda: httpx.get(url, timeout=1.0).status_code == 200, 60, "ready", proc)
        finally:
            proc.terminate()  # drains: every request finished and logged before it exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    log = log_path.read_text()
    assert f"listening on http://127.0.0.1:{port}" in log
    assert "request_id=" not in log  # the readiness polls were not logged
