"""``/latency``'s arithmetic (agents/web/latency.py), no broker: quantiles as Prometheus'
``histogram_quantile`` computes them, buckets merged across workers, the JSON round trip."""
from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from agents.metrics import Metrics
from agents.web.latency import _from_json, _to_json, local_buckets, merge, quantile, rows

INF = math.inf


@pytest.mark.parametrize("q,buckets,want", [
    (0.5, {1.0: 0, 2.0: 10, INF: 10}, 1.5),  # linear inside the bucket
    (0.95, {1.0: 0, 2.0: 10, INF: 10}, 1.95),
    (0.5, {1.0: 10, INF: 10}, 0.5),  # first bucket: from 0
    (0.5, {1.0: 0, 2.0: 0, INF: 4}, 2.0),  # in +Inf: the highest finite bound
    (0.5, {1.0: 2, 2.0: 2, 4.0: 4, INF: 4}, 1.0),
    (0.5, {1.0: 0, INF: 0}, None),  # nothing observed
    (0.5, {1.0: 3}, None),  # no +Inf bucket: not a histogram
    (0.5, {}, None),
])
def test_quantile_is_histogram_quantile(q, buckets, want):
    got = quantile(q, buckets)
    assert got == want if want is None else abs(got - want) < 1e-12


def test_rows_from_a_worker_registry_and_merged_across_workers():
    reg = CollectorRegistry()
    m = Metrics(reg, 50)
    for s in (0.2, 0.3, 4.0):
        m.latency("sms", "queued", "sent", s)
    m.latency("email", "sent", "delivered", 30.0)
    mine = local_buckets(reg)
    assert set(mine) == {("sms", "queued", "sent"), ("email", "sent", "delivered")}
    assert _from_json(_to_json(mine)) == mine
    both = merge([mine, mine])
    out = {(r["channel"], r["from_stage"], r["to_stage"]): r for r in rows(both)}
    assert out[("sms", "queued", "sent")]["count"] == 6
    assert out[("sms", "queued", "sent")]["p50_s"] == quantile(0.5, both[("sms", "queued", "sent")])
    assert rows(merge([])) == []
