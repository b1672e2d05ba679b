"""The local single-node KRaft broker works for what funnelwatch needs: metadata,
keyed produce/consume with explicit partitions, and exactly-once transactions."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_fixtures import (
    KafkaAdmin,
    broker_answers,
    consume_all,
    consume_all_sync,
    produce_sync,
)

pytestmark = pytest.mark.kafka


def test_broker_answers(kafka_bootstrap: str, kafka_admin: KafkaAdmin) -> None:
    assert kafka_bootstrap.startswith("127.0.0.1:") or kafka_bootstrap.startswith("localhost:")
    assert broker_answers(kafka_bootstrap)
    assert isinstance(kafka_admin.list_topics(), list)


def test_produce_consume_round_trip(kafka_bootstrap: str, topic_factory, kafka_admin: KafkaAdmin) -> None:
    topic = topic_factory("activity-sync-events", 4)
    assert topic.startswith("activity-sync-events-")
    assert kafka_admin.partitions(topic) == 4
    records = [
        (b"k0", b'{"n": 0}', 0),
        ("k1", b'{"n": 1}', 1),
        (None, b'{"n": 2}', 3),
        (b"k3", b'{"n": 3}', 3, [("dlq.reason", b"schema")]),
    ]
    metas = produce_sync(kafka_bootstrap, topic, records)
    assert [m.partition for m in metas] == [0, 1, 3, 3]

    got = consume_all_sync(kafka_bootstrap, topic, timeout_s=20, min_records=4, idle_s=0.5)
    assert [(r.key, r.value, r.partition) for r in got] == [
        (b"k0", b'{"n": 0}', 0),
        (b"k1", b'{"n": 1}', 1),
        (None, b'{"n": 2}', 3),
        (b"k3", b'{"n": 3}', 3),
    ]
    assert list(got[-1].headers) == [("dlq.reason", b"schema")]


def test_unique_topics_are_fresh(unique_topics, kafka_admin: KafkaAdmin) -> None:
    names = unique_topics({"message-alerts": 1, "funnel-windows": 4, "dead-letters": 2})
    assert set(names) == {"message-alerts", "funnel-windows", "dead-letters"}
    assert len(set(names.values())) == 3
    assert [kafka_admin.partitions(names[b]) for b in ("message-alerts", "funnel-windows", "dead-letters")] == [1, 4, 2]


def test_transactional_producer_commits(kafka_bootstrap: str, topic_factory) -> None:
    """Transactions (needed for exactly-once processing) work on the single-node broker:
    committed records are visible to read_committed readers, aborted ones are not."""
    topic = topic_factory("funnel-windows", 2)
    tid = f"funnelwatch-test-{secrets.token_hex(4)}"

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=tid,
                                    enable_idempotence=True, acks="all")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-1", key=b"a", partition=0)
                await producer.send_and_wait(topic, b"committed-2", key=b"b", partition=1)
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted", key=b"c", partition=0)
            await producer.abort_transaction()
        finally:
            await producer.stop()

        committed = await consume_all(kafka_bootstrap, topic, 20, min_records=2, idle_s=0.5)
        assert sorted(r.value for r in committed) == [b"committed-1", b"committed-2"]
        everything = await consume_all(kafka_bootstrap, topic, 20, min_records=3, idle_s=0.5,
                                       isolation_level="read_uncommitted")
        assert sorted(r.value for r in everything) == [b"aborted", b"committed-1", b"committed-2"]

    asyncio.run(asyncio.wait_for(scenario(), 90))
