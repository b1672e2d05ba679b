"""Prometheus metrics for funnelwatch (SPEC §10), on an injected registry.

The names and labels below are part of the contract (dashboards and
``deploy/prometheus/alerts.yml`` use them); prometheus_client appends ``_total`` to
counters, so ``Counter("funnel_events", ...)`` is exposed as ``funnel_events_total``.

Exposed series:

=======================================  ===========================================
``funnel_events_total``                  ``{source, kind}`` (unknown kinds as ``other``)
``funnel_events_rejected_total``         ``{source, reason}``
``funnel_events_ignored_total``          ``{source, reason}``
``funnel_duplicates_total``              ``{source}``
``funnel_stage_reached_total``           ``{source, tenant, channel, stage}``
``funnel_engagement_total``              ``{source, tenant, channel, type}`` (``open``/``click``)
``funnel_stage_latency_seconds``         histogram ``{channel, from_stage, to_stage}``
``funnel_stuck_messages``                gauge ``{tenant, channel, stage}``
``funnel_alerts_total``                  ``{type}``
``funnel_alerts_suppressed_total``       no labels
``funnel_inflight_messages``             gauge, no labels
``funnel_out_of_order_total``            no labels
``funnel_conflicting_outcomes_total``    no labels
``funnel_late_events_total``             no labels
``funnel_label_overflow_total``          ``{metric}``: observations whose tenant was
                                         reported as ``other``, by exposed metric name
``funnelwatch_build_info``               gauge ``{version}`` = 1
=======================================  ===========================================

Counters are per worker process and count what *this worker* observed:
``funnel_stage_reached_total`` counts messages reaching a stage for the first time as
observed by this worker (a counter can never go down, so a later "move" of a message to
another window or channel label is not reflected here; the exact, order-independent
funnel is the ``/funnel`` view / replay report).  Use ``rate()``/``increase()``.

Tenant cardinality is bounded: one :class:`TenantLabeler` per :class:`Metrics` admits the
first ``max_tenants_label`` distinct tenants (in order of first observation); every other
tenant is reported as ``other`` and each such observation increments
``funnel_label_overflow_total{metric=...}`` (``metric`` = the exposed metric name, e.g.
``funnel_stage_reached_total``).  A tenant whose id is literally ``other`` shares that
series.

Hot path: label children are cached in dicts keyed by the (mapped) label tuple, so an
update after the first one for a label set never calls ``.labels()``.  The caches are
bounded because every label value is bounded (tenants by the labeler, the rest by the
caller's fixed vocabularies).

This module must not import faust.
"""

from __future__ import annotations

from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from .metrics_labels import OTHER, TenantLabeler
from .metrics_render import metric_names, render, sample_value

# prometheus-client's `*_created` companion series (a third of our samples) carry nothing a
# dashboard or rule uses: off for the process.
disable_created_metrics()

__all__ = [
    "LATENCY_BUCKETS_S",
    "OTHER",
    "Metrics",
    "TenantLabeler",
    "metric_names",
    "render",
    "sample_value",
]

#: Stage-latency histogram buckets, 0.1 s … 1 day.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900,
    1800, 3600, 7200, 14400, 28800, 43200, 86400,
)  # fmt: skip


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("funnelwatch")
        except PackageNotFoundError:
            return "0+unknown"
    except Exception:  # pragma: no cover - very old/odd environments
        return "0+unknown"


def _child(cache: dict, metric: Any, key: tuple[str, ...]) -> Any:
    """The cached label child of ``metric`` for ``key`` (``.labels()`` runs once per key)."""
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*key)
    return child


