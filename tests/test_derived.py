"""Derived state per partition (agents/derived.py), no broker: a rebalance scans only the
partitions newly owned, drops the revoked ones whole, leaves the kept ones as they are; and
the per-partition shares answer as one (retention per row over all partitions)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from agents.alerts import AlertBook
from agents.app import Partitioner
from agents.derived import DerivedState
from agents.funnel import FunnelCollector, FunnelShare, FunnelShares
from agents.metrics import Metrics
from streams.campaigns import names_key, pack_name
from streams.events import message_key
from streams.kinds import AS_LIFECYCLE
from streams.lifecycle import MessageState
from streams.step import StepConfig
from streams.stuck import SlaTable

T0 = 1_724_763_600_000_000
S = 1_000_000
N_PARTS = 4
part = Partitioner(N_PARTS)
OUT, SENT, DELIV = (AS_LIFECYCLE[k].code for k in ("outbound-sms", "message-sent", "message-delivered"))


def stored(n: int) -> dict[int, dict[bytes, bytes]]:
    """n messages (every third one pending at sent, every other one with a campaign), by partition."""
    parts: dict[int, dict[bytes, bytes]] = {p: {} for p in range(N_PARTS)}
    for i in range(n):
        k = message_key("activity_sync", f"t{i % 3}", f"m{i}")
        events = [(T0 + i, OUT), (T0 + i + S, SENT)] + ([] if i % 3 == 0 else [(T0 + i + 2 * S, DELIV)])
        st = MessageState(events, 0, T0, "flow:a" if i % 2 else None, T0 + i if i % 2 else 0)
        parts[part(k)][k.encode()] = st.to_bytes()
    return parts


class Scans:
    def __init__(self, parts: dict[int, dict[bytes, bytes]]) -> None:
        self.parts, self.asked = parts, []

    def __call__(self, partitions: set[int]) -> Any:
        self.asked.append(set(partitions))
        return ((p, k, v) for p in sorted(partitions) for k, v in self.parts[p].items())


def derived_state() -> tuple[DerivedState, AlertBook]:
    metrics = Metrics(CollectorRegistry(), 50)
    cfg = StepConfig(window_us=3600 * S, retention_us=7 * 86400 * S, slas=SlaTable())
    shares = FunnelShares()
    return DerivedState(cfg, metrics, shares, FunnelCollector(shares, lambda t: t), part), AlertBook(metrics, SlaTable())


def test_rebalance_scans_only_new_partitions_and_drops_revoked_ones_whole():
    parts = stored(400)
    sizes = {p: len(d) for p, d in parts.items()}
    names = {p: {} for p in range(N_PARTS)}
    nk = names_key("t1", "flow:a")
    names[part(nk)][nk.encode()] = pack_name(T0, "Flow A")
    d, book = derived_state()
    msgs, nms = Scans(parts), Scans(names)
    assert d.rebuild({0, 1, 2, 3}, msgs, nms, book) == (400, 0)
    full = d.share.windows()
    assert d.inflight == 400 and sum(v[0] for v in full.values()) == 400
    assert len(d.deadlines) == sum(1 for i in range(400) if i % 3 == 0) and sum(d.sizes().values()) == 400
    assert d.names.name("t1", "flow:a") == "Flow A"

    # Two partitions move away: dropped whole, nothing scanned.
    assert d.rebuild({0, 1}, msgs, nms, book) == (0, 2)
    assert msgs.asked[-1] == set()
    assert d.inflight == sizes[0] + sizes[1] and d.sizes() == {0: sizes[0], 1: sizes[1]}
    assert d.deadlines.partitions() <= [0, 1]
    assert d.names.name("t1", "flow:a") == ("Flow A" if part(nk) in (0, 1) else None)
    # One comes back: only it is scanned; the result equals a fresh full build.
    assert d.rebuild({0, 1, 3}, msgs, nms, book) == (sizes[3], 2)
    assert msgs.asked[-1] == {3}
    fresh, book2 = derived_state()
    fresh.rebuild({0, 1, 3}, Scans(parts), Scans(names), book2)
    assert d.share.windows() == fresh.share.windows() and d.share.campaigns() == fresh.share.campaigns()
    assert d.inflight == fresh.inflight and len(d.deadlines) == len(fresh.deadlines)


def test_shares_answer_as_one_with_retention_per_row_over_all_partitions():
    shares = FunnelShares()
    row = (T0, "t", "sms", None)
    shares.part(0).apply("activity_sync", [(row, (1,) * 12)], now_us=T0)  # old change
    shares.part(1).apply("activity_sync", [(row, (1,) * 12)], now_us=T0 + 100 * S)  # recent change
    one = FunnelShare()
    one.apply("activity_sync", [(row, (1,) * 12)], now_us=T0)
    one.apply("activity_sync", [(row, (1,) * 12)], now_us=T0 + 100 * S)
    for min_touched in (None, T0 + 50 * S, T0 + 200 * S):
        assert shares.windows(min_touched_us=min_touched) == one.windows(min_touched_us=min_touched)
        assert shares.campaigns(min_touched_us=min_touched) == one.campaigns(min_touched_us=min_touched)
    assert shares.totals_by_label() == one.totals_by_label()
    shares.drop(1)
    assert shares.windows()[(T0, "t", "sms")][0] == 1


def test_a_part_is_kept_only_if_owned_in_every_generation_since_the_last_rebuild():
    """A rebalance superseded before it completes (no rebuild) or a generation this worker was
    not in: another worker may have owned the partition and written its table meanwhile, so its
    part is built again from the table, not kept."""
    parts = stored(400)
    names: dict[int, dict[bytes, bytes]] = {p: {} for p in range(N_PARTS)}
    sizes = {p: len(d) for p, d in parts.items()}
    fresh, fresh_book = derived_state()
    fresh.rebuild({2, 3}, Scans(parts), Scans(names), fresh_book)
    cases = [  # (assignments noted after a rebuild of {2, 3}, partitions scanned at the next rebuild of {2, 3})
        ([(6, {2, 3})], set()),  # the next generation, same partitions: kept
        ([(6, {3}), (7, {2, 3})], {2}),  # 2 owned elsewhere in a generation that never completed here
        ([(7, {2, 3})], {2, 3}),  # generation 6 went by without this worker
        ([(5, {2, 3}), (6, {2, 3})], set()),  # generation 5 noted twice (signal and rebuild)
    ]
    for noted, scanned in cases:
        d, book = derived_state()
        d.note_assignment(5, {2, 3})
        d.rebuild({2, 3}, Scans(parts), Scans(names), book)
        for generation, assigned in noted:
            d.note_assignment(generation, assigned)
        msgs = Scans(parts)
        assert d.rebuild({2, 3}, msgs, Scans(names), book) == (sum(sizes[p] for p in scanned), 2 - len(scanned)), noted
        assert msgs.asked == [scanned], noted
        assert d.inflight == sizes[2] + sizes[3] and d.share.windows() == fresh.share.windows(), noted
