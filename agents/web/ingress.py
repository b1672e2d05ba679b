"""``POST /ingest/altcraft``: Altcraft webhook ingress (202 once Kafka acknowledged every hook).

The body holds one hook object or a JSON array of them; each hook goes to the Altcraft
input topic with its exact original bytes. Nothing reaches Kafka from a rejected request.
Requests are limited per client address (``ingest_rate_per_s``, ``ingest_rate_burst``: 429
with ``Retry-After``); loopback clients are not, unless ``ingest_rate_limit_loopback``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any, Callable

from ..settings_broker import is_loopback
from .deps import WebDeps
from .guard import BODY_KEY, error, json_response

log = logging.getLogger("funnelwatch.web")

ACK_TIMEOUT_S = 30.0


class BadRequest(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"invalid JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_WS = " \t\n\r"


def split_hooks(body: bytes) -> list[bytes]:
    """The raw JSON bytes of each hook in a body holding one hook object or an array of them.

    Array elements keep their exact original bytes (spans found with ``raw_decode``), so the
    topic gets what the vendor sent. Raises :class:`BadRequest` for anything else.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    text = text.lstrip("\ufeff")
    i, n = 0, len(text)
    while i < n and text[i] in _WS:
        i += 1
    try:
        if i < n and text[i] == "[":
            out: list[bytes] = []
            i += 1
            while True:
                while i < n and text[i] in _WS:
                    i += 1
                if i < n and text[i] == "]" and not out:
                    i += 1
                    break
                start = i
                obj, i = _DECODER.raw_decode(text, i)
                if not isinstance(obj, dict):
                    raise BadRequest(f"hook {len(out)} is not a JSON object")
                out.append(text[start:i].encode("utf-8"))
                while i < n and text[i] in _WS:
                    i += 1
                if i < n and text[i] == ",":
                    i += 1
                    continue
                if i < n and text[i] == "]":
                    i += 1
                    break
                raise BadRequest("malformed JSON array")
        else:
            start = i
            obj, i = _DECODER.raw_decode(text, i)
            if not isinstance(obj, dict):
                raise BadRequest("body must be a hook object or an array of hook objects")
            out = [text[start:i].encode("utf-8")]
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON at character {exc.pos}") from None
    while i < n and text[i] in _WS:
        i += 1
    if i != n:
        raise BadRequest("trailing data after JSON")
    if not out:
        raise BadRequest("no hooks in the array")
    return out


class RateLimiter:
    """Token bucket per client address: ``rate_per_s`` requests a second, bursts of ``burst``.

    Remembers at most ``max_clients`` addresses (the least recently refilled go first)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def allow(self, client: str) -> float:
        """0.0 if ``client`` may send now (a token is taken), else the seconds until it may."""
        now = self.clock()
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        wait_s = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s
        if not wait_s:
            tokens -= 1.0
        if len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[client] = (tokens, now)
        return wait_s


class Ingress:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        s = deps.settings
        self.limiter = RateLimiter(s.ingest_rate_per_s, s.ingest_rate_burst) if s.ingest_rate_per_s > 0 else None
        self.limit_loopback = s.ingest_rate_limit_loopback

    def _wait_s(self, request: Any) -> float:
        client = request.remote or ""
        if self.limiter is None or (not self.limit_loopback and is_loopback(client)):
            return 0.0
        return self.limiter.allow(client)

    async def ingest_altcraft(self, web: Any, request: Any) -> Any:
        wait_s = self._wait_s(request)
        if wait_s:
            return json_response(web, {"error": "too many requests from this address; retry later"}, status=429,
                                 headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
        body: bytes = request.get(BODY_KEY, b"")
        try:
            hooks = split_hooks(body)
        except BadRequest as exc:
            return error(web, 400, str(exc))
        topic = self.deps.ingress_topic
        producer = self.deps.app.producer
        try:
            futs = [await producer.send(topic, None, raw, None, None, None) for raw in hooks]
            metas = await asyncio.wait_for(asyncio.gather(*futs), ACK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - some hooks may have been produced; a retry is safe
            log.warning("ingress: Kafka did not acknowledge %d hooks: %s", len(hooks), type(exc).__name__)
            return error(web, 503, "Kafka did not acknowledge the hooks; retry (duplicates are harmless)")
        return json_response(web, {"accepted": len(hooks), "topic": topic,
                                   "records": [{"partition": m.partition, "offset": m.offset} for m in metas]},
                             status=202)
