"""The guard every view runs behind, and the JSON responses of the views.

In this order:

* ``/health/*``: no token.
* ``/ingest/*``: the ingress token ``settings.ingest_token`` (header ``X-Funnelwatch-Token``,
  ``Authorization: Bearer``, or query ``token``); unset = ingress disabled (404). 401 otherwise.
* everything else: when ``settings.web_token`` is set, the same three ways of presenting it;
  401 JSON without it.
* every request with a body method (POST, PUT, PATCH, DELETE): body capped at
  ``settings.max_event_bytes`` (413), read before the handler runs.

Every response gets ``X-Content-Type-Options``, ``Cache-Control: no-store`` and
``Referrer-Policy``; an exception in a view is logged and answered as a JSON 500.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable

import orjson

from ..http import SECURITY_HEADERS
from ..settings import Settings

log = logging.getLogger("funnelwatch.web")

INGEST_PREFIX = "/ingest/"
HEALTH_PREFIX = "/health/"
BODY_KEY = "funnelwatch.body"  # request[BODY_KEY]: the body the guard read (bytes)
TOKEN_HEADER = "X-Funnelwatch-Token"
BODY_READ_TIMEOUT_S = 30.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Handler = Callable[[Any, Any], Awaitable[Any]]


def json_response(web: Any, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    return web.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)


def error(web: Any, status: int, message: str, **extra: Any) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="funnelwatch"'} if status == 401 else None
    return json_response(web, {"error": message, **extra}, status=status, headers=headers)


def _secure(response: Any) -> Any:
    headers = getattr(response, "headers", None)
    if headers is not None:
        for name, value in SECURITY_HEADERS.items():
            headers.setdefault(name, value)
    return response


def presented_token(request: Any) -> str | None:
    """The token a request presents: ``X-Funnelwatch-Token``, ``Authorization: Bearer``, or ``?token=``."""
    tok = request.headers.get(TOKEN_HEADER)
    if tok:
        return tok.strip()
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tok = request.query.get("token")
    return tok if tok else None


def token_ok(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())


async def read_capped(request: Any, cap: int) -> bytes | None:
    """The request body, or None when it is larger than ``cap`` bytes (reading stops there)."""
    length = request.content_length
    if length is not None and length > cap:
        return None
    body = bytearray()

    async def read() -> bool:
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                return True
            body.extend(chunk)
            if len(body) > cap:
                return False

    if not await asyncio.wait_for(read(), BODY_READ_TIMEOUT_S):
        return None
    return bytes(body)


def guard(s: Settings, path: str, handler: Handler) -> Handler:
    """Wrap a view handler ``(web, request)`` in the auth and size checks (module doc)."""
    is_health = path.startswith(HEALTH_PREFIX)
    is_ingest = path.startswith(INGEST_PREFIX)

    async def guarded(web: Any, request: Any) -> Any:
        try:
            if is_ingest:
                if s.ingest_token is None:
                    return _secure(error(web, 404, "ingress disabled: set FUNNELWATCH_INGEST_TOKEN to enable it"))
                if not token_ok(presented_token(request), s.ingest_token.get_secret_value()):
                    return _secure(error(web, 401, "missing or wrong ingest token"))
            elif not is_health and s.web_token is not None:
                if not token_ok(presented_token(request), s.web_token.get_secret_value()):
                    return _secure(error(web, 401, "missing or wrong bearer token"))
            if request.method in _BODY_METHODS:
                try:
                    body = await read_capped(request, s.max_event_bytes)
                except asyncio.TimeoutError:
                    return _secure(error(web, 408, "request body not received in time"))
                if body is None:
                    return _secure(error(web, 413, f"request body larger than {s.max_event_bytes} bytes"))
                request[BODY_KEY] = body
            return _secure(await handler(web, request))
        except Exception:  # noqa: BLE001 - answer JSON, log the traceback (our views hold no PII)
            log.exception("web view %s failed", path)
            return _secure(error(web, 500, "internal error"))

    guarded.__name__ = getattr(handler, "__name__", "view")
    return guarded
