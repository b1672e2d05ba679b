"""Web views for people and machines, and the guard every view runs behind.

Registered on a :class:`~agents.pipeline.Pipeline` by :func:`register` (called from
``Pipeline._wire``); ``Pipeline.page`` wraps every view, also the core ones, in :func:`guard`.

Views added here:

=====================================================  =======================================
``GET /``                                              dashboard (one HTML page, no external
                                                       resources; ``agents/static/``)
``GET /messages/{source}/{tenant}/{message_id}``       one message's lifecycle (JSON), answered
``GET /messages?source=&tenant=&id=``                  by the worker owning its table partition
``GET /stats``                                         dead-letter / ignored / duplicate counts
                                                       summed over all workers
``POST /ingest/altcraft``                              Altcraft webhook ingress (202 once Kafka
                                                       acknowledged every hook)
=====================================================  =======================================

Guard (:func:`guard`), in this order:

* ``/health/*``: no token. ``/health/live`` additionally turns 503 as soon as an agent task
  has raised (faust issues #175/#523: the process lives on, the supervisor quietly starts a
  new actor that continues *after* the record that crashed it, so that record is neither
  applied nor dead-lettered and its offset gets committed — data lost without a trace but
  this probe and the log). The 503 is sticky until the process restarts: a crash is a bug
  to look at, and the orchestrator's restart count makes it visible. It is also 503 when
  an agent's supervisor is gone or an actor stays dead longer than
  :data:`DEAD_ACTOR_GRACE_S`. ``/health/ready`` additionally needs the consumer and fetcher
  running, table recovery completed and no rebalance in progress.
* ``/ingest/*``: the ingress token ``settings.ingest_token`` (header ``X-Funnelwatch-Token``,
  ``Authorization: Bearer``, or query ``token``); unset = ingress disabled (404). 401 otherwise.
* everything else: when ``settings.web_token`` is set, the same three ways of presenting it;
  401 JSON without it.
* every request with a body method (POST, PUT, PATCH, DELETE): body capped at
  ``settings.max_event_bytes`` (413), read before the handler runs.

No view returns PII: message views show kind names, timestamps, stages and counts only.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson

from streams.events import message_key
from streams.stuck import RESOLVED_SHIFT as _RESOLVED_SHIFT  # MessageState.alerted bits
from streams.kinds import KINDS, SOURCES, STAGES
from streams.lifecycle import MessageState, summarize
from streams.stuck import deadline
from streams.timeparse import US_PER_S, format_ts_us

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

log = logging.getLogger("funnelwatch.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
INGEST_PREFIX = "/ingest/"
HEALTH_PREFIX = "/health/"
BODY_KEY = "funnelwatch.body"  # request[BODY_KEY]: the body the guard read (bytes)
FORWARDED_HEADER = "X-Funnelwatch-Forwarded"
SERVED_BY_HEADER = "X-Funnelwatch-Served-By"
TOKEN_HEADER = "X-Funnelwatch-Token"
DEAD_ACTOR_GRACE_S = 5.0  # an actor dead longer than this (not replaced by its supervisor) = not live
BODY_READ_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 30.0
FORWARD_TIMEOUT_S = 5.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ALERT_RANKS = (0, 1)  # queued, sent

Handler = Callable[[Any, Any], Awaitable[Any]]


def now_us() -> int:
    return time.time_ns() // 1000


# ---------------------------------------------------------------------------- responses


def _json(web: Any, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    return web.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)


def _error(web: Any, status: int, message: str, **extra: Any) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="funnelwatch"'} if status == 401 else None
    return _json(web, {"error": message, **extra}, status=status, headers=headers)


def _secure(response: Any) -> Any:
    headers = getattr(response, "headers", None)
    if headers is not None:
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Cache-Control", "no-store")
        headers.setdefault("Referrer-Policy", "no-referrer")
    return response


# -------------------------------------------------------------------------------- guard


class _WebState:
    """Per-pipeline state of this module (crash records, dead actors, the dashboard page)."""

    def __init__(self) -> None:
        self.crashes: list[dict[str, str]] = []  # last few agent crashes (no exception text: may hold data)
        self.crash_count = 0
        self.dead_since: dict[int, float] = {}
        self.dashboard: tuple[bytes, str] | None = None


def _state(pipeline: "Pipeline") -> _WebState:
    st = pipeline.__dict__.get("_web_state")
    if st is None:
        st = pipeline.__dict__["_web_state"] = _WebState()
    return st


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


def guard(pipeline: "Pipeline", path: str, handler: Handler) -> Handler:
    """Wrap a view handler ``(web, request)`` in the auth / size / health checks (module doc)."""
    s = pipeline.s
    is_health = path.startswith(HEALTH_PREFIX)
    is_ingest = path.startswith(INGEST_PREFIX)
    extra_health = {"/health/live": liveness, "/health/ready": readiness}.get(path)

    async def guarded(web: Any, request: Any) -> Any:
        try:
            if is_ingest:
                if s.ingest_token is None:
                    return _secure(_error(web, 404, "ingress disabled: set FUNNELWATCH_INGEST_TOKEN to enable it"))
                if not token_ok(presented_token(request), s.ingest_token.get_secret_value()):
                    return _secure(_error(web, 401, "missing or wrong ingest token"))
            elif not is_health and s.web_token is not None:
                if not token_ok(presented_token(request), s.web_token.get_secret_value()):
                    return _secure(_error(web, 401, "missing or wrong bearer token"))
            if request.method in _BODY_METHODS:
                try:
                    body = await read_capped(request, s.max_event_bytes)
                except asyncio.TimeoutError:
                    return _secure(_error(web, 408, "request body not received in time"))
                if body is None:
                    return _secure(_error(web, 413, f"request body larger than {s.max_event_bytes} bytes"))
                request[BODY_KEY] = body
            response = await handler(web, request)
            if extra_health is not None:
                response = _merge_health(web, response, extra_health(pipeline))
            return _secure(response)
        except Exception:  # noqa: BLE001 - answer JSON, log the traceback (our views hold no PII)
            log.exception("web view %s failed", path)
            return _secure(_error(web, 500, "internal error"))

    guarded.__name__ = getattr(handler, "__name__", "view")
    return guarded


def _merge_health(web: Any, response: Any, extra: dict[str, Any]) -> Any:
    """Add ``extra`` checks to a health view's JSON answer; any failed check makes it 503."""
    try:
        body = orjson.loads(response.body)
    except Exception:  # noqa: BLE001 - not JSON: keep it, our checks decide alone
        body = {}
    ok = response.status == 200 and not extra.get("problems")
    body.update(extra)
    if "live" in body:
        body["live"] = ok
    if "ready" in body:
        body["ready"] = ok
    return _json(web, body, status=200 if ok else 503)


