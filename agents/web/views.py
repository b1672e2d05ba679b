"""The views for people and machines: ``/`` (dashboard), ``/funnel``, ``/alerts``,
``/stats`` and ``/metrics``. Complete across workers by scatter-gather (``?local=1`` is
one worker's part).
"""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from streams.report import campaign_report_rows

from ..funnel import rows_json
from ..metrics import render
from ..windows import parse_filters
from .deps import WebDeps
from .guard import error, json_response
from .params import BadParam, int_param

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
NOT_READY = "worker is rebalancing or recovering; retry"
MAX_LIMIT = 1000
MAX_OFFSET = 10**9


class Views:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self._dashboard: tuple[bytes, str] | None = None

    async def view_metrics(self, web: Any, request: Any) -> Any:
        body, ctype = render(self.deps.registry, request.headers.get("Accept"))
        return web.bytes(body, content_type=ctype.split(";")[0])

    async def view_funnel(self, web: Any, request: Any) -> Any:
        q = dict(request.query)
        try:
            parse_filters(q)
        except ValueError as exc:
            return error(web, 400, str(exc))
        if not self.deps.ready():
            return error(web, 503, NOT_READY)
        windows = self.deps.windows
        by = q.get("by") or "window"
        if by not in ("window", "campaign"):
            return error(web, 400, "query parameter 'by' must be 'window' or 'campaign'")
        if by == "campaign":
            return await self._funnel_by_campaign(web, q)
        if q.get("local") == "1":
            return json_response(web, {"windows": rows_json(windows.local(q)), "partial": True})
        try:
            rows = await windows.gather(q)
        except Exception as exc:  # noqa: BLE001
            return error(web, 503, f"funnel incomplete: {exc}")
        return json_response(web, {"windows": rows_json(rows)})

    async def _funnel_by_campaign(self, web: Any, q: dict) -> Any:
        """SPEC §11 ``{"campaigns": rows}``; ``local=1``: this worker's rows and the names it holds."""
        windows = self.deps.windows
        if q.get("local") == "1":
            rows, names = windows.local_campaigns(q)
            return json_response(web, {
                "campaigns": campaign_report_rows(rows, names), "partial": True,
                "names": [[t, c, ts, name] for (t, c), (ts, name) in sorted(names.names.items())]})
        try:
            rows_out = await windows.gather_campaigns(q)
        except Exception as exc:  # noqa: BLE001
            return error(web, 503, f"funnel incomplete: {exc}")
        return json_response(web, {"campaigns": rows_out})

    async def view_alerts(self, web: Any, request: Any) -> Any:
        """Currently stuck messages across all workers, newest first, filtered and paginated."""
        q = request.query
        try:
            limit = int_param(q, "limit", 100, 1, MAX_LIMIT)
            offset = int_param(q, "offset", 0, 0, MAX_OFFSET)
        except BadParam as exc:
            return error(web, 400, str(exc))
        flt = {f: q[f] for f in ("tenant", "channel", "stage") if q.get(f)}
        rows = [r for r in self.deps.open_alerts() if all(r.get(f) == v for f, v in flt.items())]
        if q.get("local") == "1":
            return json_response(web, {"alerts": rows})
        if not self.deps.ready():
            return error(web, 503, NOT_READY)
        try:
            for body in await self.deps.peers.gather("/alerts", flt):
                rows.extend(body["alerts"])
        except Exception as exc:  # noqa: BLE001
            return error(web, 503, f"alerts incomplete: {exc}")
        rows.sort(key=lambda a: (a["deadline"], a["source"], a["tenant"], a["message_id"]), reverse=True)
        return json_response(web, {"total": len(rows), "offset": offset, "limit": limit,
                                   "alerts": rows[offset:offset + limit]})

    async def view_stats(self, web: Any, request: Any) -> Any:
        local = local_stats(self.deps)
        if request.query.get("local") == "1":
            return json_response(web, local)
        try:
            peers = await self.deps.peers.gather("/stats", {})
        except Exception as exc:  # noqa: BLE001
            return error(web, 503, f"stats incomplete: {exc}")
        body = merge_stats([local, *peers])
        body["note"] = "counters since each worker process started"
        return json_response(web, body)

    async def view_dashboard(self, web: Any, request: Any) -> Any:
        if self._dashboard is None:
            self._dashboard = build_dashboard()
        html, csp = self._dashboard
        return web.bytes(html, content_type="text/html",
                         headers={"Content-Security-Policy": csp, "X-Frame-Options": "DENY"})


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


def local_stats(deps: WebDeps) -> dict[str, Any]:
    reg = deps.registry
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
            "inflight": deps.inflight(), "open_stuck_alerts": sum(1 for _ in deps.open_alerts()), "workers": 1}


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


