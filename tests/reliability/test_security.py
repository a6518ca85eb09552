"""Who may change what is served, who may infer, what is never logged, and what is never
loaded: against a real server where a process boundary matters, statically where the claim is
about the code ("nothing is loaded from a URL", "torch.load always with weights_only=True")."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from normserve.service import Settings, create_app
from normserve.service.http.auth import BearerKey
from tests.reliability.conftest import ADMIN_KEY, API_KEY, bearer
from tests.service.fake_models import write_entry
from tests.service.process import Server, running_server

ROOT = Path(__file__).resolve().parents[2]
BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
WRONG = ["", "Bearer", "Bearer wrong", f"Basic {ADMIN_KEY}", f"bearer{API_KEY}", "Bearer \u00e9"]


def authorization(value: str) -> dict[str, bytes]:
    """The header as sent on the wire (latin-1), or none for an empty value."""
    return {"Authorization": value.encode("latin-1")} if value else {}


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    write_entry(root, "affine", 2)
    env = {
        "NORMSERVE_API_KEY": API_KEY,
        "NORMSERVE_ADMIN_KEY": ADMIN_KEY,
        "NORMSERVE_LOG_LEVEL": "debug",
        "NORMSERVE_LOG_FORMAT": "json",
        "NORMSERVE_INTRA_OP_THREADS": "1",
    }
    with running_server(root, tmp_path / "server.log", env) as server:
        yield server, root


def versions(server: Server) -> list[str]:
    response = httpx.get(f"{server.url}/v2/models/affine", headers=bearer(API_KEY))
    assert response.status_code == 200, response.text
    return response.json()["versions"]


def test_repository_control_needs_the_admin_key_and_nothing_changes_without_it(keyed):
    server, root = keyed
    write_entry(root, "affine", 3)  # on disk, waiting for a load
    actions = ["index", "models/affine/load", "models/affine/unload"]
    for action in actions:
        url = f"{server.url}/v2/repository/{action}"
        for value in [*WRONG, f"Bearer {API_KEY}"]:
            response = httpx.post(url, headers=authorization(value))
            assert response.status_code == 401, (action, value, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert set(response.json()) == {"error"}
    assert versions(server) == ["1", "2"]  # neither loaded nor unloaded
    load = httpx.post(
        f"{server.url}/v2/repository/models/affine/load", headers=bearer(ADMIN_KEY), timeout=30
    )
    assert load.status_code == 200, load.text
    assert versions(server) == ["1", "2", "3"]


def test_without_an_admin_key_the_repository_api_is_off_and_changes_nothing(tmp_path: Path):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    with TestClient(create_app(Settings(repository=root, provider="cpu"))) as client:
        for action in ("index", "models/affine/load", "models/affine/unload"):
            for headers in ({}, bearer(ADMIN_KEY), bearer("")):
                response = client.post(f"/v2/repository/{action}", headers=headers)
                assert response.status_code == 403, response.text
        assert client.get("/v2/models/affine").json()["versions"] == ["1"]
        assert client.post("/v2/models/affine/infer", json=BODY).status_code == 200


def test_inference_and_model_routes_need_the_api_key_health_and_metrics_do_not(keyed):
    server, _ = keyed
    binary_header = (
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":12}}]}'
    )
    guarded = [
        ("POST", "/v2/models/affine/infer", {"json": BODY}),
        ("POST", "/v2/models/affine/versions/1/infer", {"json": BODY}),
        (
            "POST",
            "/v2/models/affine/infer",
            {
                "content": binary_header + bytes(12),
                "headers": {"Inference-Header-Content-Length": str(len(binary_header))},
            },
        ),
        ("POST", "/v1/models/affine:predict", {"json": {"instances": [[1, 2, 3]]}}),
        ("GET", "/v2/models/affine", {}),
        ("GET", "/v2/models/affine/versions/2/ready", {}),
        ("GET", "/v2/models/affine/config", {}),
        ("GET", "/v2/models/affine/stats", {}),
        ("GET", "/v2/models/stats", {}),
        ("GET", "/v2/models/ghost", {}),  # no key: 401 before anything says it does not exist
    ]
    for method, path, kwargs in guarded:
        extra = kwargs.pop("headers", {})
        for value in [*WRONG, f"Bearer {ADMIN_KEY}"]:
            headers = {**extra, **authorization(value)}
            response = httpx.request(method, f"{server.url}{path}", headers=headers, **kwargs)
            assert response.status_code == 401, (path, value, response.text)
        good = httpx.request(
            method, f"{server.url}{path}", headers={**extra, **bearer(API_KEY)}, **kwargs
        )
        assert good.status_code == (404 if "ghost" in path else 200), (path, good.text)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics"):
        assert httpx.get(f"{server.url}{path}").status_code == 200


def test_keys_never_reach_the_log_even_at_debug_level(keyed, tmp_path: Path):
    server, _ = keyed
    guesses = ["guess-one-2f8a", API_KEY[:-1], ADMIN_KEY + "x"]
    for key in [API_KEY, ADMIN_KEY, *guesses]:
        for headers in (bearer(key), {"Authorization": key}, {"Authorization": f"Bearer  {key}"}):
            httpx.post(f"{server.url}/v2/models/affine/infer", json=BODY, headers=headers)
            httpx.post(f"{server.url}/v2/repository/index", content=b"{", headers=headers)
            httpx.get(f"{server.url}/v2/models/affine/config", headers=headers)
    assert '"logger":"normserve.access"' in server.log()  # the requests were logged
    for secret in [API_KEY, ADMIN_KEY, *guesses]:
        assert secret not in server.log()
    # A start-up that fails (a broken repository) does not print them either.
    broken = tmp_path / "broken"
    (broken / "m" / "1").mkdir(parents=True)
    (broken / "m" / "1" / "model.json").write_text("{")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "normserve"), "serve", "--repository", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"NORMSERVE_API_KEY": API_KEY, "NORMSERVE_ADMIN_KEY": ADMIN_KEY, "PATH": ""},
        check=False,
    )
    assert result.returncode == 1
    assert "cannot read JSON" in result.stderr
    for secret in (API_KEY, ADMIN_KEY):
        assert secret not in result.stdout + result.stderr


def test_keys_are_compared_with_hmac_compare_digest(monkeypatch):
    """Constant time: the comparison is hmac.compare_digest over the whole token, whatever it
    holds (a plain == would stop at the first differing byte)."""
    import hmac

    from pydantic import SecretStr

    from normserve.service.errors import Unauthorized
    from normserve.service.http import auth

    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    key = BearerKey(SecretStr("s3cret-key"), "inference")
    key.check("Bearer s3cret-key")
    for token in ("x", "s3cret-kez", "s3cret-key-longer"):
        with pytest.raises(Unauthorized, match="wrong key"):
            key.check(f"Bearer {token}")
    assert calls == [
        (b"s3cret-key", b"s3cret-key"),
        (b"x", b"s3cret-key"),
        (b"s3cret-kez", b"s3cret-key"),
        (b"s3cret-key-longer", b"s3cret-key"),
    ]
    assert "s3cret" not in repr(key)


# -- nothing is loaded from a URL ---------------------------------------------------------------


def test_the_load_api_takes_no_model_bytes_or_config_from_the_request(keyed):
    server, root = keyed
    before = sorted(str(p) for p in root.rglob("*"))
    for parameters in (
        {"config": '{"max_batch_size": 1}'},
        {"file:1/model.onnx": "AAAA"},
        {"url": "http://127.0.0.1:9/model.onnx"},
    ):
        response = httpx.post(
            f"{server.url}/v2/repository/models/affine/load",
            json={"parameters": parameters},
            headers=bearer(ADMIN_KEY),
        )
        assert response.status_code == 400, response.text
        assert "loads models only from the repository directory" in response.json()["error"]
    assert sorted(str(p) for p in root.rglob("*")) == before


def test_a_url_as_repository_is_a_path_that_does_not_exist_and_is_never_fetched():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "normserve"),
                "serve",
                "--repository",
                f"http://127.0.0.1:{port}/models",
                "--port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "does not exist or is not a directory" in line


NETWORK_MODULES = {
    "urllib.request",
    "http.client",
    "requests",
    "httpx",
    "httpx2",
    "aiohttp",
    "socket",
    "ftplib",
    "huggingface_hub",
    "torch.hub",
}
NETWORK_CALLS = {"urlopen", "load_state_dict_from_url", "hf_hub_download", "download_url"}
# The one socket that is not a client: the server's own listening socket, bound before models
# load so that a busy port stops start-up at once (service/http/server.py: listen).
LISTENER = ("service/http/server.py", "socket")


def _sources() -> list[Path]:
    return sorted(p for d in ("service", "export", "models") for p in (ROOT / d).rglob("*.py"))


def test_serving_export_and_models_import_no_network_client():
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Attribute | ast.Name):
                name = node.attr if isinstance(node, ast.Attribute) else node.id
                names = [name] if name in NETWORK_CALLS else []
            else:
                continue
            found += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if n in NETWORK_MODULES | NETWORK_CALLS
                and (str(path.relative_to(ROOT)), n) != LISTENER
            ]
    assert len(_sources()) > 20
    assert found == []


def test_every_torch_load_passes_weights_only_true():
    calls = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                ok = (
                    len(weights_only) == 1
                    and isinstance(weights_only[0].value, ast.Constant)
                    and weights_only[0].value.value is True
                )
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert calls, "no torch.load found: the scan is looking in the wrong place"
    assert all(ok for _, ok in calls), calls
