"""The worker's web views, registered on the faust app's web server by :func:`register`.

=====================================================  =======================================
``GET /``                                              dashboard (one HTML page, no external
                                                       resources; ``agents/static/``)
``GET /funnel?tenant=&channel=&from=&to=``             SPEC §9 rows, complete across workers
``GET /funnel?by=campaign&...&campaign=``              SPEC §11 campaign rows, across workers
``GET /latency``                                       stage latency p50/p95 per channel
``GET /alerts?tenant=&channel=&stage=&limit=&offset=`` open stuck alerts across workers
``GET /messages/{source}/{tenant}/{message_id}``       one message's lifecycle (JSON), answered
``GET /messages?source=&tenant=&id=``                  by the worker owning its table partition
``GET /stats``                                         dead-letter / ignored / duplicate counts
``GET /metrics``                                       Prometheus metrics (SPEC §10)
``GET /health/live``, ``GET /health/ready``            probes (``health.py``)
``POST /ingest/altcraft``                              Altcraft webhook ingress
=====================================================  =======================================

Views see the worker only through :class:`~agents.web.deps.WebDeps`; every view runs
behind :func:`~agents.web.guard.guard`.
"""
from __future__ import annotations

from typing import Any

from .deps import WebDeps
from .guard import Handler, guard
from .health import Health
from .ingress import Ingress
from .latency import LatencyView
from .messages import MessageViews
from .views import Views

__all__ = ["WebDeps", "register"]


def register(deps: WebDeps) -> Health:
    """Register every view on ``deps.app``; returns the health probes (they record agent crashes)."""
    views, health = Views(deps), Health(deps)
    messages, ingress = MessageViews(deps), Ingress(deps)
    page = _Pages(deps)
    page("/", views.view_dashboard)
    page("/funnel", views.view_funnel)
    page("/latency", LatencyView(deps).view_latency)
    page("/alerts", views.view_alerts)
    page("/stats", views.view_stats)
    page("/metrics", views.view_metrics)
    page("/health/live", health.view_live)
    page("/health/ready", health.view_ready)
    page("/messages", messages.view_message)
    page("/messages/{source}/{tenant}/{message_id}", messages.view_message)
    page("/ingest/altcraft", ingress.ingest_altcraft, methods=("POST",))
    return health


class _Pages:
    """Registers a handler ``(web, request)`` as a faust web view answering ``methods``."""

    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self._names: set[str] = set()

    def __call__(self, path: str, handler: Handler, methods: tuple[str, ...] = ("GET",)) -> None:
        from faust.web import View

        guarded = guard(self.deps.settings, path, handler)

        async def call(view: Any, request: Any, **_match_info: Any) -> Any:
            return await guarded(view, request)

        name = handler.__name__.removeprefix("view_")
        if name in self._names:
            name = f"{name}_{len(self._names)}"
        self._names.add(name)
        self.deps.app.page(path, name=name)(type(name, (View,), {m.lower(): call for m in methods}))
