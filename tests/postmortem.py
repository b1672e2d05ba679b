"""Post-mortem of a pipeline run whose topics were kept (``FW_TEST_KEEP_TOPICS=1`` in the
chaos tests): which messages' final state lacks input events, and where each was lost.

    .venv/bin/python -m tests.postmortem APP_ID ACTIVITY_SYNC_TOPIC ALTCRAFT_TOPIC [BOOTSTRAP]

For every message key it compares the events on the input topics (normalized as the
worker does) with the last changelog state; for the first keys that differ it prints the
lifecycle-events records that carried their events and every changelog write of the key,
flagging a *regression* (a write that lacks an event an earlier write had: a stale
overwrite). Then counts: keys wrong, keys whose missing events never reached the
lifecycle-events topic (lost at ingest), regressions.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import sys

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.events import CanonicalEvent
from streams.lifecycle import MessageState
from streams.normalize import normalize

OP_BUNDLE, OP_BUNDLE_CAMPAIGNS = 3, 4  # agents.app: [3, [key, code, ts, ...], ...], [4, names, [key, code, ts, campaign, ...], ...]


async def read_all(bootstrap: str, topic: str) -> list:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            raise SystemExit(f"no such topic: {topic}")
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out: list = []
        while True:
            behind = [tp for tp in tps if await c.position(tp) < end[tp]]
            if not behind:
                return out
            for recs in (await c.getmany(*behind, timeout_ms=1000, max_records=5000)).values():
                out.extend(recs)
    finally:
        await c.stop()


def _ts(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


async def main(app_id: str, as_topic: str, ac_topic: str, bootstrap: str = "127.0.0.1:19092") -> int:
    expected: dict[bytes, set] = collections.defaultdict(set)
    for topic in (as_topic, ac_topic):
        for r in await read_all(bootstrap, topic):
            out = normalize(r.value or b"", 1 << 20)
            if type(out) is CanonicalEvent:
                expected[out.key.encode()].add((out.ts_us, out.kind.code))
    carried: dict[bytes, list] = collections.defaultdict(list)
    for r in await read_all(bootstrap, f"{app_id}-lifecycle-events"):
        op = orjson.loads(r.value)
        if op[0] in (OP_BUNDLE, OP_BUNDLE_CAMPAIGNS):
            entries, step = (op[1:], 2) if op[0] == OP_BUNDLE else (op[2:], 3)
            for entry in entries:
                for i in range(1, len(entry), step):
                    carried[entry[0].encode()].append(((entry[i + 1], entry[i]), r.partition, r.offset, r.timestamp))
    writes: dict[bytes, list] = collections.defaultdict(list)
    for r in await read_all(bootstrap, f"{app_id}-messages-changelog"):
        state = set(MessageState.from_bytes(r.value).events) if r.value else None
        writes[r.key].append((r.partition, r.offset, r.timestamp, state))
    wrong = not_carried = regressions = 0
    for key, exp in expected.items():
        w = writes.get(key) or []
        missing = exp - ((w[-1][3] if w else None) or set())
        if not missing:
            continue
        wrong += 1
        lost_at_ingest = missing - {c[0] for c in carried.get(key, [])}
        not_carried += bool(lost_at_ingest)
        if wrong <= 10:
            print(f"{key.decode()}: missing {sorted(missing)}; never on lifecycle-events: {sorted(lost_at_ingest)}")
            for ev, p, o, t in carried.get(key, []):
                print(f"    carried {ev} lifecycle-events/{p}@{o} {_ts(t)}")
            prev: set = set()
            for p, o, t, s in w:
                flag = " REGRESSION" if s is not None and not prev <= s else ""
                print(f"    write changelog/{p}@{o} {_ts(t)} {len(s) if s is not None else 'tombstone'} events{flag}")
                prev = s or set()
    for key, w in writes.items():
        prev = set()
        for p, o, t, s in w:
            if s is not None and not prev <= s:
                regressions += 1
                if regressions <= 20:
                    print(f"regression {key.decode()} changelog/{p}@{o} {_ts(t)} lost {sorted(prev - s)}")
            prev = s or set()
    print(f"{len(expected)} messages; {wrong} wrong, {not_carried} of them lost before lifecycle-events; "
          f"{regressions} changelog regressions")
    return 1 if wrong or regressions else 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    sys.exit(asyncio.run(main(*sys.argv[1:])))
