"""The lifecycle agent's batch (agents/lifecycle.py) on a fake table, no broker: every table
read and write of a message happens in the partition of that message's own record, since
faust's rocksdb store keeps a db per partition (a read in another partition's db finds
nothing, and the write would overwrite the stored events)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from agents.alerts import AlertBook, AlertSender
from agents.app import OP_BUNDLE, Partitioner
from agents.derived import DerivedState
from agents.funnel import FunnelCollector, FunnelShares
from agents.lifecycle import Lifecycle
from agents.metrics import Metrics
from streams.events import message_key
from streams.kinds import AS_LIFECYCLE
from streams.lifecycle import MessageState
from streams.step import StepConfig
from streams.stuck import SlaTable

T0 = 1_724_763_600_000_000  # 2024-08-27T13:00:00Z
N_PARTS = 4


class PartitionedTable:
    """A table like faust's rocksdb store: one dict per partition; reads and writes in the
    partition of a record (faust_compat.BatchedChangelogTable's ``get_for``/``put_for``)."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[bytes, bytes]] = {p: {} for p in range(N_PARTS)}
        self.seen: list[tuple[str, bytes, int]] = []

    def get_for(self, record: Any, key: bytes) -> bytes | None:
        p = record.message.partition
        self.seen.append(("get", key, p))
        return self.parts[p].get(key)

    def put_for(self, record: Any, key: bytes, value: bytes | None) -> None:
        p = record.message.partition
        self.seen.append(("set" if value is not None else "pop", key, p))
        if value is None:
            self.parts[p].pop(key, None)
        else:
            self.parts[p][key] = value

    async def send_changelog_batch(self) -> None:  # faust_compat.BatchedChangelogTable's
        self.seen.append(("send", b"", -1))


class Commit:
    def __init__(self) -> None:
        self.settled: list[int] = []

    async def settle(self, batch: list) -> None:
        self.settled += [e.message.offset for e in batch]


class Event:  # what the agent reads of a faust event (weak-referenceable, as faust's are)
    def __init__(self, key: bytes | None, value: bytes, message: Any) -> None:
        self.key, self.value, self.message = key, value, message


def bundle_event(partition: int, offset: int, entries: list[list]) -> Any:
    msg = SimpleNamespace(partition=partition, offset=offset, tp=("events", partition))
    return Event(None, orjson.dumps([OP_BUNDLE, *entries]), msg)


def test_each_message_is_read_and_written_in_its_own_partition() -> None:
    part = Partitioner(N_PARTS)
    keys = [message_key("activity_sync", "acme", f"m{i}") for i in range(40)]
    by_part: dict[int, list[str]] = {}
    for k in keys:
        by_part.setdefault(part(k), []).append(k)
    assert len(by_part) > 1
    table = PartitionedTable()
    metrics = Metrics(CollectorRegistry(), 50)
    cfg = StepConfig(window_us=3600 * 10**6, retention_us=7 * 86400 * 10**6, slas=SlaTable())
    share = FunnelShares()
    derived = DerivedState(cfg, metrics, share, FunnelCollector(share, lambda t: t), part)
    book = AlertBook(metrics, SlaTable())
    lc = Lifecycle(table, cfg, derived, book, AlertSender(None, metrics), Commit(), metrics, clock=lambda: T0)
    out = AS_LIFECYCLE["outbound-sms"].code
    sent = AS_LIFECYCLE["message-sent"].code
    # batch 1: outbound events; batch 2: sent events. Each batch mixes every partition, in
    # an order where the batch's last record is of another partition than most keys.
    b1 = [bundle_event(p, 10 + p, [[k, out, T0] for k in ks]) for p, ks in sorted(by_part.items())]
    b2 = [bundle_event(p, 20 + p, [[k, sent, T0 + 1] for k in ks]) for p, ks in sorted(by_part.items(), reverse=True)]
    for batch in (b1, b2):
        async def run(batch: list = batch) -> None:
            await lc.process(batch)
        asyncio.run(run())
    for op, key, p in table.seen:
        assert op == "send" or p == part(key.decode()), (op, key, p)
    assert [op for op, _, _ in table.seen].count("send") == 2  # once per batch, after its writes
    assert table.seen[-1][0] == "send"
    for k in keys:  # both events kept: the second batch read the first one's state
        st = MessageState.from_bytes(table.parts[part(k)][k.encode()])
        assert [code for _, code in st.events] == [out, sent]
    assert derived.inflight == len(keys)


def test_campaign_bundles_carry_campaigns_and_names_into_their_partitions() -> None:
    """SPEC §11: each event's campaign goes into its message's state and funnel row; a bundle's
    names are written in the bundle's partition, and only when they win over the known name.
    Bundles written before SPEC §11 (OP_BUNDLE, no campaigns) are still read."""
    from agents.app import OP_BUNDLE_CAMPAIGNS
    from streams.campaigns import names_key, unpack_name

    part = Partitioner(N_PARTS)
    table, names_table = PartitionedTable(), PartitionedTable()
    metrics = Metrics(CollectorRegistry(), 50)
    cfg = StepConfig(window_us=3600 * 10**6, retention_us=7 * 86400 * 10**6, slas=SlaTable())
    share = FunnelShares()
    derived = DerivedState(cfg, metrics, share, FunnelCollector(share, lambda t: t), part)
    lc = Lifecycle(table, cfg, derived, AlertBook(metrics, SlaTable()), AlertSender(None, metrics), Commit(),
                   metrics, clock=lambda: T0, names_table=names_table)
    out = AS_LIFECYCLE["outbound-sms"].code
    sent = AS_LIFECYCLE["message-sent"].code
    k1, k2, k3 = (message_key("activity_sync", "acme", m) for m in ("c1", "c2", "c3"))
    nk = names_key("acme", "flow:a")

    def ev(p: int, offset: int, names: list, entries: list, op: int = OP_BUNDLE_CAMPAIGNS) -> Any:
        msg = SimpleNamespace(partition=p, offset=offset, tp=("events", p))
        body = [op, names, *entries] if op == OP_BUNDLE_CAMPAIGNS else [op, *entries]
        return Event(None, orjson.dumps(body), msg)

    def run(batch: list) -> None:
        async def go() -> None:
            await lc.process(batch)
        asyncio.run(go())

    np_ = part(nk)
    run([ev(part(k1), 1, [], [[k1, out, T0 + 5, "flow:b", sent, T0 + 9, None]]),
         ev(part(k2), 2, [], [[k2, out, T0, "flow:a"]]),
         ev(part(k3), 3, [], [[k3, out, T0]], op=OP_BUNDLE),
         ev(np_, 4, [[nk, T0 + 7, "Flow A"], [nk, T0 + 3, "older"]], [])])
    run([ev(part(k1), 5, [], [[k1, sent, T0 + 1, "flow:a"]]),  # late and earlier: c1 moves to flow:a
         ev(np_, 6, [[nk, T0 + 2, "stale"]], [])])  # loses to the known name: not written
    assert MessageState.from_bytes(table.parts[part(k1)][k1.encode()]).campaign == "flow:a"
    assert MessageState.from_bytes(table.parts[part(k3)][k3.encode()]).campaign is None
    rows = share.campaigns()
    assert {k[3]: v[0] for k, v in rows.items()} == {"flow:a": 2, None: 1}
    assert unpack_name(names_table.parts[np_][nk.encode()]) == (T0 + 7, "Flow A")
    assert [(op, k) for op, k, _ in names_table.seen if op == "set"] == [("set", nk.encode())]
    assert all(p == np_ for op, _, p in names_table.seen if op != "send")
    assert derived.names.name("acme", "flow:a") == "Flow A"
    # A new owner builds the partition's names (and messages) from the tables.
    other = DerivedState(cfg, metrics, FunnelShares(), FunnelCollector(FunnelShares(), lambda t: t), part)

    def items_of(t: PartitionedTable) -> Any:
        return lambda ps: ((p, k, v) for p in ps for k, v in t.parts[p].items())
    assert other.rebuild(set(range(N_PARTS)), items_of(table), items_of(names_table),
                         AlertBook(metrics, SlaTable())) == (3, 0)
    assert other.names.name("acme", "flow:a") == "Flow A" and other.inflight == 3
    assert other.share.campaigns() == share.campaigns()
