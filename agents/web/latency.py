"""``GET /latency``: stage latency percentiles per channel across workers, from the
``funnel_stage_latency_seconds`` histogram (SPEC §10), for the dashboard.

Each worker reads its own histogram's cumulative buckets (``?local=1``); the one asked sums
every worker's buckets and estimates p50 and p95 the way Prometheus' ``histogram_quantile``
does (linear within the bucket the rank falls in; the highest finite bound when it falls in
``+Inf``). The histogram counts since each worker started; it has no period or tenant.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from prometheus_client import CollectorRegistry

from .deps import WebDeps
from .guard import error, json_response

METRIC = "funnel_stage_latency_seconds"
QUANTILES = (("p50_s", 0.5), ("p95_s", 0.95))
Buckets = dict[tuple[str, str, str], dict[float, float]]  # (channel, from, to) -> le -> cumulative count


def local_buckets(registry: CollectorRegistry) -> Buckets:
    out: Buckets = {}
    for family in registry.collect():
        if family.name != METRIC:
            continue
        for s in family.samples:
            if s.name == METRIC + "_bucket":
                key = (s.labels["channel"], s.labels["from_stage"], s.labels["to_stage"])
                out.setdefault(key, {})[float(s.labels["le"])] = s.value
    return out


def merge(parts: Iterable[Buckets]) -> Buckets:
    out: Buckets = {}
    for part in parts:
        for key, buckets in part.items():
            acc = out.setdefault(key, {})
            for le, n in buckets.items():
                acc[le] = acc.get(le, 0.0) + n
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile(q, ...)`` over cumulative ``le -> count`` buckets."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_n = 0.0, 0.0
    for le in bounds:
        n = buckets[le]
        if n >= rank:
            if math.isinf(le):
                return prev_le  # the highest finite bound
            if n == prev_n:
                return le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return None


def rows(buckets: Buckets) -> list[dict[str, Any]]:
    out = []
    for (channel, a, b), bk in sorted(buckets.items()):
        count = bk.get(math.inf, 0.0)
        if count <= 0:
            continue
        row: dict[str, Any] = {"channel": channel, "from_stage": a, "to_stage": b, "count": int(count)}
        for name, q in QUANTILES:
            row[name] = quantile(q, bk)
        out.append(row)
    return out


def _to_json(buckets: Buckets) -> list[list]:
    return [[*key, [[("+Inf" if math.isinf(le) else le), n] for le, n in sorted(bk.items())]]
            for key, bk in sorted(buckets.items())]


def _from_json(body: list[list]) -> Buckets:
    return {(c, a, b): {(math.inf if le == "+Inf" else float(le)): float(n) for le, n in bk} for c, a, b, bk in body}


class LatencyView:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps

    async def view_latency(self, web: Any, request: Any) -> Any:
        mine = local_buckets(self.deps.registry)
        if request.query.get("local") == "1":
            return json_response(web, {"buckets": _to_json(mine), "partial": True})
        try:
            parts = [mine] + [_from_json(body["buckets"]) for body in await self.deps.peers.gather("/latency", {})]
        except Exception as exc:  # noqa: BLE001
            return error(web, 503, f"latency incomplete: {exc}")
        return json_response(web, {"latency": rows(merge(parts))})
