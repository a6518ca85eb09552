"""uvicorn's HTTP protocol, except that requests it cannot parse get the JSON error body too.

A request that is not valid HTTP/1.1 (a bad request line, a negative or doubled
``Content-Length``, a URL over the parser's limit, non-ASCII bytes in the target) never reaches
the app: uvicorn answers it 400 with a plain-text body and closes the connection. This
subclass keeps that behaviour and only changes the body to ``{"error": ...}``, so every error a
client sees has one shape.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["JsonErrorHttpToolsProtocol"]


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps({"error": f"malformed HTTP request: {msg}"})
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
