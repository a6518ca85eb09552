"""Hostile model names and versions in URLs, against a real server: 400 or 404 with
``{"error"}``, nothing read outside the repository, and a correct answer afterwards.

Versions are positive integers in ASCII digits, at most 18 of them. Before this was enforced a
version in superscript digits, or one of more than 4300 digits, was a 500, and one in
Arabic-Indic digits named version 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import ADMIN_KEY, assert_error, bearer, port_of
from tests.reliability.raw_http import exchange, request_bytes
from tests.service.process import wait_until

pytestmark = pytest.mark.usefixtures("healthy_after")

BODY = b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}'
PREDICT = b'{"instances": [[1, 2, 3]]}'

VERSIONS = [
    ("0", 400, "positive integer"),
    ("-1", 400, "positive integer"),
    ("latest", 400, "positive integer"),
    ("1.0", 400, "positive integer"),
    ("+1", 400, "positive integer"),
    ("%201", 400, "positive integer"),
    ("%C2%B2", 400, "positive integer"),  # superscript two: str.isdigit, but not int()
    ("%D9%A1", 400, "positive integer"),  # Arabic-Indic one: int() reads it as 1
    ("1" * 19, 400, "positive integer"),
    ("1" * 5000, 400, "positive integer"),  # over int()'s 4300-digit limit
    ("3", 404, "has no version 3; available: [1, 2]"),
    ("999999999999999999", 404, "has no version 999999999999999999"),
]


@pytest.mark.parametrize(
    ("version", "status", "needle"), VERSIONS, ids=[v[0][:12] for v in VERSIONS]
)
@pytest.mark.parametrize("route", ["infer", "metadata", "ready", "config", "stats"])
def test_bad_versions_are_400_and_unknown_ones_404(healthy_after, route, version, status, needle):
    base = f"/v2/models/affine/versions/{version}"
    if route == "infer":
        raw = request_bytes("POST", f"{base}/infer", BODY)
    else:
        raw = request_bytes("GET", base if route == "metadata" else f"{base}/{route}")
    assert_error(exchange(port_of(healthy_after), raw), status, needle)


MODELS = [
    ("unknown", "ghost", "model 'ghost' is not in the repository"),
    ("dot-dot", "%2e%2e", "model '..' is not in the repository"),
    ("dot", ".", "model '.' is not in the repository"),
    ("hidden", ".staging-1", "is not in the repository"),
    ("NUL byte", "affine%00", "is not in the repository"),
    ("newline", "affine%0Aforged", "is not in the repository"),
    ("not UTF-8", "%ff%fe", "is not in the repository"),
    ("10k characters", "m" * 10_000, "is not in the repository"),
]


@pytest.mark.parametrize(("name", "needle"), [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_unknown_and_hostile_model_names_are_404(healthy_after, name, needle):
    port = port_of(healthy_after)
    for raw in (
        request_bytes("POST", f"/v2/models/{name}/infer", BODY),
        request_bytes("POST", f"/v1/models/{name}:predict", PREDICT),
        request_bytes("GET", f"/v2/models/{name}"),
        request_bytes("GET", f"/v2/models/{name}/versions/1/config"),
    ):
        response = exchange(port, raw)
        assert_error(response, 404, needle)
        assert len(response.body) < 400  # a long name is cut short in the message


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/..%2F..%2Foutside/infer",
        "/v2/models/..%2Foutside/versions/1/infer",
        "/v2/models/%2e%2e%2foutside/infer",
        "/v2/models/affine/versions/1%2F..%2F2/infer",
        "/v2/models/../outside/infer",
        "/v1/models/..%2Foutside:predict",
    ],
)
def test_path_traversal_reaches_no_model_outside_the_repository(
    healthy_after, hostile_repository: Path, path: str
):
    """A served entry sits right beside the repository: no path may reach it."""
    outside = hostile_repository.parent / "outside"
    shutil.copytree(hostile_repository / "affine", outside, dirs_exist_ok=True)
    for meta in outside.glob("*/model.json"):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "name": "outside"}))
    body = PREDICT if path.endswith(":predict") else BODY
    response = exchange(port_of(healthy_after), request_bytes("POST", path, body))
    assert_error(response, 404)


@pytest.mark.parametrize(
    ("name", "status", "needle"),
    [
        ("%2e%2e", 404, "has no directory"),
        (".", 404, "has no directory"),
        ("..%2Foutside", 404, "no route"),
        ("%2e%2e%2Foutside", 404, "no route"),
        (".staging", 404, "has no directory"),
        ("affine%00", 404, "has no directory"),
        ("m" * 10_000, 404, "has no directory"),
    ],
)
def test_repository_api_refuses_names_outside_the_repository(healthy_after, name, status, needle):
    for action in ("load", "unload"):
        raw = request_bytes(
            "POST", f"/v2/repository/models/{name}/{action}", b"", bearer(ADMIN_KEY)
        )
        response = exchange(port_of(healthy_after), raw)
        expected = (
            "is not loaded" if action == "unload" and needle == "has no directory" else needle
        )
        assert_error(response, status, expected)


def test_a_url_longer_than_the_head_limit_is_a_json_431(healthy_after):
    """The protocol refuses it before the app sees it (the request line counts toward
    ``NORMSERVE_MAX_HEADER_BYTES``); the body is still ``{"error"}``."""
    response = exchange(port_of(healthy_after), request_bytes("GET", "/v2/models/" + "m" * 200_000))
    assert_error(response, 431, "NORMSERVE_MAX_HEADER_BYTES")
    assert response.headers["connection"] == "close"


def test_a_hostile_path_cannot_forge_a_log_line(healthy_after):
    forged = "2026-01-01 00:00:00,000 INFO forged: admin login"
    path = "/v2/models/x%0A" + forged.replace(" ", "%20")
    assert exchange(port_of(healthy_after), request_bytes("GET", path)).status == 404
    wait_until(lambda: "x\\x0a2026-01-01" in healthy_after.log(), 5, "the access log line")
    lines = healthy_after.log().splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00,000 INFO forged") for line in lines)
