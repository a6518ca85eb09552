"""Property-based fuzzing of every operation in the OpenAPI document, against a real server.

schemathesis generates requests from ``/openapi.json`` (positive: valid by the schema; negative:
invalid), for every operation: the documented routes and the two inference operations the
lane serves (added to the document for exactly this). Each response must not be a 5xx, must
have a documented status and content type, and must match its documented schema (an error is
always ``{"error": ...}``). Path parameters are drawn at random and, in a second pass, fixed to
the served model so that the deeper code runs too. Bounded: a fixed number of examples per
operation, derandomized, so a run is reproducible and takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.conftest import ADMIN_KEY, API_KEY, assert_healthy, bearer
from tests.service.process import Server, running_server

EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def keyed_server(hostile_repository, tmp_path_factory) -> Iterator[Server]:
    env = {
        "NORMSERVE_API_KEY": API_KEY,
        "NORMSERVE_ADMIN_KEY": ADMIN_KEY,
        "NORMSERVE_INTRA_OP_THREADS": "1",
        "NORMSERVE_MAX_BODY_BYTES": "65536",
    }
    log = tmp_path_factory.mktemp("fuzz-log") / "server.log"
    with running_server(hostile_repository, log, env) as server:
        yield server


@pytest.fixture(scope="module")
def schema(keyed_server: Server) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{keyed_server.url}/openapi.json")


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_the_document_lists_every_route_and_the_inference_lane(schema):
    labels = {op.label for op in operations(schema)}
    assert "POST /v2/models/{model_name}/infer" in labels
    assert "POST /v2/models/{model_name}/versions/{version}/infer" in labels
    assert "POST /v1/models/{model_name}:predict" in labels
    assert "POST /v2/repository/models/{model_name}/load" in labels
    assert len(labels) == 19


def _fuzz(strategy, server: Server, key: str) -> int:
    calls = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(base_url=server.url, headers=bearer(key), checks=CHECKS)

    run()
    return calls


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx_or_off_schema(schema, keyed_server: Server, mode):
    calls: dict[str, int] = {}
    for operation in operations(schema):
        key = ADMIN_KEY if "/repository/" in operation.path else API_KEY
        variants = [{}]
        if "{model_name}" in operation.path and not operation.path.endswith("/unload"):
            fixed = {"model_name": "affine"}
            if "{version}" in operation.path:
                fixed["version"] = "2"
            variants.append(fixed)
        for fixed in variants:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)
            try:
                count = _fuzz(strategy, keyed_server, key)
            except Unsatisfiable:
                # Negative mode needs something the schema constrains: a body or a typed
                # header. A route whose only input is a string path segment has nothing.
                assert mode is GenerationMode.NEGATIVE
                assert operation.method == "get", operation.label
                continue
            calls[operation.label] = calls.get(operation.label, 0) + count
    body_operations = [op.label for op in operations(schema) if op.method == "post"]
    assert all(calls.get(label, 0) >= EXAMPLES // 2 for label in body_operations), calls
    headers = bearer(API_KEY)
    assert httpx.get(f"{keyed_server.url}/v2/models/affine", headers=headers).status_code == 200
    assert_healthy(keyed_server, headers)


def test_a_route_missing_from_the_document_fails_the_build(hostile_repository):
    """The document is completed from a table in service/openapi.py: a new route that is not
    in it must break the build, not go undocumented."""
    from normserve.service import Settings, create_app
    from normserve.service.http.openapi import build_openapi

    app = create_app(Settings(repository=hostile_repository, provider="cpu"))
    assert "/v2/models/{model_name}/infer" in build_openapi(app)["paths"]

    @app.get("/v2/undocumented")
    async def undocumented() -> dict:
        return {}

    with pytest.raises(KeyError, match="/v2/undocumented"):
        build_openapi(app)