# ------------------------------------------------------------------------------- health


def _install_crash_hooks(pipeline: "Pipeline") -> None:
    """Record every agent crash (``Agent._on_error`` runs before faust restarts the actor)."""
    st = _state(pipeline)
    for agent in list(pipeline.app.agents.values()):
        prev = getattr(agent, "_on_error", None)

        async def on_error(agent: Any, exc: BaseException, _prev: Any = prev) -> None:
            st.crash_count += 1
            st.crashes.append({"agent": agent.name, "error": type(exc).__name__, "at": format_ts_us(now_us())})
            del st.crashes[:-10]
            log.error("agent %s crashed (%s): /health/live now answers 503; restart the worker",
                      agent.name, type(exc).__name__)
            if _prev is not None:
                await _prev(agent, exc)

        agent._on_error = on_error


def liveness(pipeline: "Pipeline") -> dict[str, Any]:
    """Agent-level liveness problems (faust keeps the process up when agents die)."""
    app = pipeline.app
    st = _state(pipeline)
    problems: list[str] = []
    crashed = sorted({c["agent"] for c in st.crashes})
    for name in crashed:
        problems.append(f"agent {name} crashed")
    if getattr(app, "crashed", False):
        problems.append("app crashed")
    seen: set[int] = set()
    now = time.monotonic()
    stopping = bool(getattr(app, "should_stop", False))
    for agent in list(app.agents.values()):
        if stopping or not getattr(agent, "started", False) or getattr(agent, "should_stop", False):
            continue
        sup = getattr(agent, "supervisor", None)
        if sup is None or getattr(sup, "crashed", False) or getattr(sup, "should_stop", False):
            problems.append(f"agent {agent.name} has no running supervisor")
            continue
        for aref in list(getattr(sup, "_services", ())):
            task = getattr(aref, "actor_task", None)
            dead = bool(getattr(aref, "crashed", False)) or (task is not None and task.done())
            key = id(aref)
            seen.add(key)
            if not dead:
                st.dead_since.pop(key, None)
                continue
            since = st.dead_since.setdefault(key, now)
            if now - since > DEAD_ACTOR_GRACE_S:
                problems.append(f"agent {agent.name}: an actor has been dead for {now - since:.0f} s")
    for key in list(st.dead_since):
        if key not in seen:
            del st.dead_since[key]
    out: dict[str, Any] = {"problems": problems, "agent_crashes": st.crash_count, "last_crashes": list(st.crashes)}
    if crashed:
        out["crashed_agents"] = crashed
    return out


