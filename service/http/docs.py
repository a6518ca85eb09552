"""Swagger UI at ``/docs``, from assets shipped inside the package: no CDN, nothing fetched.

The page is FastAPI's own (``get_swagger_ui_html``) pointed at the files in ``swagger-ui/``
beside this module: Swagger UI's ``swagger-ui-bundle.js`` and ``swagger-ui.css`` from the
``swagger-ui-dist`` release named in ``swagger-ui/VERSION`` (Apache-2.0, its LICENSE and NOTICE
beside them), installed as package data (pyproject.toml). Swagger UI 5 is needed: FastAPI writes
OpenAPI 3.1, which Swagger UI 4 (the ``swagger-ui-bundle`` PyPI package) cannot render. The
validator badge, which would send the document to an outside service, is off. FastAPI's ReDoc
page (loaded from a CDN) is not served.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response

from normserve.service.errors import NotFound

__all__ = ["ASSETS", "DOCS_PATH", "install_docs"]

DOCS_PATH = "/docs"
ASSET_PATH = "/docs/assets"
# Every file the page loads, and its media type; nothing else in the folder is served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_FOLDER = files(__package__) / "swagger-ui"
_PARAMETERS: dict[str, Any] = {"validatorUrl": None, "deepLinking": True}


def install_docs(app: FastAPI) -> None:
    """Serve the page at ``/docs`` and its assets under ``/docs/assets/`` (out of the schema).

    Build the app with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not served.
    """
    cache: dict[str, bytes] = {}

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSET_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSET_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSET_PATH}/favicon-32x32.png",
            swagger_ui_parameters=_PARAMETERS,
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = ASSETS.get(name)
        if media_type is None:
            raise NotFound(f"no documentation asset {name[:64]!r}")
        if name not in cache:
            cache[name] = (_FOLDER / name).read_bytes()
        return Response(
            cache[name],
            media_type=media_type,
            headers={"cache-control": "public, max-age=86400"},
        )

    # Plain routes, as FastAPI adds its own docs pages: outside the API and its schema.
    app.add_route(DOCS_PATH, docs, methods=["GET"], include_in_schema=False)
    app.add_route(f"{ASSET_PATH}/{{name}}", asset, methods=["GET"], include_in_schema=False)
