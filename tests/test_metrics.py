"""Unit tests for agents.metrics: SPEC §10 names, tenant cap, cached children."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import LATENCY_BUCKETS_S, OTHER, Metrics, TenantLabeler, render

# SPEC §10: exposed family name -> (type, label names)
SPEC_METRICS: dict[str, tuple[str, set[str]]] = {
    "funnel_events_total": ("counter", {"source", "kind"}),
    "funnel_events_rejected_total": ("counter", {"source", "reason"}),
    "funnel_events_ignored_total": ("counter", {"source", "reason"}),
    "funnel_duplicates_total": ("counter", {"source"}),
    "funnel_stage_reached_total": ("counter", {"source", "tenant", "channel", "stage"}),
    "funnel_engagement_total": ("counter", {"source", "tenant", "channel", "type"}),
    "funnel_stage_latency_seconds": ("histogram", {"channel", "from_stage", "to_stage"}),
    "funnel_stuck_messages": ("gauge", {"tenant", "channel", "stage"}),
    "funnel_alerts_total": ("counter", {"type"}),
    "funnel_alerts_suppressed_total": ("counter", set()),
    "funnel_inflight_messages": ("gauge", set()),
    "funnel_out_of_order_total": ("counter", set()),
    "funnel_conflicting_outcomes_total": ("counter", set()),
    "funnel_late_events_total": ("counter", set()),
    "funnel_label_overflow_total": ("counter", {"metric"}),
    "funnelwatch_build_info": ("gauge", {"version"}),
    # Beyond SPEC §10: the pipeline's re-read of records faust skipped (agents/pipeline.py).
    "funnel_offset_gaps_repaired_total": ("counter", {"topic"}),
    "funnel_offset_gaps_accepted_total": ("counter", {"topic"}),
    # ... and its re-read of the alerts topic after a takeover (lost alert marks).
    "funnel_alert_marks_reconciled_total": ("counter", {"type"}),
    "funnel_alert_reconcile_failures_total": ("counter", set()),
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry) -> Metrics:
    return Metrics(registry, max_tenants_label=1, version="test")


def exercise_all(m: Metrics) -> None:
    m.event("activity_sync", "message-sent", True)
    m.rejected("activity_sync", "schema")
    m.ignored("altcraft", "test_event")
    m.duplicate("altcraft")
    m.stage_reached("altcraft", "t1", "email", "sent")
    m.engagement("altcraft", "t1", "email", "open")
    m.latency("email", "sent", "delivered", 12.5)
    m.stuck_set("t1", "email", "sent", 2)
    m.alert("stuck")
    m.alert_suppressed()
    m.alert_marks_reconciled("stuck", 2)
    m.alert_reconcile_failed()
    m.inflight_set(3)
    m.out_of_order()
    m.conflicting_outcome()
    m.late_event()
    m.gap_repaired("activity-sync-events")
    m.gap_accepted("activity-sync-events")
    # over the cap of the `metrics` fixture: gives funnel_label_overflow_total a sample
    m.stage_reached("altcraft", "t2", "email", "sent")


def exposed(registry: CollectorRegistry) -> str:
    body, content_type = render(registry)
    assert body == generate_latest(registry)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return body.decode()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ------------------------------------------------------------------------------- names
def test_exposed_names_types_and_labels_match_spec(registry, metrics):
    exercise_all(metrics)
    text = exposed(registry)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    for name, (kind, _) in SPEC_METRICS.items():
        assert types.get(name) == kind, (name, types.get(name))
    # nothing else but prometheus_client's own *_created companions
    extra = {n for n in types if n not in SPEC_METRICS and not n.endswith("_created")}
    assert not extra, extra

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (_, labels) in SPEC_METRICS.items():
        family = families[name.removesuffix("_total")]
        main = [s for s in family.samples if not s.name.endswith("_created")]
        assert main, name
        for s in main:
            got = set(s.labels) - {"le"}
            assert got == labels, (name, got)


def test_unlabelled_series_exposed_at_zero(registry, metrics):
    text = exposed(registry)
    for name in (
        "funnel_alerts_suppressed_total",
        "funnel_inflight_messages",
        "funnel_out_of_order_total",
        "funnel_conflicting_outcomes_total",
        "funnel_late_events_total",
    ):
        assert re.search(rf"^{name} 0\.0$", text, flags=re.M), name
    assert sample(registry, "funnelwatch_build_info", version="test") == 1


def test_values(registry, metrics):
    exercise_all(metrics)
    assert sample(registry, "funnel_events_total", source="activity_sync", kind="message-sent") == 1
    assert sample(registry, "funnel_events_rejected_total", source="activity_sync", reason="schema") == 1
    assert sample(registry, "funnel_events_ignored_total", source="altcraft", reason="test_event") == 1
    assert sample(registry, "funnel_duplicates_total", source="altcraft") == 1
    assert sample(registry, "funnel_stage_reached_total", source="altcraft", tenant="t1",
                  channel="email", stage="sent") == 1
    assert sample(registry, "funnel_engagement_total", source="altcraft", tenant="t1",
                  channel="email", type="open") == 1
    lat = dict(channel="email", from_stage="sent", to_stage="delivered")
    assert sample(registry, "funnel_stage_latency_seconds_count", **lat) == 1
    assert sample(registry, "funnel_stage_latency_seconds_sum", **lat) == 12.5
    assert sample(registry, "funnel_stuck_messages", tenant="t1", channel="email", stage="sent") == 2
    assert sample(registry, "funnel_alerts_total", type="stuck") == 1
    assert sample(registry, "funnel_alerts_suppressed_total") == 1
    assert sample(registry, "funnel_inflight_messages") == 3
    assert sample(registry, "funnel_out_of_order_total") == 1
    assert sample(registry, "funnel_conflicting_outcomes_total") == 1
    assert sample(registry, "funnel_late_events_total") == 1
    assert sample(registry, "funnel_label_overflow_total", metric="funnel_stage_reached_total") == 1


def test_unknown_kind_recorded_as_other(registry, metrics):
    metrics.event("altcraft", "brand_new_type", False)
    metrics.event("altcraft", "another_new_type", False)
    metrics.event("altcraft", "send", True)
    assert sample(registry, "funnel_events_total", source="altcraft", kind="other") == 2
    assert sample(registry, "funnel_events_total", source="altcraft", kind="brand_new_type") is None
    assert sample(registry, "funnel_events_total", source="altcraft", kind="send") == 1


def test_latency_buckets_and_clamp(registry, metrics):
    assert LATENCY_BUCKETS_S[0] == 0.1 and LATENCY_BUCKETS_S[-1] == 86400
    assert list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S)
    metrics.latency("sms", "queued", "sent", -5)  # clock skew: counted as 0
    metrics.latency("sms", "queued", "sent", 90000)  # over a day: +Inf bucket only
    lab = dict(channel="sms", from_stage="queued", to_stage="sent")
    assert sample(registry, "funnel_stage_latency_seconds_sum", **lab) == 90000
    assert sample(registry, "funnel_stage_latency_seconds_bucket", le="0.1", **lab) == 1
    assert sample(registry, "funnel_stage_latency_seconds_bucket", le="86400.0", **lab) == 1
    assert sample(registry, "funnel_stage_latency_seconds_bucket", le="+Inf", **lab) == 2


def test_counters_refuse_negative(metrics):
    with pytest.raises(ValueError):
        metrics.stage_reached("altcraft", "t", "email", "sent", n=-1)
    with pytest.raises(ValueError):
        metrics.engagement("altcraft", "t", "email", "click", n=-1)


def test_stage_reached_n(registry, metrics):
    metrics.stage_reached("activity_sync", "t", "sms", "failed", n=3)
    metrics.stage_reached("activity_sync", "t", "sms", "failed")
    assert sample(registry, "funnel_stage_reached_total", source="activity_sync", tenant="t",
                  channel="sms", stage="failed") == 4


def test_fresh_registries_are_independent():
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    m1, _ = Metrics(r1), Metrics(r2)
    m1.duplicate("altcraft")
    assert r1.get_sample_value("funnel_duplicates_total", {"source": "altcraft"}) == 1
    assert r2.get_sample_value("funnel_duplicates_total", {"source": "altcraft"}) is None
    with pytest.raises(ValueError):
        Metrics(r1)  # same names twice on one registry


def test_render_openmetrics(registry, metrics):
    metrics.alert("resolved")
    body, content_type = render(registry, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b'funnel_alerts_total{type="resolved"} 1.0' in body
    body, content_type = render(registry, accept="text/plain")
    assert content_type.startswith("text/plain") and body == generate_latest(registry)


# ------------------------------------------------------------------------- tenant cap
def tenant_values(registry: CollectorRegistry, family: str) -> set[str]:
    return {
        s.labels["tenant"]
        for f in registry.collect()
        if f.name == family
        for s in f.samples
        if "tenant" in s.labels and not s.name.endswith("_created")
    }


def test_tenant_cap(registry):
    m = Metrics(registry, max_tenants_label=3)
    tenants = [f"tenant-{i}" for i in range(10)]
    for t in tenants:
        m.stage_reached("altcraft", t, "email", "sent")
        m.engagement("altcraft", t, "email", "click")
    for family in ("funnel_stage_reached", "funnel_engagement"):
        values = tenant_values(registry, family)
        assert values == {"tenant-0", "tenant-1", "tenant-2", OTHER}
    assert sample(registry, "funnel_stage_reached_total", source="altcraft", tenant=OTHER,
                  channel="email", stage="sent") == 7
    assert sample(registry, "funnel_label_overflow_total", metric="funnel_stage_reached_total") == 7
    assert sample(registry, "funnel_label_overflow_total", metric="funnel_engagement_total") == 7
    # admitted tenants keep their own series; totals are preserved
    m.stage_reached("altcraft", "tenant-1", "email", "sent")
    assert sample(registry, "funnel_stage_reached_total", source="altcraft", tenant="tenant-1",
                  channel="email", stage="sent") == 2
    total = sum(
        s.value for f in registry.collect() if f.name == "funnel_stage_reached"
        for s in f.samples if s.name == "funnel_stage_reached_total"
    )
    assert total == 11


def test_tenant_cap_is_shared_across_metrics(registry):
    m = Metrics(registry, max_tenants_label=2)
    m.stage_reached("altcraft", "a", "email", "sent")
    m.stuck_set("b", "sms", "queued", 1)
    m.engagement("altcraft", "c", "email", "open")
    assert m.tenants.admitted == {"a", "b"}
    assert tenant_values(registry, "funnel_engagement") == {OTHER}
    assert tenant_values(registry, "funnel_stuck_messages") == {"b"}


def test_tenant_cap_zero_maps_everything_to_other(registry):
    m = Metrics(registry, max_tenants_label=0)
    m.stage_reached("altcraft", "a", "email", "sent")
    assert tenant_values(registry, "funnel_stage_reached") == {OTHER}


def test_labeler_standalone():
    seen: list[str] = []
    lab = TenantLabeler(2, seen.append)
    assert [lab("x", "m"), lab("y", "m"), lab("z", "m"), lab("x", "m")] == ["x", "y", OTHER, "x"]
    assert seen == ["m"]
    assert lab.is_overflowing("q") and not lab.is_overflowing("x")
    with pytest.raises(ValueError):
        TenantLabeler(-1)


def test_labeler_admit_respects_cap_without_counting_overflow(registry):
    m = Metrics(registry, max_tenants_label=2)
    assert [m.tenants.admit(t) for t in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]
    assert m.tenants.admitted == {"a", "b"}
    assert sample(registry, "funnel_label_overflow_total", metric="") is None
    assert not any(
        s.name == "funnel_label_overflow_total" for f in registry.collect() for s in f.samples
    )
    # the cap is shared with the metric methods
    m.stage_reached("altcraft", "c", "email", "sent")
    assert tenant_values(registry, "funnel_stage_reached") == {OTHER}


def test_stuck_gauge_other_is_sum_of_overflowing_tenants(registry):
    m = Metrics(registry, max_tenants_label=1)
    m.stuck_set("a", "sms", "queued", 5)
    m.stuck_set("b", "sms", "queued", 3)
    m.stuck_set("c", "sms", "queued", 2)
    other = dict(tenant=OTHER, channel="sms", stage="queued")
    assert sample(registry, "funnel_stuck_messages", **other) == 5
    m.stuck_set("b", "sms", "queued", 1)  # set, not add
    assert sample(registry, "funnel_stuck_messages", **other) == 3
    m.stuck_inc("c", "sms", "queued")
    m.stuck_dec("b", "sms", "queued")
    assert sample(registry, "funnel_stuck_messages", **other) == 3
    m.stuck_set("c", "sms", "queued", 0)
    assert sample(registry, "funnel_stuck_messages", **other) == 0
    assert sample(registry, "funnel_stuck_messages", tenant="a", channel="sms", stage="queued") == 5


def test_stuck_snapshot_replaces_everything(registry):
    m = Metrics(registry, max_tenants_label=1)
    m.stuck_set("a", "email", "sent", 4)
    m.stuck_set("b", "email", "sent", 4)
    m.stuck_snapshot({("a", "sms", "queued"): 1, ("b", "sms", "queued"): 2, ("c", "sms", "queued"): 3})
    assert sample(registry, "funnel_stuck_messages", tenant="a", channel="email", stage="sent") == 0
    assert sample(registry, "funnel_stuck_messages", tenant=OTHER, channel="email", stage="sent") == 0
    assert sample(registry, "funnel_stuck_messages", tenant="a", channel="sms", stage="queued") == 1
    assert sample(registry, "funnel_stuck_messages", tenant=OTHER, channel="sms", stage="queued") == 5
    m.stuck_set("b", "sms", "queued", 0)  # tracking continues after a snapshot
    assert sample(registry, "funnel_stuck_messages", tenant=OTHER, channel="sms", stage="queued") == 3


@hsettings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "inc", "dec"]),
            st.sampled_from(["a", "b", "c", "d", OTHER]),
            st.sampled_from(["sms", "email"]),
            st.integers(min_value=0, max_value=5),
        ),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=3),
)
def test_stuck_gauges_equal_per_label_sums(ops, cap):
    """Whatever the op sequence, each exposed stuck series = sum of its tenants' values."""
    registry = CollectorRegistry()
    m = Metrics(registry, max_tenants_label=cap)
    model: dict[tuple[str, str], int] = {}
    for op, tenant, channel, n in ops:
        key = (tenant, channel)
        if op == "set":
            m.stuck_set(tenant, channel, "sent", n)
            model[key] = n
        elif op == "inc":
            m.stuck_inc(tenant, channel, "sent", n)
            model[key] = model.get(key, 0) + n
        else:
            m.stuck_dec(tenant, channel, "sent", n)
            model[key] = model.get(key, 0) - n
    expected: dict[tuple[str, str], int] = {}
    for (tenant, channel), v in model.items():
        label = tenant if tenant in m.tenants.admitted else OTHER
        expected[(label, channel)] = expected.get((label, channel), 0) + v
    for (label, channel), v in expected.items():
        assert sample(registry, "funnel_stuck_messages", tenant=label, channel=channel, stage="sent") == v
    assert len(m.tenants.admitted) <= cap