def _running(service: Any) -> bool:
    return (service is not None and bool(getattr(service, "started", False))
            and not getattr(service, "crashed", False) and not getattr(service, "should_stop", False))


def readiness(pipeline: "Pipeline") -> dict[str, Any]:
    """Consumer running, assigned partitions recovered, not rebalancing."""
    app = pipeline.app
    problems: list[str] = []
    consumer = app.consumer
    consumer_running = _running(consumer) and _running(getattr(consumer, "_thread", consumer))
    fetcher_running = _running(getattr(app, "_fetcher", None))
    recovery = app.tables.recovery
    recovered = recovery.completed.is_set() and not getattr(app, "in_recovery", False)
    rebalancing = bool(getattr(app, "rebalancing", False))
    if not consumer_running:
        problems.append("consumer not running")
    if not fetcher_running:
        problems.append("fetcher not running")
    if not recovered:
        problems.append("assigned table partitions not recovered yet")
    if rebalancing:
        problems.append("rebalancing")
    return {"problems": problems, "consumer_running": consumer_running, "fetcher_running": fetcher_running,
            "partitions_recovered": recovered, "rebalancing": rebalancing,
            "assigned_partitions": len(consumer.assignment()) if consumer_running else 0}


# ----------------------------------------------------------------------------- messages


def _ts(us: int | None) -> str | None:
    return format_ts_us(us) if us is not None else None


def message_view(pipeline: "Pipeline", source: str, tenant: str, message_id: str, raw: bytes,
                 now: int | None = None) -> dict[str, Any]:
    """JSON of one message's state (no PII: kinds, timestamps, stages, counts, alert marks)."""
    now = now_us() if now is None else now
    st = MessageState.from_bytes(raw)
    s = summarize(source, st.events)
    d = deadline(s, tenant, pipeline.slas)
    outcome = "delivered" if s.delivered else "failed" if s.failed else "none"
    key = message_key(source, tenant, message_id).encode()
    stuck = None
    if d is not None:
        rank = STAGES.index(d.stage)
        stuck = {"stage": d.stage, "since": _ts(d.since_us), "deadline": _ts(d.deadline_us),
                 "sla_seconds": d.sla_s, "stuck_now": now > d.deadline_us,
                 "alerted": bool(st.alerted & (1 << rank))}
    alerts = []
    for rank in _ALERT_RANKS:
        if st.alerted & (1 << rank):
            alerts.append({"type": "stuck", "stage": STAGES[rank],
                           "since": _ts(s.reached.get(rank)),
                           "open": not st.alerted & (1 << (rank + _RESOLVED_SHIFT)) and key in pipeline.stuck_open})
        if st.alerted & (1 << (rank + _RESOLVED_SHIFT)):
            alerts.append({"type": "resolved", "stage": STAGES[rank],
                           "resolved_stage": "failed" if s.failed else STAGES[s.highest] if s.reached else None})
    window_us = pipeline.window_us
    return {
        "source": source, "tenant": tenant, "message_id": message_id, "channel": s.channel,
        "outcome": outcome, "conflicting": s.conflicting,
        "stages": [{"stage": STAGES[r], "at": _ts(ts)} for r, ts in sorted(s.reached.items())],
        "highest_stage": STAGES[s.highest] if s.reached else None,
        "failed_at": _ts(s.failed_at) if s.failure_seen else None,
        "annotations": list(s.annotations),
        "opens_total": s.opens_total, "clicks_total": s.clicks_total,
        "entry_at": _ts(s.entry_us),
        "window_start": _ts(s.window_start_us(window_us)),
        "window_end": _ts(s.window_start_us(window_us) + window_us),
        "last_event_at": _ts(s.last_us),
        "events": [{"kind": KINDS[code].name, "at": _ts(ts)} for ts, code in st.events],
        "updated_at": _ts(st.touched_us) if st.touched_us else None,
        "expires_at": _ts(st.touched_us + pipeline.s.message_retention_s * US_PER_S) if st.touched_us else None,
        "stuck": stuck,
        "alerts": alerts,
    }


