"""HTTP response rules shared by every answer of the worker's web server, the views' and
the server's own (malformed requests): security headers, JSON errors that echo no input."""
from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

#: On every HTML and JSON response.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                    "Referrer-Policy": "no-referrer"}
#: Request line and each header line at most this long (bytes); at most this many headers.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 100
#: Methods a view can answer (faust's ``View`` has a handler slot for each).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "SEARCH"})


def error_body(status: int, message: str | None = None) -> bytes:
    """``{"error": message}`` (default: the status' phrase). ``message`` must not hold input."""
    return orjson.dumps({"error": message or HTTPStatus(status).phrase.lower()})


def error_response(status: int, message: str | None = None, headers: dict[str, str] | None = None) -> Any:
    """An aiohttp JSON error response with :data:`SECURITY_HEADERS` (plus ``headers``)."""
    from aiohttp import web

    return web.Response(status=status, body=error_body(status, message), content_type="application/json",
                        headers={**SECURITY_HEADERS, **(headers or {})})


def json_errors_middleware() -> Any:
    """aiohttp middleware: the server's own error answers (unknown path, method not allowed,
    ...) as JSON errors with :data:`SECURITY_HEADERS`, and those headers on every response."""
    from aiohttp import web

    @web.middleware
    async def json_errors(request: Any, handler: Any) -> Any:
        if request.method not in KNOWN_METHODS:  # faust's views know these only (others: a KeyError)
            return error_response(405, headers={"Allow": ", ".join(sorted(KNOWN_METHODS))})
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, headers=allow)
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
        return resp

    return json_errors
