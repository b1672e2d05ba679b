#!/usr/bin/env python3
"""Quix Streams reference app of ``bench_pipeline.py`` phase (q): the worker's stateful job
without the worker, on Quix Streams (``pip install -e '.[bench]'``; never a runtime dependency).

Per input topic (both read from the earliest offset, raw bytes):

1. ``streams.normalize.normalize`` of every record; lifecycle events (``CanonicalEvent``)
   go on, everything else (non-lifecycle kinds, test events, rejects) is dropped — the worker
   counts those and sends rejects to dead letters, this app only drops them;
2. ``group_by`` the message key (``source|tenant|message_id``) through a Quix repartition
   topic; the value is ``[source, tenant, message_id, kind code, ts_us, campaign]`` (JSON);
3. per message key, state in Quix's RocksDB store (changelogged): the ``MessageState`` bytes
   (latin-1 in a JSON string, Quix's state values are JSON), folded with
   ``streams.lifecycle.apply`` — the worker's fold — and written back when the event was
   not a duplicate.

Quix's defaults otherwise (at-least-once, RocksDB with its default options), except
``commit_interval``: faust's ``broker_commit_interval`` (2.8 s), so both commit as often and
the bench sees the end of the catch-up with the same resolution.

    .venv/bin/python bench/quix_app.py --bootstrap 127.0.0.1:19092 --topics a,b \\
        --group fwbench-quix --state-dir /tmp/quix-state
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after a `--rev` export's PYTHONPATH, if any

from streams.events import CanonicalEvent, message_key  # noqa: E402
from streams.kinds import KINDS  # noqa: E402
from streams.lifecycle import MessageState, apply  # noqa: E402
from streams.normalize import normalize  # noqa: E402

STATE = "s"  # the one state key per message key


def to_wire(raw: bytes) -> list | None:
    """The record's lifecycle event as ``[source, tenant, message_id, kind code, ts_us, campaign]``, else None."""
    ev = normalize(raw)
    if type(ev) is not CanonicalEvent:
        return None
    return [ev.source, ev.tenant, ev.message_id, ev.kind.code, ev.ts_us, ev.campaign]


def wire_key(value: list) -> str:
    return message_key(value[0], value[1], value[2])


def make_fold(window_us: int):
    kinds = KINDS

    def fold(value: list, state) -> None:  # noqa: ANN001 - quixstreams State
        raw = state.get(STATE)
        st = MessageState.from_bytes(raw.encode("latin-1")) if raw is not None else None
        ev = CanonicalEvent(value[0], value[1], value[2], kinds[value[3]], value[4], value[5])
        res = apply(st, ev, window_us=window_us, now_us=time.time_ns() // 1000)
        if not res.duplicate:
            state.set(STATE, res.state.to_bytes().decode("latin-1"))

    return fold


def build(args: argparse.Namespace):
    from quixstreams import Application

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      commit_interval=args.commit_interval, state_dir=args.state_dir, loglevel=args.loglevel,
                      processing_guarantee="at-least-once")
    fold = make_fold(args.window_s * 1_000_000)
    for i, name in enumerate(args.topics.split(",")):
        topic = app.topic(name, value_deserializer="bytes", key_deserializer="bytes")
        sdf = app.dataframe(topic)
        sdf = sdf.apply(to_wire).filter(lambda v: v is not None)
        sdf = sdf.group_by(wire_key, name=f"msg{i}")
        sdf.update(fold, stateful=True)
    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topics", required=True, help="input topics, comma-separated")
    p.add_argument("--group", required=True, help="consumer group (its internal topics contain it)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--commit-interval", type=float, default=2.8)
    p.add_argument("--window-s", type=int, default=3600)
    p.add_argument("--loglevel", default="WARNING")
    args = p.parse_args()
    build(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