def _canonical(pipeline: "Pipeline") -> str:
    return str(pipeline.app.conf.canonical_url).rstrip("/")


def _ident(url: Any) -> tuple[str, int]:
    from yarl import URL

    u = URL(str(url))
    return (u.host or "", int(u.port or 80))


def _message_params(request: Any) -> tuple[str | None, str | None, str | None]:
    mi, q = request.match_info, request.query
    return (mi.get("source") or q.get("source"), mi.get("tenant") or q.get("tenant"),
            mi.get("message_id") or q.get("id") or q.get("message_id"))


async def _forward(pipeline: "Pipeline", web: Any, request: Any, dest: Any) -> Any:
    """Answer from the owning worker (one hop: the peer answers locally, never forwards again)."""
    import aiohttp

    url = str(dest).rstrip("/") + str(request.rel_url)
    headers = {FORWARDED_HEADER: _canonical(pipeline), "Accept": "application/json"}
    if pipeline.s.web_token is not None:
        headers["Authorization"] = f"Bearer {pipeline.s.web_token.get_secret_value()}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as http:
            async with http.get(url, headers=headers) as resp:
                body = await resp.read()
                served_by = resp.headers.get(SERVED_BY_HEADER, str(dest))
                return web.bytes(body, content_type=resp.content_type or "application/json",
                                 status=resp.status, headers={SERVED_BY_HEADER: served_by})
    except Exception as exc:  # noqa: BLE001 - the owner is down or moving: retryable
        return _error(web, 503, f"owning worker did not answer ({type(exc).__name__}); retry")


def make_message_view(pipeline: "Pipeline") -> Handler:
    async def view_message(web: Any, request: Any) -> Any:
        source, tenant, mid = _message_params(request)
        if source not in SOURCES:
            return _error(web, 400, "unknown source", sources=list(SOURCES))
        if not tenant or not mid:
            return _error(web, 400, "tenant and message id are required")
        key = message_key(source, tenant, mid).encode()
        me = _canonical(pipeline)
        try:
            dest = pipeline.app.router.key_store(pipeline.messages.name, key)
        except KeyError:
            return _error(web, 503, "partition ownership unknown (rebalancing); retry")
        owner_is_me = _ident(dest) == _ident(me)
        if not owner_is_me and request.query.get("local") != "1":
            if request.headers.get(FORWARDED_HEADER):
                return _error(web, 503, "workers disagree on the partition owner (rebalancing); retry")
            return await _forward(pipeline, web, request, dest)
        if not pipeline.ready:
            return _error(web, 503, "worker is rebalancing or recovering; retry")
        raw = pipeline.messages.get(key)
        headers = {SERVED_BY_HEADER: me}
        if not raw:
            return _json(web, {"error": "unknown message", "source": source, "tenant": tenant,
                               "message_id": mid}, status=404, headers=headers)
        body = message_view(pipeline, source, tenant, mid, raw)
        body["served_by"] = me
        return _json(web, body, headers=headers)

    return view_message


# -------------------------------------------------------------------------------- stats


