"""``/docs`` is Swagger UI from the package's own assets: the page names no outside URL, every
asset it loads is served from the package, and the packaging ships them."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from normserve.service.http.docs import ASSETS

ROOT = Path(__file__).resolve().parents[3]
ASSET_DIR = ROOT / "service" / "http" / "swagger-ui"


def test_docs_page_references_no_outside_url(client: TestClient):
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert re.findall(r"""https?://[^\s"'<>]+""", page.text) == []
    assert "validatorUrl" in page.text  # the badge that would post the schema elsewhere: off
    assert '"validatorUrl": null' in page.text


def test_every_asset_the_page_loads_is_served(client: TestClient):
    page = client.get("/docs").text
    loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert sorted(loaded) == sorted(f"/docs/assets/{name}" for name in ASSETS)
    for path in loaded:
        asset = client.get(path)
        assert asset.status_code == 200, path
        name = path.rsplit("/", 1)[1]
        assert asset.content == (ASSET_DIR / name).read_bytes()
        assert asset.headers["content-type"].split(";")[0] == ASSETS[name].split(";")[0]
    assert b"SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").content
    # The openapi document the page asks for is there too.
    assert "/openapi.json" in page
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_only_the_listed_assets_are_served(client: TestClient):
    for name in ("LICENSE", "VERSION", "..%2Fdocs.py", "nope.js"):
        response = client.get(f"/docs/assets/{name}")
        assert response.status_code == 404
        assert "error" in response.json()
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page loads a CDN


def test_pyproject_ships_the_assets_as_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["normserve.service.http"]
    for name in [*ASSETS, "LICENSE", "NOTICE"]:
        assert (ASSET_DIR / name).is_file(), name
        assert any(fnmatch.fnmatch(f"swagger-ui/{name}", p) for p in patterns), name
