"""Test entry point: ``python -m tests.fault_worker [faust args]`` runs ``funnelwatch worker``
with faults read from ``FUNNELWATCH_TEST_*`` variables, installed through the pipeline's
explicit seams (component classes). Production code reads none of these variables.

* ``FUNNELWATCH_TEST_CRASH_KIND=KIND``: the ingest agents crash on a batch holding a record
  of that ``kind``/``event_type`` (after the batch is processed and settled).
* ``FUNNELWATCH_TEST_EXIT_AFTER_ALERTS=TYPE:N``: the process dies (``os._exit``, nothing
  flushed, like SIGKILL) as soon as N alerts of TYPE were acked, before the table writes that
  mark them.
* ``FUNNELWATCH_TEST_DROP_EVERY=N``: the first delivery of every record at offset
  ``N - 1 (mod N)``, on every topic, is lost before the agents see it: what faust does to
  records it drops mid-fetch.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson

from agents.alerts import AlertSender
from agents.commit import CommitPoint
from agents.ingest import Ingest
from agents.pipeline import Pipeline
from agents.settings import Settings
from agents.worker import main as worker_main

log = logging.getLogger("funnelwatch.test")


def crashing_ingest(kind: str) -> type[Ingest]:
    class CrashingIngest(Ingest):
        async def process(self, batch: list, topic_name: str) -> None:
            await super().process(batch, topic_name)
            for event in batch:
                try:
                    obj = orjson.loads(event.value or b"")
                    k = (obj.get("kind") or obj.get("event_type")) if isinstance(obj, dict) else None
                except orjson.JSONDecodeError:
                    k = None
                if k == kind:
                    raise RuntimeError("FUNNELWATCH_TEST_CRASH_KIND: test-only agent crash")

    return CrashingIngest


def exiting_sender(spec: str) -> type[AlertSender]:
    alert_type, _, n = spec.partition(":")
    limit = int(n)

    class ExitingSender(AlertSender):
        sent_of_type = 0

        async def send(self, key: bytes, alert: dict) -> None:
            await super().send(key, alert)
            if alert["type"] == alert_type:
                type(self).sent_of_type += 1

        async def flush(self) -> None:
            had = self.pending
            await super().flush()
            if had and type(self).sent_of_type >= limit:
                log.warning("FUNNELWATCH_TEST_EXIT_AFTER_ALERTS: %d %r alerts acked: exiting now",
                            type(self).sent_of_type, alert_type)
                os._exit(137)

    return ExitingSender


def dropping_commit(every: int) -> type[CommitPoint]:
    dropped: set[tuple[Any, int]] = set()

    class DroppingCommitPoint(CommitPoint):
        def admit(self, batch: list) -> list:
            out = []
            for event in super().admit(batch):
                m = event.message
                if m.offset % every == every - 1 and (m.tp, m.offset) not in dropped:
                    dropped.add((m.tp, m.offset))
                    continue
                out.append(event)
            return out

    return DroppingCommitPoint


def make_pipeline(settings: Settings, env: dict[str, str] | None = None) -> Pipeline:
    env = dict(os.environ if env is None else env)
    kw: dict[str, Any] = {}
    if env.get("FUNNELWATCH_TEST_CRASH_KIND"):
        kw["ingest_cls"] = crashing_ingest(env["FUNNELWATCH_TEST_CRASH_KIND"])
    if env.get("FUNNELWATCH_TEST_EXIT_AFTER_ALERTS"):
        kw["sender_cls"] = exiting_sender(env["FUNNELWATCH_TEST_EXIT_AFTER_ALERTS"])
    if env.get("FUNNELWATCH_TEST_DROP_EVERY"):
        kw["commit_cls"] = dropping_commit(int(env["FUNNELWATCH_TEST_DROP_EVERY"]))
    for name in kw:
        log.warning("test fault installed: %s (tests/fault_worker.py; never in production)", name)
    return Pipeline(settings, **kw)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], make_pipeline=make_pipeline))
