"""Ingest agents: raw vendor records in, canonical events re-keyed by message, dead letters out.

Per batch of an input topic: :func:`streams.normalize.normalize` each record; lifecycle
events are bundled, one record of the events topic per target partition per batch (the
lifecycle agent then pays faust's per-record cost once per bundle instead of once per
event), each event with its campaign; the campaign names the batch's events carry (SPEC §11,
the latest per campaign) go in the bundle of their ``tenant|campaign`` key's partition, where
the lifecycle agent keeps them in the names table; rejected records become dead letters
(SPEC §7) acked by Kafka before the batch counts as processed; ``camp_error`` becomes a
``campaign_error`` alert.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterable, Callable

import orjson
from aiokafka.errors import KafkaTimeoutError

from streams.alerts import campaign_error_alert
from streams.campaigns import CampaignNames, names_key
from streams.events import CanonicalEvent, Ignored, NonLifecycle, Rejected
from streams.kinds import known_kind, metric_kind
from streams.normalize import normalize

from .app import OP_BUNDLE_CAMPAIGNS, Topics
from .clock import now_us
from .commit import CommitPoint

log = logging.getLogger("funnelwatch")

DeadLetterSent = tuple[Any, tuple]  # (send future, (key, value, headers) to send again)


class DeadLetterError(RuntimeError):
    """Dead letters Kafka would not acknowledge: the ingest agent stops instead of losing them."""


class Ingest:
    """The ingest agent of each input topic."""

    def __init__(self, app: Any, topics: Topics, commit: CommitPoint, metrics: Any,
                 partition_of: Callable[[str], int], *, max_event_bytes: int,
                 dead_letter_ack_timeout_s: float) -> None:
        self.app = app
        self.topics = topics
        self.commit = commit
        self.metrics = metrics
        self.partition_of = partition_of
        self.max_event_bytes = max_event_bytes
        self.ack_timeout_s = dead_letter_ack_timeout_s
        self._events_topic = topics.events.get_topic_name()

    def agent(self, topic: Any, batches: AsyncIterable[list]) -> Callable[[Any], Any]:
        """The agent of ``topic``: its records come a fetch at a time from ``batches``
        (``faust_compat.deliver_in_batches``), not through faust's stream."""
        name = topic.get_topic_name()

        async def ingest(stream: Any) -> None:  # noqa: ARG001 - faust's stream of the topic stays idle
            async for batch in batches:
                batch = self.commit.admit(batch)
                if batch:
                    await self.process(batch, name)

        ingest.__name__ = f"ingest_{name}"
        return ingest

    async def process(self, batch: list, topic_name: str) -> None:
        m = self.metrics
        max_bytes = self.max_event_bytes
        partition_of = self.partition_of
        bundles: dict[int, dict[str, list]] = {}
        names = CampaignNames()  # the latest name per campaign of the batch
        dead: list[DeadLetterSent] = []
        counts: dict[tuple[str, str], int] = {}  # (source, kind) -> lifecycle events of the batch
        for event in batch:
            raw = event.value if event.value is not None else b""
            out = normalize(raw, max_bytes)
            if type(out) is CanonicalEvent:
                ck = (out.source, out.kind.name)
                counts[ck] = counts.get(ck, 0) + 1
                k = out.key
                part = partition_of(k)
                entries = bundles.get(part)
                if entries is None:
                    entries = bundles[part] = {}
                rec = entries.get(k)
                if rec is None:
                    entries[k] = [k, out.kind.code, out.ts_us, out.campaign]
                else:
                    rec += (out.kind.code, out.ts_us, out.campaign)
                if out.campaign_name is not None and out.campaign is not None:
                    names.note(out.tenant, out.campaign, out.ts_us, out.campaign_name)
            else:
                if type(out) is NonLifecycle and out.campaign_name is not None and out.campaign is not None:
                    names.note(out.tenant, out.campaign, out.ts_us, out.campaign_name)
                sent = await self._other(out, raw, event.message, topic_name)
                if sent is not None:
                    dead.append(sent)
        m.events(counts)
        by_part: dict[int, list[list]] = {}
        for (tenant, campaign), (ts, name) in names.names.items():
            nk = names_key(tenant, campaign)
            by_part.setdefault(partition_of(nk), []).append([nk, ts, name])
        send = self.app.producer.send
        for part in bundles.keys() | by_part.keys():
            entries = bundles.get(part)
            value = orjson.dumps([OP_BUNDLE_CAMPAIGNS, by_part.get(part, ()), *(entries.values() if entries else ())])
            await send(self._events_topic, None, value, part, None, None)
        if dead:
            await self.await_dead_letters(dead)
        await self.commit.settle(batch)

    async def _other(self, out: Any, raw: bytes, msg: Any, topic_name: str) -> DeadLetterSent | None:
        """Dead-letter, count or alert a record that is not a lifecycle event; a dead letter's
        send future (and what to send again) is returned for the batch to await."""
        m = self.metrics
        if type(out) is Rejected:
            src = out.source or "unknown"
            if out.source is not None:
                m.event(src, metric_kind(src, out.kind), known_kind(src, out.kind))
            m.rejected(src, out.reason)
            headers = [
                ("dlq.reason", out.reason.encode()),
                ("dlq.source.topic", topic_name.encode()),
                ("dlq.source.partition", str(msg.partition).encode()),
                ("dlq.source.offset", str(msg.offset).encode()),
                ("dlq.error", out.error.encode()),
            ]
            fut = await self.topics.dead_letters.send(key=msg.key, value=raw, headers=headers)
            return fut, (msg.key, raw, headers)
        if type(out) is NonLifecycle:
            m.event(out.source, metric_kind(out.source, out.kind), True)
            if out.alert is not None:
                alert = campaign_error_alert(out.alert, now_us())
                await self.topics.alerts.send(key=f"campaign|{alert['tenant']}|{alert['campaign_id']}".encode(),
                                              value=orjson.dumps(alert))
                m.alert("campaign_error")
        elif type(out) is Ignored:
            m.event(out.source, metric_kind(out.source, out.kind), True)
            m.ignored(out.source, out.reason)
        else:  # pragma: no cover - a new outcome type is a bug, crash loudly
            raise TypeError(f"unhandled outcome {type(out).__name__}")
        return None

    async def await_dead_letters(self, sent: list[DeadLetterSent]) -> None:
        """Dead letters are acked before their records count as processed: never lost silently.

        Not yet acked (broker down, leader moving): keep waiting, with a warning every
        ``dead_letter_ack_timeout_s`` - the records stay uncommitted meanwhile, as every
        other output of the batch would. Failed with a transient error (timeouts, leader
        changes): sent again. Failed for good (e.g. record too large, not authorized) three
        times: the agent crashes (logged, ``/health/live`` 503) rather than commit past it.
        """
        permanent_failures = 0
        waited_s = 0.0
        while True:
            _, pending = await asyncio.wait([f for f, _ in sent], timeout=self.ack_timeout_s)
            failed = [(f, args) for f, args in sent if f not in pending and f.exception() is not None]
            if not pending and not failed:
                return
            if pending:
                waited_s += self.ack_timeout_s
            errors = [f.exception() for f, _ in failed]
            if any(not _transient(e) for e in errors):
                permanent_failures += 1
                if permanent_failures >= 3:
                    raise DeadLetterError(f"{len(failed)} dead letter(s) failed 3 times: {errors[0]!r}")
            log.warning("funnelwatch: dead letters: %d not acknowledged after %.0fs, %d failed (%s): %s",
                        len(pending), waited_s, len(failed), repr(errors[0]) if errors else "-",
                        "sending the failed ones again" if failed else "waiting")
            dlq = self.topics.dead_letters
            resent = [(await dlq.send(key=k, value=v, headers=h), (k, v, h)) for _, (k, v, h) in failed]
            sent = [(f, args) for f, args in sent if f in pending] + resent


def _transient(exc: BaseException | None) -> bool:
    """A send error worth retrying: timeouts and errors Kafka marks retriable."""
    return isinstance(exc, (KafkaTimeoutError, asyncio.TimeoutError, ConnectionError)) or bool(
        getattr(exc, "retriable", False))
