"""The inference fast path: ordinary middleware answering the inference routes of the app's own
route table, with the same answers the routes give without it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from normserve.service import Settings, create_app
from normserve.service.http.fastpath import FastPath
from normserve.service.http.observe import ObserveMiddleware
from normserve.service.http.routes import router

INFER = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
CASES = [
    ("/v2/models/affine/infer", INFER, {}),
    ("/v2/models/affine/versions/1/infer", INFER, {}),
    ("/v1/models/affine:predict", {"instances": [[1, 2, 3]], "top_k": 1}, {}),
    ("/v2/models/affine/infer", INFER, {"accept-encoding": "gzip"}),
    ("/v2/models/affine/infer", {"inputs": []}, {}),  # 400
    ("/v2/models/nope/infer", INFER, {}),  # 404
    ("/v2/models/affine/versions/x/infer", INFER, {}),  # 400
]


def _without_fast_path(settings: Settings):
    app = create_app(settings)
    app.front = ObserveMiddleware(app.framework, runtime=app.state.runtime)
    return app


def _answers(app, api_key: str | None = None) -> list[tuple[int, str | None, bytes]]:
    answers = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, body, extra in CASES:
            headers = {"accept-encoding": "identity", **extra}
            if api_key:
                headers = {**headers, "authorization": f"Bearer {api_key}"}
            r = client.post(path, json=body, headers=headers)
            # httpx inflates gzip itself: the header says the body was compressed
            answers.append((r.status_code, r.headers.get("content-encoding"), r.content))
    return answers


def test_the_routes_answer_alike_with_and_without_the_fast_path(settings: Settings):
    fast, routed = _answers(create_app(settings)), _answers(_without_fast_path(settings))
    assert [a[:2] for a in fast][:4] == [(200, None), (200, None), (200, None), (200, "gzip")]
    assert [a[0] for a in fast][4:] == [400, 404, 400]
    assert fast == routed


def test_the_fast_path_answers_inference_without_the_inner_app(settings: Settings):
    app = create_app(settings)
    with TestClient(app):  # loads the repository
        reached: list[str] = []

        async def inner(scope, receive, send):
            reached.append(scope["path"])
            await send({"type": "http.response.start", "status": 418, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        fast = FastPath(inner, router.routes, app.state.runtime, api_key=None)
        assert {route.path for route, _ in fast.routes} == {
            "/v2/models/{model_name}/infer",
            "/v2/models/{model_name}/versions/{version}/infer",
            "/v1/models/{model_name}:predict",
        }
        client = TestClient(fast)
        assert client.post("/v2/models/affine/infer", json=INFER).status_code == 200
        assert reached == []
        client.get("/v2/models/affine/infer")  # a wrong method is FastAPI's (405)
        client.post("/v2/models/affine/ready")  # not an inference route
        assert reached == ["/v2/models/affine/infer", "/v2/models/affine/ready"]


@pytest.mark.parametrize("fast", [True, False])
def test_the_api_key_guards_inference_on_both_paths(settings: Settings, fast: bool):
    keyed = Settings(repository=settings.repository, provider="cpu", api_key="s3cret")
    app = create_app(keyed) if fast else _without_fast_path(keyed)
    with TestClient(app) as client:
        denied = client.post("/v2/models/affine/infer", json=INFER)
        assert denied.status_code == 401
        assert denied.json() == {"error": denied.json()["error"]}
        assert denied.headers["www-authenticate"] == "Bearer"
    assert [a[0] for a in _answers(app, "s3cret")][:3] == [200, 200, 200]


def test_observation_reports_the_shared_route_template(client: TestClient):
    assert client.post("/v2/models/affine/versions/2/infer", json=INFER).status_code == 200
    metrics = client.get("/metrics").text
    assert 'route="/v2/models/{model_name}/versions/{version}/infer",status="200"' in metrics


def test_a_bug_in_front_of_fastapi_is_answered_as_json_500_with_its_request_id(
    settings: Settings,
):
    app = create_app(settings)

    async def broken(scope, receive, send):
        raise RuntimeError("a bug in the fast path")

    app.front = ObserveMiddleware(broken, runtime=app.state.runtime)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v2/models/affine/infer", json=INFER, headers={"x-request-id": "r-7"})
        assert r.status_code == 500
        assert r.json() == {"error": "internal server error (a bug: see the server log)"}
        assert r.headers["x-request-id"] == "r-7"
        assert client.get("/v2/health/live").status_code == 500  # every request goes in front
