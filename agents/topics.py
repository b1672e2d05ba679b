"""Create the worker's internal topics before faust subscribes to them.

faust creates its internal topics (the repartition topic, the table changelog, the leader
topic) while the worker starts and subscribes right away; if the broker has not propagated
a new topic's metadata by the first group join, faust logs "Ignoring missing topic" and the
worker runs without those partitions until the next metadata refresh (minutes): bundles
sent to the events topic would wait unprocessed. So the worker creates them first and waits
until every partition has a leader. faust's own declare is then a no-op.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from .settings import Settings

log = logging.getLogger("funnelwatch")

TopicSpecs = Mapping[str, tuple[int, Mapping[str, str]]]  # name -> (partitions, topic configs)


async def ensure_topics(settings: Settings, specs: TopicSpecs, timeout_s: float) -> None:
    """Create the missing topics of ``specs``; return once all partitions have a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                client_id=f"{settings.app_id}-preflight", **settings.aiokafka_security_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, num_partitions=parts, replication_factor=settings.topic_replication_factor,
                        topic_configs=dict(cfg)) for name, (parts, cfg) in specs.items() if name not in existing]
        if new:
            resp = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            errors = [t for t in resp.topic_errors if t[1] not in (0, 36)]  # 36: already exists (a peer won)
            if errors:
                raise RuntimeError(f"create_topics: {errors}")
        await wait_for_leaders(admin, {name: parts for name, (parts, _) in specs.items()}, timeout_s)
    finally:
        await admin.close()


async def wait_for_leaders(admin: AIOKafkaAdminClient, partitions: Mapping[str, int], timeout_s: float,
                           poll_s: float = 0.1) -> None:
    """Return once every topic exists with its ``partitions`` and each has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(list(partitions))
        ready = {t["topic"] for t in described
                 if t["error_code"] == 0 and len(t["partitions"]) >= partitions[t["topic"]]
                 and all(p["leader"] >= 0 for p in t["partitions"])}
        if ready >= set(partitions):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s:.0f} s: {sorted(set(partitions) - ready)}")
        await asyncio.sleep(poll_s)


def ensure_topics_blocking(settings: Settings, specs: TopicSpecs, timeout_s: float = 30.0) -> None:
    """:func:`ensure_topics` from synchronous code, on a thread of its own (the main thread's
    event loop belongs to faust). Failures are logged, not raised: faust then creates the
    topics itself, as it would without this step (e.g. without the right to create topics)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(ensure_topics(settings, specs, timeout_s))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=run, name="funnelwatch-preflight")
    t.start()
    t.join()
    if errors:
        log.warning("funnelwatch: could not pre-create internal topics %s (faust will try): %r",
                    sorted(specs), errors[0])