class Metrics:
    """The SPEC §10 metric bundle, registered on ``registry``.

    Build one per process (or per test, with a fresh ``CollectorRegistry()``);
    registering twice on the same registry raises ``ValueError`` (duplicate timeseries).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        max_tenants_label: int = 50,
        *,
        version: str | None = None,
        funnel_collector: Any = None,
    ) -> None:
        self.registry = registry
        r = registry

        self.events_total = Counter(
            "funnel_events", "Input events by source and kind/event_type (unknown kinds as 'other').",
            ("source", "kind"), registry=r,
        )
        self.events_rejected_total = Counter(
            "funnel_events_rejected", "Input records sent to the dead-letter topic, by reason.",
            ("source", "reason"), registry=r,
        )
        self.events_ignored_total = Counter(
            "funnel_events_ignored", "Input events deliberately ignored (e.g. test_event), by reason.",
            ("source", "reason"), registry=r,
        )
        self.duplicates_total = Counter(
            "funnel_duplicates", "Events identical to an already applied event (no effect).",
            ("source",), registry=r,
        )
        # The live pipeline derives these two from its funnel share (exact, order-independent):
        # it passes a collector that exposes them instead of plain counters.
        if funnel_collector is not None:
            r.register(funnel_collector)
            self.stage_reached_total = self.engagement_total = None
        else:
            self.stage_reached_total = Counter(
                "funnel_stage_reached",
                "Messages reaching a stage (implied stages included), first observed by this worker.",
                ("source", "tenant", "channel", "stage"), registry=r,
            )
            self.engagement_total = Counter(
                "funnel_engagement", "Total opens/clicks (type=open|click), not unique per message.",
                ("source", "tenant", "channel", "type"), registry=r,
            )
        self.stage_latency_seconds = Histogram(
            "funnel_stage_latency_seconds", "Time between a message's stages (event timestamps).",
            ("channel", "from_stage", "to_stage"), buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.stuck_messages = Gauge(
            "funnel_stuck_messages", "Messages currently stuck past their SLA, by stage.",
            ("tenant", "channel", "stage"), registry=r,
        )
        self.alerts_total = Counter(
            "funnel_alerts", "Alert records emitted, by type (stuck, resolved, campaign_error).",
            ("type",), registry=r,
        )
        self.alerts_suppressed_total = Counter(
            "funnel_alerts_suppressed",
            "Stuck alerts held back (partition lagging over alert_max_lag or recovering).",
            registry=r,
        )
        self.inflight_messages = Gauge(
            "funnel_inflight_messages", "Live message states held by this worker.", registry=r,
        )
        self.out_of_order_total = Counter(
            "funnel_out_of_order", "Events older than an event already applied to the same message.",
            registry=r,
        )
        self.conflicting_outcomes_total = Counter(
            "funnel_conflicting_outcomes", "Messages with both delivery evidence and a failure event.",
            registry=r,
        )
        self.late_events_total = Counter(
            "funnel_late_events",
            "Events that moved a message to an earlier window or a new channel label.",
            registry=r,
        )
        self.gaps_repaired_total = Counter(
            "funnel_offset_gaps_repaired",
            "Times a partition jumped past unprocessed records and was re-read (faust skip), by topic.",
            ("topic",), registry=r,
        )
        self.gaps_accepted_total = Counter(
            "funnel_offset_gaps_accepted",
            "Offset ranges the broker does not have (seen again after re-reads: transaction markers, "
            "retention), moved past, by topic.",
            ("topic",), registry=r,
        )
        self.alert_marks_reconciled_total = Counter(
            "funnel_alert_marks_reconciled",
            "Alert marks taken from the alerts topic after a takeover (alert acked, its mark lost), by type.",
            ("type",), registry=r,
        )
        self.alert_reconcile_failures_total = Counter(
            "funnel_alert_reconcile_failures",
            "Takeovers whose alerts-topic read failed or timed out (alerts may repeat, none is lost).",
            registry=r,
        )
        self.label_overflow_total = Counter(
            "funnel_label_overflow",
            "Observations whose tenant label was reported as 'other' (cardinality cap), by metric.",
            ("metric",), registry=r,
        )
        self.build_info = Gauge(
            "funnelwatch_build_info", "funnelwatch build information (always 1).",
            ("version",), registry=r,
        )
        self.build_info.labels(version or _package_version()).set(1)

        # label tuple -> child caches (hot path: no .labels() after the first use)
        self._c_events: dict[tuple[str, str], Any] = {}
        self._c_rejected: dict[tuple[str, str], Any] = {}
        self._c_ignored: dict[tuple[str, str], Any] = {}
        self._c_duplicates: dict[tuple[str], Any] = {}
        self._c_stage: dict[tuple[str, str, str, str], Any] = {}
        self._c_engagement: dict[tuple[str, str, str, str], Any] = {}
        self._c_latency: dict[tuple[str, str, str], Any] = {}
        self._c_stuck: dict[tuple[str, str, str], Any] = {}
        self._c_alerts: dict[str, Any] = {}
        self._c_overflow: dict[str, Any] = {}
        # Per real (tenant, channel, stage) stuck value for tenants reported as "other",
        # so that set() on one of them adjusts the shared "other" series by the delta.
        self._stuck_other: dict[tuple[str, str, str], float] = {}

        self.tenants = TenantLabeler(max_tenants_label, self._overflowed)

    # ------------------------------------------------------------------ internals
    def _overflowed(self, metric: str) -> None:
        child = self._c_overflow.get(metric)
        if child is None:
            child = self._c_overflow[metric] = self.label_overflow_total.labels(metric)
        child.inc()

    @staticmethod
    def _check_n(n: float) -> None:
        if n < 0:
            raise ValueError("counters only go up: n must be >= 0")

    # ------------------------------------------------------------------ input
    def event(self, source: str, kind: str, known: bool) -> None:
        """One input event; ``known=False`` records it under ``kind="other"``."""
        _child(self._c_events, self.events_total, (source, kind if known else OTHER)).inc()

    def events(self, counts: dict[tuple[str, str], int]) -> None:
        """A batch's lifecycle events: ``(source, kind)`` -> how many (all known kinds)."""
        cache, metric = self._c_events, self.events_total
        for key, n in counts.items():
            _child(cache, metric, key).inc(n)

    def rejected(self, source: str, reason: str) -> None:
        _child(self._c_rejected, self.events_rejected_total, (source, reason)).inc()

    def ignored(self, source: str, reason: str) -> None:
        _child(self._c_ignored, self.events_ignored_total, (source, reason)).inc()

    def duplicate(self, source: str) -> None:
        _child(self._c_duplicates, self.duplicates_total, (source,)).inc()

    # ------------------------------------------------------------------ funnel
    def stage_reached(self, source: str, tenant: str, channel: str, stage: str, n: int = 1) -> None:
        """``n`` (>= 0) messages reached ``stage`` for the first time (as seen by this worker).

        Includes ``stage="failed"`` for messages whose outcome is failed.
        """
        self._check_n(n)
        key = (source, self.tenants.label(tenant, "funnel_stage_reached_total"), channel, stage)
        child = self._c_stage.get(key)
        if child is None:
            child = self._c_stage[key] = self.stage_reached_total.labels(*key)
        child.inc(n)

    def engagement(self, source: str, tenant: str, channel: str, type: str, n: int = 1) -> None:
        """``n`` (>= 0) total opens (``type="open"``) or clicks (``type="click"``)."""
        self._check_n(n)
        key = (source, self.tenants.label(tenant, "funnel_engagement_total"), channel, type)
        child = self._c_engagement.get(key)
        if child is None:
            child = self._c_engagement[key] = self.engagement_total.labels(*key)
        child.inc(n)

    def latency(self, channel: str, from_stage: str, to_stage: str, seconds: float) -> None:
        """Observe a stage-to-stage latency; negative values (clock skew) count as 0."""
        key = (channel, from_stage, to_stage)
        child = self._c_latency.get(key)
        if child is None:
            child = self._c_latency[key] = self.stage_latency_seconds.labels(*key)
        child.observe(seconds if seconds > 0 else 0.0)

    # ------------------------------------------------------------------ stuck / alerts
    def _stuck_child(self, label: str, channel: str, stage: str) -> Any:
        key = (label, channel, stage)
        child = self._c_stuck.get(key)
        if child is None:
            child = self._c_stuck[key] = self.stuck_messages.labels(*key)
        return child

    def _stuck_other_delta(self, tenant: str, channel: str, stage: str, new: float) -> float:
        key = (tenant, channel, stage)
        old = self._stuck_other.get(key, 0.0)
        if new:
            self._stuck_other[key] = new
        else:
            self._stuck_other.pop(key, None)
        return new - old

    def stuck_set(self, tenant: str, channel: str, stage: str, value: float) -> None:
        """Set the number of stuck messages for (tenant, channel, stage).

        For tenants reported as ``other`` the shared series holds the sum over them.
        """
        label = self.tenants.label(tenant, "funnel_stuck_messages")
        child = self._stuck_child(label, channel, stage)
        if label == OTHER:
            child.inc(self._stuck_other_delta(tenant, channel, stage, value))
        else:
            child.set(value)

    def stuck_inc(self, tenant: str, channel: str, stage: str, n: float = 1) -> None:
        label = self.tenants.label(tenant, "funnel_stuck_messages")
        if label == OTHER:
            key = (tenant, channel, stage)
            self._stuck_other_delta(tenant, channel, stage, self._stuck_other.get(key, 0.0) + n)
        self._stuck_child(label, channel, stage).inc(n)

    def stuck_dec(self, tenant: str, channel: str, stage: str, n: float = 1) -> None:
        self.stuck_inc(tenant, channel, stage, -n)

    def stuck_snapshot(self, counts: Mapping[tuple[str, str, str], float]) -> None:
        """Replace all stuck gauges with ``counts`` ((tenant, channel, stage) -> n);
        series not in ``counts`` are set to 0.  For periodic full recomputes."""
        totals: dict[tuple[str, str, str], float] = {}
        self._stuck_other.clear()
        for (tenant, channel, stage), value in counts.items():
            label = self.tenants.label(tenant, "funnel_stuck_messages")
            key = (label, channel, stage)
            totals[key] = totals.get(key, 0.0) + value
            if label == OTHER and value:
                self._stuck_other[(tenant, channel, stage)] = value
        for key in set(self._c_stuck) | set(totals):
            self._stuck_child(*key).set(totals.get(key, 0.0))

    def alert(self, type: str) -> None:
        """One alert record emitted (``stuck``, ``resolved``, ``campaign_error``)."""
        child = self._c_alerts.get(type)
        if child is None:
            child = self._c_alerts[type] = self.alerts_total.labels(type)
        child.inc()

    def alert_suppressed(self, n: int = 1) -> None:
        self.alerts_suppressed_total.inc(n)

    # ------------------------------------------------------------------ misc
    def inflight_set(self, n: float) -> None:
        self.inflight_messages.set(n)

    def out_of_order(self) -> None:
        self.out_of_order_total.inc()

    def conflicting_outcome(self) -> None:
        self.conflicting_outcomes_total.inc()

    def gap_repaired(self, topic: str) -> None:
        self.gaps_repaired_total.labels(topic).inc()

    def gap_accepted(self, topic: str) -> None:
        self.gaps_accepted_total.labels(topic).inc()

    def alert_marks_reconciled(self, alert_type: str, n: int = 1) -> None:
        self.alert_marks_reconciled_total.labels(alert_type).inc(n)

    def alert_reconcile_failed(self) -> None:
        self.alert_reconcile_failures_total.inc()

    def late_event(self) -> None:
        self.late_events_total.inc()
