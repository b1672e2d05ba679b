"""The worker's share of the funnel, derived from its lifecycle table (no faust import).

Design: the lifecycle table (message key → set of applied events) is the only persisted
state; it is idempotent (a redelivered event is a duplicate). The funnel rows this worker
holds are a pure function of the table's active partitions: updated incrementally with the
deltas the domain core returns, and rebuilt from the table after every rebalance or
restart. So at-least-once redelivery, crashes and partition moves can never double-count
or lose a message: the rows always equal Σ contribution(message) over the owned messages.
``/funnel`` merges the shares of all workers (scatter-gather).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from streams.kinds import STAGES
from streams.lifecycle import N_FIELDS, VECTOR_FIELDS, Delta, Summary
from streams.report import window_rows

def _add_into(out: dict, key: Any, vec: Iterable[int]) -> None:
    """``out[key] += vec`` element-wise (a new list when the key is new)."""
    acc = out.get(key)
    if acc is None:
        out[key] = list(vec)
    else:
        for i, x in enumerate(vec):
            acc[i] += x


# Internal row key carries the source too (metrics are labelled by source; /funnel sums it out),
# and the campaign (SPEC §11: /funnel?by=campaign; every other view sums it out).
SRow = tuple[int, str, str, str, "str | None"]  # (window_start_us, source, tenant, channel, campaign)
ANY_CAMPAIGN = _ANY = object()  # "no campaign filter" (None is a campaign value: no campaign)


class FunnelShare:
    """Funnel rows contributed by the messages this worker owns."""

    __slots__ = ("rows", "dirty", "touched")

    def __init__(self) -> None:
        self.rows: dict[SRow, list[int]] = {}
        self.dirty: set[tuple[int, str, str]] = set()
        # Row -> processing time of its last change: rows unchanged for `window_retention` are
        # dropped from views and from funnel-windows (SPEC §5), whatever their event time.
        self.touched: dict[tuple[int, str, str], int] = {}

    def clear(self) -> None:
        for (w, _src, tenant, ch, _c) in self.rows:
            self.dirty.add((w, tenant, ch))
        self.rows.clear()
        self.touched.clear()

    def apply(self, source: str, delta: Delta, now_us: int) -> None:
        rows = self.rows
        touched = self.touched
        for (w, tenant, ch, campaign), vec in delta:
            if touched.get((w, tenant, ch), -1) < now_us:
                touched[(w, tenant, ch)] = now_us
            k = (w, source, tenant, ch, campaign)
            acc = rows.get(k)
            if acc is None:
                acc = rows[k] = [0] * N_FIELDS
            for i, x in enumerate(vec):
                if x:
                    acc[i] += x
            if acc[0] == 0 and not any(acc):
                del rows[k]
            self.dirty.add((w, tenant, ch))

    def add_summary(self, tenant: str, s: Summary, window_us: int, touched_us: int) -> None:
        """Add one stored message's contribution (the rebuild's path: :meth:`apply` of its vector,
        without building a delta)."""
        w = s.entry_us // window_us * window_us
        ch = s.channel
        k = (w, s.source, tenant, ch, s.campaign)
        acc = self.rows.get(k)
        if acc is None:
            self.rows[k] = list(s.vector())
        else:
            for i, x in enumerate(s.vector()):
                if x:
                    acc[i] += x
        row = (w, tenant, ch)
        if self.touched.get(row, -1) < touched_us:
            self.touched[row] = touched_us
        self.dirty.add(row)

    def windows(self, *, tenant: str | None = None, channel: str | None = None,
                from_us: int | None = None, to_us: int | None = None,
                min_touched_us: int | None = None) -> dict[tuple[int, str, str], list[int]]:
        return self._select(tenant, channel, from_us, to_us, min_touched_us, _ANY, False)  # type: ignore[return-value]

    def campaigns(self, *, tenant: str | None = None, channel: str | None = None,
                  from_us: int | None = None, to_us: int | None = None, min_touched_us: int | None = None,
                  campaign: object = _ANY) -> dict[tuple[int, str, str, str | None], list[int]]:
        """Rows by ``(window_start_us, tenant, channel, campaign)`` (SPEC §11); ``campaign``
        filters on one campaign (None: the messages without one)."""
        return self._select(tenant, channel, from_us, to_us, min_touched_us, campaign, True)  # type: ignore[return-value]

    def _select(self, tenant: str | None, channel: str | None, from_us: int | None, to_us: int | None,
                min_touched_us: int | None, campaign: object, by_campaign: bool,
                touched: dict[tuple[int, str, str], int] | None = None,
                out: dict[tuple, list[int]] | None = None) -> dict[tuple, list[int]]:
        out = {} if out is None else out
        touched = self.touched if touched is None else touched
        for (w, _src, t, ch, c), vec in self.rows.items():
            if tenant is not None and t != tenant or channel is not None and ch != channel:
                continue
            if campaign is not _ANY and c != campaign:
                continue
            if min_touched_us is not None and touched.get((w, t, ch), 0) < min_touched_us:
                continue
            if from_us is not None and w < from_us or to_us is not None and w >= to_us:
                continue
            _add_into(out, (w, t, ch, c) if by_campaign else (w, t, ch), vec)
        return out

    def totals_by_label(self) -> dict[tuple[str, str, str], list[int]]:
        """Σ over windows per (source, tenant, channel): what the stage counters expose."""
        out: dict[tuple[str, str, str], list[int]] = {}
        for (_w, src, t, ch, _c), vec in self.rows.items():
            _add_into(out, (src, t, ch), vec)
        return out


class FunnelShares:
    """The funnel shares of the partitions this worker owns, one :class:`FunnelShare` each,
    seen as one share. A revoked partition's share is dropped whole (O(1)); a kept one is
    never rebuilt. Retention applies per row over all partitions (a row is kept when any
    partition changed it within ``window_retention``)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: dict[int, FunnelShare] = {}

    def part(self, partition: int) -> FunnelShare:
        share = self.parts.get(partition)
        if share is None:
            share = self.parts[partition] = FunnelShare()
        return share

    def drop(self, partition: int) -> None:
        self.parts.pop(partition, None)

    def _touched(self) -> dict[tuple[int, str, str], int] | None:
        if len(self.parts) == 1:
            return None
        out: dict[tuple[int, str, str], int] = {}
        for share in self.parts.values():
            for k, t in share.touched.items():
                if out.get(k, -1) < t:
                    out[k] = t
        return out

    def _select(self, by_campaign: bool, tenant: str | None, channel: str | None, from_us: int | None,
                to_us: int | None, min_touched_us: int | None, campaign: object) -> dict[tuple, list[int]]:
        touched = self._touched() if min_touched_us is not None else None
        out: dict[tuple, list[int]] = {}
        for share in self.parts.values():
            share._select(tenant, channel, from_us, to_us, min_touched_us, campaign, by_campaign,
                          touched, out)
        return out

    def windows(self, *, tenant: str | None = None, channel: str | None = None, from_us: int | None = None,
                to_us: int | None = None, min_touched_us: int | None = None) -> dict[tuple[int, str, str], list[int]]:
        return self._select(False, tenant, channel, from_us, to_us, min_touched_us, _ANY)  # type: ignore[return-value]

    def campaigns(self, *, tenant: str | None = None, channel: str | None = None, from_us: int | None = None,
                  to_us: int | None = None, min_touched_us: int | None = None,
                  campaign: object = _ANY) -> dict[tuple[int, str, str, str | None], list[int]]:
        return self._select(True, tenant, channel, from_us, to_us, min_touched_us, campaign)  # type: ignore[return-value]

    def totals_by_label(self) -> dict[tuple[str, str, str], list[int]]:
        out: dict[tuple[str, str, str], list[int]] = {}
        for share in self.parts.values():
            for k, vec in share.totals_by_label().items():
                _add_into(out, k, vec)
        return out