# --------------------------------------------------------------------------- hot path
class CountingLabels:
    """Wraps a metric's ``.labels`` and counts calls."""

    def __init__(self, metric):
        self.metric = metric
        self.original = metric.labels
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.mark.parametrize(
    "attr, call",
    [
        ("events_total", lambda m: m.event("altcraft", "send", True)),
        ("events_rejected_total", lambda m: m.rejected("altcraft", "schema")),
        ("events_ignored_total", lambda m: m.ignored("altcraft", "test_event")),
        ("duplicates_total", lambda m: m.duplicate("altcraft")),
        ("stage_reached_total", lambda m: m.stage_reached("altcraft", "t", "email", "sent")),
        ("engagement_total", lambda m: m.engagement("altcraft", "t", "email", "open")),
        ("stage_latency_seconds", lambda m: m.latency("email", "sent", "delivered", 1.0)),
        ("stuck_messages", lambda m: m.stuck_set("t", "email", "sent", 1)),
        ("stuck_messages", lambda m: m.stuck_inc("t", "email", "sent")),
        ("alerts_total", lambda m: m.alert("stuck")),
    ],
)
def test_children_cached(monkeypatch, metrics, attr, call):
    counter = CountingLabels(getattr(metrics, attr))
    monkeypatch.setattr(getattr(metrics, attr), "labels", counter)
    for _ in range(5):
        call(metrics)
    assert counter.calls == 1


def test_overflow_children_cached(monkeypatch, registry):
    m = Metrics(registry, max_tenants_label=0)
    counter = CountingLabels(m.label_overflow_total)
    monkeypatch.setattr(m.label_overflow_total, "labels", counter)
    stage = CountingLabels(m.stage_reached_total)
    monkeypatch.setattr(m.stage_reached_total, "labels", stage)
    for i in range(20):
        m.stage_reached("altcraft", f"t{i}", "email", "sent")
    assert counter.calls == 1 and stage.calls == 1
    assert len(m._c_stage) == 1  # cache keyed by mapped labels: bounded


def test_no_created_series() -> None:
    """prometheus-client's ``*_created`` companions are off (they were 18 of 61 samples)."""
    reg = CollectorRegistry()
    m = Metrics(reg, 5)
    m.event("activity_sync", "outbound-sms", True)
    m.alert("stuck")
    m.latency("sms", "queued", "sent", 1.5)
    body, _ = render(reg, None)
    assert b"_created" not in body