def _counter(registry: Any, family: str) -> dict[tuple[str, ...], float]:
    """``{label values: value}`` of a counter family's ``_total`` samples."""
    out: dict[tuple[str, ...], float] = {}
    for metric in registry.collect():
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name == family + "_total":
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def local_stats(pipeline: "Pipeline") -> dict[str, Any]:
    reg = pipeline.registry
    rejected: dict[str, dict[str, int]] = {}
    for labels, v in _counter(reg, "funnel_events_rejected").items():
        lab = dict(labels)
        rejected.setdefault(lab.get("source", "unknown"), {})[lab.get("reason", "unknown")] = int(v)
    ignored: dict[str, dict[str, int]] = {}
    for labels, v in _counter(reg, "funnel_events_ignored").items():
        lab = dict(labels)
        ignored.setdefault(lab.get("source", "unknown"), {})[lab.get("reason", "unknown")] = int(v)
    dups: dict[str, int] = {}
    for labels, v in _counter(reg, "funnel_duplicates").items():
        dups[dict(labels).get("source", "unknown")] = int(v)
    events = sum(_counter(reg, "funnel_events").values())
    return {"dead_letters": rejected, "ignored": ignored, "duplicates": dups, "events": int(events),
            "inflight": pipeline.inflight, "open_stuck_alerts": len(pipeline.stuck_open), "workers": 1}


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"dead_letters": {}, "ignored": {}, "duplicates": {}, "events": 0, "inflight": 0,
                           "open_stuck_alerts": 0, "workers": 0}
    for p in parts:
        for section in ("dead_letters", "ignored"):
            for src, reasons in p.get(section, {}).items():
                acc = out[section].setdefault(src, {})
                for reason, n in reasons.items():
                    acc[reason] = acc.get(reason, 0) + n
        for src, n in p.get("duplicates", {}).items():
            out["duplicates"][src] = out["duplicates"].get(src, 0) + n
        for f in ("events", "inflight", "open_stuck_alerts", "workers"):
            out[f] += p.get(f, 0)
    by_reason: dict[str, int] = {}
    for reasons in out["dead_letters"].values():
        for reason, n in reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    out["dead_letters_by_reason"] = dict(sorted(by_reason.items()))
    out["dead_letters_total"] = sum(by_reason.values())
    return out


def make_stats_view(pipeline: "Pipeline") -> Handler:
    async def view_stats(web: Any, request: Any) -> Any:
        local = local_stats(pipeline)
        if request.query.get("local") == "1":
            return _json(web, local)
        try:
            peers = await pipeline._gather_peers("/stats", {})
        except Exception as exc:  # noqa: BLE001
            return _error(web, 503, f"stats incomplete: {exc}")
        body = merge_stats([local, *peers])
        body["note"] = "counters since each worker process started"
        return _json(web, body)

    return view_stats


# ------------------------------------------------------------------------------ ingress


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


