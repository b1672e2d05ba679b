"""``/health/live`` and ``/health/ready``.

Liveness turns 503 as soon as an agent task has raised (faust issues #175/#523: the process
lives on, the supervisor quietly starts a new actor that continues *after* the record that
crashed it, so that record is neither applied nor dead-lettered and its offset gets
committed - data lost without a trace but this probe and the log). The 503 is sticky until
the process restarts: a crash is a bug to look at, and the orchestrator's restart count
makes it visible. It is also 503 when an agent's supervisor is gone or an actor stays dead
longer than :data:`DEAD_ACTOR_GRACE_S`.

Readiness needs the derived state built, the consumer and fetcher running, table recovery
completed and no rebalance in progress; it lists the lag of every assigned partition.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from streams.timeparse import format_ts_us

from .. import faust_compat
from ..clock import now_us
from .deps import WebDeps
from .guard import json_response

log = logging.getLogger("funnelwatch.web")

DEAD_ACTOR_GRACE_S = 5.0  # an actor dead longer than this (not replaced by its supervisor) = not live


class Health:
    """Agent crash records (kept from the app's agent-error hook) and the two probes."""

    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self.crashes: list[dict[str, str]] = []  # last few agent crashes (no exception text: may hold data)
        self.crash_count = 0
        self.dead_since: dict[int, float] = {}
        deps.app.agent_error_hooks.append(self.on_agent_error)

    async def on_agent_error(self, agent: Any, exc: BaseException) -> None:
        """Runs before faust restarts the crashed actor."""
        self.crash_count += 1
        self.crashes.append({"agent": agent.name, "error": type(exc).__name__, "at": format_ts_us(now_us())})
        del self.crashes[:-10]
        log.error("agent %s crashed (%s): /health/live now answers 503; restart the worker",
                  agent.name, type(exc).__name__)

    def liveness(self) -> dict[str, Any]:
        """Agent-level liveness (faust keeps the process up when agents die)."""
        app = self.deps.app
        problems: list[str] = []
        crashed = {c["agent"] for c in self.crashes}
        crashed |= {a.name for a in app.agents.values()
                    if any(getattr(act, "crashed", False) for act in faust_compat.agent_actors(a))
                    or getattr(a, "crashed", False)}
        for name in sorted(crashed):
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
            for aref in faust_compat.supervised_actors(sup):
                task = getattr(aref, "actor_task", None)
                dead = bool(getattr(aref, "crashed", False)) or (task is not None and task.done())
                key = id(aref)
                seen.add(key)
                if not dead:
                    self.dead_since.pop(key, None)
                    continue
                since = self.dead_since.setdefault(key, now)
                if now - since > DEAD_ACTOR_GRACE_S:
                    problems.append(f"agent {agent.name}: an actor has been dead for {now - since:.0f} s")
        for key in list(self.dead_since):
            if key not in seen:
                del self.dead_since[key]
        return {"live": not problems, "crashed_agents": sorted(crashed), "problems": problems,
                "agent_crashes": self.crash_count, "last_crashes": list(self.crashes)}

    def readiness(self) -> dict[str, Any]:
        app = self.deps.app
        problems: list[str] = []
        consumer = app.consumer
        consumer_running = _running(consumer) and _running(faust_compat.consumer_thread(consumer))
        fetcher_running = _running(faust_compat.fetcher(app))
        recovery = app.tables.recovery
        in_recovery = bool(getattr(app, "in_recovery", False))
        recovered = recovery.completed.is_set() and not in_recovery
        rebalancing = bool(getattr(app, "rebalancing", False))
        derived = self.deps.ready()
        if not derived:
            problems.append("derived state not built (rebalancing or recovering)")
        if not consumer_running:
            problems.append("consumer not running")
        if not fetcher_running:
            problems.append("fetcher not running")
        if not recovered:
            problems.append("assigned table partitions not recovered yet")
        if rebalancing:
            problems.append("rebalancing")
        return {"ready": not problems, "derived_state_ready": derived, "in_recovery": in_recovery,
                "lag": self.deps.lags(), "problems": problems, "consumer_running": consumer_running,
                "fetcher_running": fetcher_running, "partitions_recovered": recovered, "rebalancing": rebalancing,
                "assigned_partitions": len(consumer.assignment()) if consumer_running else 0}

    async def view_live(self, web: Any, request: Any) -> Any:
        body = self.liveness()
        return json_response(web, body, status=200 if body["live"] else 503)

    async def view_ready(self, web: Any, request: Any) -> Any:
        body = self.readiness()
        return json_response(web, body, status=200 if body["ready"] else 503)


def _running(service: Any) -> bool:
    return (service is not None and bool(getattr(service, "started", False))
            and not getattr(service, "crashed", False) and not getattr(service, "should_stop", False))