def merge_windows(parts: Iterable[dict]) -> dict[tuple[int, str, str], list[int]]:
    out: dict[tuple[int, str, str], list[int]] = {}
    for part in parts:
        for k, vec in part.items():
            _add_into(out, k, vec)
    return out


def rows_json(windows: dict[tuple[int, str, str], list[int]]) -> list[dict]:
    return window_rows(windows)


_STAGE_IDX = [(s, 1 + i) for i, s in enumerate(STAGES)] + [("failed", VECTOR_FIELDS.index("failed"))]
_OPENS = VECTOR_FIELDS.index("opens_total")
_CLICKS = VECTOR_FIELDS.index("clicks_total")


class FunnelCollector(Collector):
    """Exposes ``funnel_stage_reached_total`` and ``funnel_engagement_total`` from the share.

    Values are exact message counts of the owned messages (unique per message, implied
    stages included), so across workers ``sum by (…)`` equals the replay report. Rows that
    leave the share because messages expired are kept in ``retired`` so the counters do not
    go down at expiry; only a move of a message to another channel label lowers the old
    label's series (rare: an out-of-order outbound event).
    """

    def __init__(self, share: FunnelShare, tenant_label) -> None:
        self.share = share
        self.tenant_label = tenant_label  # callable: tenant -> bounded label
        self.retired: dict[tuple[str, str, str], list[int]] = {}

    def retire(self, source: str, tenant: str, channel: str, vec: Iterable[int]) -> None:
        _add_into(self.retired, (source, tenant, channel), vec)

    def describe(self) -> Iterator:
        yield CounterMetricFamily("funnel_stage_reached", "Messages reaching a stage (unique, implied stages "
                                  "included).", labels=("source", "tenant", "channel", "stage"))
        yield CounterMetricFamily("funnel_engagement", "Total opens/clicks.",
                                  labels=("source", "tenant", "channel", "type"))

    def collect(self) -> Iterator:
        totals = self.share.totals_by_label()
        for k, vec in self.retired.items():
            _add_into(totals, k, vec)
        labelled: dict[tuple[str, str, str], list[int]] = {}
        for (src, tenant, ch), vec in totals.items():
            _add_into(labelled, (src, self.tenant_label(tenant), ch), vec)
        stage = CounterMetricFamily("funnel_stage_reached", "Messages reaching a stage (unique, implied "
                                    "stages included).", labels=("source", "tenant", "channel", "stage"))
        eng = CounterMetricFamily("funnel_engagement", "Total opens/clicks.",
                                  labels=("source", "tenant", "channel", "type"))
        for (src, tenant, ch), vec in sorted(labelled.items()):
            for name, i in _STAGE_IDX:
                stage.add_metric((src, tenant, ch, name), vec[i])
            eng.add_metric((src, tenant, ch, "open"), vec[_OPENS])
            eng.add_metric((src, tenant, ch, "click"), vec[_CLICKS])
        yield stage
        yield eng