def make_ingest_view(pipeline: "Pipeline", topic: Any) -> Handler:
    topic_name = topic.get_topic_name()

    async def ingest_altcraft(web: Any, request: Any) -> Any:
        body: bytes = request.get(BODY_KEY, b"")
        try:
            hooks = split_hooks(body)
        except BadRequest as exc:
            return _error(web, 400, str(exc))
        producer = pipeline.app.producer
        try:
            futs = [await producer.send(topic_name, None, raw, None, None, None) for raw in hooks]
            metas = await asyncio.wait_for(asyncio.gather(*futs), ACK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - some hooks may have been produced; a retry is safe
            log.warning("ingress: Kafka did not acknowledge %d hooks: %s", len(hooks), type(exc).__name__)
            return _error(web, 503, "Kafka did not acknowledge the hooks; retry (duplicates are harmless)")
        return _json(web, {"accepted": len(hooks), "topic": topic_name,
                           "records": [{"partition": m.partition, "offset": m.offset} for m in metas]},
                     status=202)

    return ingest_altcraft


# ---------------------------------------------------------------------------- dashboard


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def build_dashboard(static_dir: Path = STATIC_DIR) -> tuple[bytes, str]:
    """``(html, content security policy)``: index.html with app.js and style.css inlined, so the
    page is one request (a bearer-token query parameter covers it) and loads nothing else."""
    html = (static_dir / "index.html").read_text(encoding="utf-8")
    css = (static_dir / "style.css").read_text(encoding="utf-8")
    js = (static_dir / "app.js").read_text(encoding="utf-8")
    html = html.replace("<!--STYLE-->", f"<style>{css}</style>").replace("<!--SCRIPT-->", f"<script>{js}</script>")
    csp = ("default-src 'none'; "
           f"script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), csp


def make_dashboard_view(pipeline: "Pipeline") -> Handler:
    st = _state(pipeline)

    async def dashboard(web: Any, request: Any) -> Any:
        if st.dashboard is None:
            st.dashboard = build_dashboard()
        html, csp = st.dashboard
        return web.bytes(html, content_type="text/html",
                         headers={"Content-Security-Policy": csp, "X-Frame-Options": "DENY"})

    return dashboard


# ------------------------------------------------------------------------- test hook


def _install_test_crash_hook(pipeline: "Pipeline", kind: str) -> None:
    log.warning("FUNNELWATCH_TEST_CRASH_KIND is set: ingest agents crash on records of kind %r "
                "(test-only; never set it in production)", kind)

    def crash_on_kind(batch: Any) -> None:
        for event in batch:
            try:
                obj = orjson.loads(event.value or b"")
                k = (obj.get("kind") or obj.get("event_type")) if isinstance(obj, dict) else None
            except orjson.JSONDecodeError:
                k = None
            if k == kind:
                raise RuntimeError("FUNNELWATCH_TEST_CRASH_KIND: test-only agent crash")

    pipeline._test_crash_hook = crash_on_kind  # type: ignore[method-assign]


def _install_test_exit_hook(pipeline: "Pipeline", spec: str) -> None:
    """``TYPE:N``: the process dies (``os._exit``, nothing flushed, like SIGKILL) as soon as N
    alerts of TYPE were acked, before the table writes that mark them."""
    alert_type, _, n = spec.partition(":")
    limit = int(n)
    log.warning("FUNNELWATCH_TEST_EXIT_AFTER_ALERTS is set: the worker dies after %d acked %r alerts "
                "(test-only; never set it in production)", limit, alert_type)
    sent = {"n": 0}
    send = pipeline._send_alert_acked

    async def counting_send(key: bytes, alert: dict) -> None:
        await send(key, alert)
        if alert["type"] == alert_type:
            sent["n"] += 1

    def exit_when_acked() -> None:
        if sent["n"] >= limit:
            log.warning("FUNNELWATCH_TEST_EXIT_AFTER_ALERTS: %d %r alerts acked: exiting now", sent["n"], alert_type)
            os._exit(137)

    pipeline._send_alert_acked = counting_send  # type: ignore[method-assign]
    pipeline._test_alerts_acked_hook = exit_when_acked  # type: ignore[method-assign]


def _install_test_drop_hook(pipeline: "Pipeline", every: int) -> None:
    """Lose the first delivery of every record at offset ``every - 1 (mod every)``, on every
    topic, before the agents see it: what faust does to records it drops mid-fetch."""
    log.warning("FUNNELWATCH_TEST_DROP_EVERY is set: the first delivery of every %dth record is dropped "
                "(test-only; never set it in production)", every)
    dropped: set[tuple[Any, int]] = set()

    def drop(batch: list) -> list:
        out = []
        for event in batch:
            m = event.message
            if m.offset % every == every - 1 and (m.tp, m.offset) not in dropped:
                dropped.add((m.tp, m.offset))
                continue
            out.append(event)
        return out

    pipeline._test_drop_hook = drop  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- register


def register(pipeline: "Pipeline") -> None:
    """Register the views that are not part of the core pipeline (dashboard, messages, ingress)."""
    _install_crash_hooks(pipeline)
    crash_kind = os.environ.get("FUNNELWATCH_TEST_CRASH_KIND")
    if crash_kind:
        _install_test_crash_hook(pipeline, crash_kind)
    exit_spec = os.environ.get("FUNNELWATCH_TEST_EXIT_AFTER_ALERTS")
    if exit_spec:
        _install_test_exit_hook(pipeline, exit_spec)
    drop_every = os.environ.get("FUNNELWATCH_TEST_DROP_EVERY")
    if drop_every:
        _install_test_drop_hook(pipeline, int(drop_every))
    messages = make_message_view(pipeline)
    pipeline.page("/", make_dashboard_view(pipeline))
    pipeline.page("/messages", messages)
    pipeline.page("/messages/{source}/{tenant}/{message_id}", messages)
    pipeline.page("/stats", make_stats_view(pipeline))
    pipeline.page("/ingest/altcraft", make_ingest_view(pipeline, pipeline.t_ac), methods=("POST",))
