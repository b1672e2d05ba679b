"""Stuck alerts: the open/suppressed book, the ack-before-mark sender, and the takeover re-read.

* :class:`AlertBook` - the open stuck alerts of the owned messages (``/alerts``, the
  ``funnel_stuck_messages`` gauge), the (message, stage) pairs whose alert is held back by
  the lag gate (counted once each), and the alerts found on the topic whose marks the table
  lacks (``published``, from :func:`reconcile`).
* :class:`AlertSender` - sends alerts; the lifecycle batch :meth:`~AlertSender.flush`-es
  (waits for Kafka's acks) *before* it writes the state marks that record them.
* :func:`reconcile` - after a takeover, the alerts acked just before the previous owner died.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable

import orjson

from streams.events import split_message_key
from streams.lifecycle import MessageState, summarize
from streams.step import open_stuck
from streams.stuck import SlaTable

from .reconcile import Published, read_published
from .settings import Settings

log = logging.getLogger("funnelwatch")


class AlertBook:
    """Open stuck alerts, suppressed deadlines and published-but-unmarked alerts of this worker."""

    def __init__(self, metrics: Any, slas: SlaTable) -> None:
        self.metrics = metrics
        self.slas = slas
        self.open: dict[bytes, dict] = {}  # message key -> its open stuck alert
        self.suppressed: set[tuple[bytes, str]] = set()
        self.published: Published = {}

    def set_open(self, key: bytes, alert: dict | None) -> None:
        """The message's open stuck alert is now ``alert`` (None: it has none).

        A row already open at the same stage is kept (with the time it was detected)."""
        cur = self.open.get(key)
        if cur is not None:
            if alert is not None and alert["stage"] == cur["stage"]:
                return
            del self.open[key]
            self.metrics.stuck_dec(cur["tenant"], cur["channel"], cur["stage"])
        if alert is not None:
            self.open[key] = alert
            self.metrics.stuck_inc(alert["tenant"], alert["channel"], alert["stage"])

    def suppress(self, key: bytes, stage: str) -> None:
        """A due alert held back by the lag gate: counted once per message and stage."""
        if (key, stage) not in self.suppressed:
            self.suppressed.add((key, stage))
            self.metrics.alert_suppressed()

    def unsuppress(self, key: bytes, stage: str) -> None:
        self.suppressed.discard((key, stage))

    def open_from_state(self, key: bytes, st: MessageState, s: Any = None) -> dict | None:
        """The open stuck alert of a stored message (the marks found on the topic count too)."""
        parts = split_message_key(key.decode())
        bits = self.published.get(key)
        if bits:
            st = MessageState(st.events, st.alerted | sum(bits), st.touched_us, st.campaign, st.campaign_ts)
        if s is None:
            s = summarize(parts[0], st.events, st.campaign)
        found = [a for a in bits.values() if a.get("type") == "stuck"] if bits else []
        return open_stuck(parts, st, s, self.slas, found)

    def keep_open(self, keep: Callable[[bytes], bool]) -> None:
        """Close the rows of messages ``keep`` says are no longer this worker's (or stored)."""
        for key in [k for k in self.open if not keep(k)]:
            self.set_open(key, None)

    def keep_published(self, keep: Callable[[bytes], bool]) -> None:
        self.published = {k: v for k, v in self.published.items() if keep(k)}


class AlertSender:
    """Sends alerts to the alerts topic; :meth:`flush` waits until Kafka acked all of them.

    The mark travels in the table's changelog; were it to land while the alert was still in
    the producer's buffer, a crash would lose the alert for good. Acked first, a crash can
    only lose the mark (between the ack and the changelog write: milliseconds), which the
    next owner takes back from the alerts topic (:func:`reconcile`) instead of alerting again.
    """

    def __init__(self, topic: Any, metrics: Any) -> None:
        self.topic = topic
        self.metrics = metrics
        self._pending: list[Any] = []

    async def send(self, key: bytes, alert: dict) -> None:
        self._pending.append(await self.topic.send(key=key, value=orjson.dumps(alert)))
        self.metrics.alert(alert["type"])

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    async def flush(self) -> None:
        """Wait for the acks of every alert sent since the last flush (raises if one failed)."""
        if self._pending:
            pending, self._pending = self._pending, []
            await asyncio.gather(*pending)


async def reconcile(s: Settings, book: AlertBook, *, alerts_topic: str, changelog_topic: str,
                    partitions: set[int], partition_of: Callable[[str], int], load: Callable[[bytes], Any],
                    now_us: int) -> None:
    """Take back the marks of alerts acked just before the previous owner died (see
    ``agents.reconcile``): they go to ``book.published`` until the message's next write."""
    t0 = time.monotonic()
    try:
        found = await read_published(s, alerts_topic=alerts_topic, changelog_topic=changelog_topic,
                                     partitions=partitions, partition_of=partition_of, now_us=now_us)
    except Exception as exc:  # noqa: BLE001 - broker trouble: alerts may repeat, none is lost
        book.metrics.alert_reconcile_failed()
        log.warning("funnelwatch: could not re-read alerts for partitions %s (alerts may repeat): %r",
                    sorted(partitions), exc)
        return
    n = 0
    for key, bits in found.items():
        st = load(key)  # None: expired, or its first write was lost (re-processing re-creates it)
        missing = {b: a for b, a in bits.items() if st is None or not st.alerted & b}
        if missing:
            book.published.setdefault(key, {}).update(missing)
            n += len(missing)
    log.info("funnelwatch: alerts re-read for partitions %s in %.2fs: %d alerts, %d not marked in the table",
             sorted(partitions), time.monotonic() - t0, sum(len(b) for b in found.values()), n)


def count_marks(book: AlertBook, reconciled: Iterable[str]) -> None:
    for alert_type in reconciled:
        book.metrics.alert_marks_reconciled(alert_type)
