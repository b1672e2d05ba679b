"""The worker commits from its own commit point, not faust's acks (no broker: faust's real
Consumer object, never started)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP

from agents.pipeline import Pipeline
from agents.settings import Settings


@pytest.fixture()
def pipe(monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    for k in [k for k in os.environ if k.startswith("FUNNELWATCH_")]:
        monkeypatch.delenv(k)
    return Pipeline(Settings())


@pytest.fixture()
def faust_app(monkeypatch: pytest.MonkeyPatch) -> faust.App:
    """A plain faust app with faust's own consumer (no commit point)."""
    for k in [k for k in os.environ if k.startswith("FUNNELWATCH_")]:
        monkeypatch.delenv(k)
    return faust.App("funnelwatch-plain", broker=Settings().broker_urls)


def faust_acked(consumer, tp: TP, offsets: range) -> None:
    """What faust's bookkeeping holds after its stream acked these offsets (skipped ones too)."""
    consumer._acked[tp].extend(offsets)
    consumer._acked_index[tp].update(offsets)


def test_faust_alone_commits_past_a_record_no_agent_processed(faust_app: faust.App) -> None:
    """The upstream behaviour worked around: offset 10 was dropped before the agent, yet
    faust's next commit covers it (one missing offset at the head passes its check)."""
    c = faust_app.consumer
    tp = TP("activity-sync-events", 0)
    c._committed_offset[tp] = 10
    faust_acked(c, tp, range(11, 21))
    assert c._filter_committable_offsets([tp]) == {tp: 21}


def test_commits_come_from_the_commit_point(pipe: Pipeline) -> None:
    c = pipe.app.consumer
    tp = TP(pipe.topics.activity_sync.get_topic_name(), 0)
    c._committed_offset[tp] = 10
    offsets = pipe.commit.tracker
    offsets.start(tp, 10)
    assert offsets.observe(tp, range(11, 21)).seek_to == 10  # 10 skipped: re-read
    faust_acked(c, tp, range(11, 21))
    assert c._filter_committable_offsets(list(c._filter_tps_with_pending_acks())) == {}
    offsets.observe(tp, range(10, 21))  # the re-read arrives
    # committed without any new faust ack: the commit point moved
    assert tp in list(c._filter_tps_with_pending_acks())
    assert c._filter_committable_offsets([tp]) == {tp: 21}


def test_untracked_topics_keep_faust_offsets(pipe: Pipeline) -> None:
    c = pipe.app.consumer
    other = TP("someone-elses-topic", 0)
    faust_acked(c, other, range(0, 5))
    assert c._filter_committable_offsets([other]) == {other: 5}


def test_nothing_is_processed_mid_rebalance_or_from_partitions_no_longer_assigned(pipe: Pipeline) -> None:
    events = pipe.topics.events.get_topic_name()
    mine, gone = TP(events, 0), TP(events, 1)
    batch = [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o)) for o, tp in enumerate([mine, gone, mine])]
    pipe.app.consumer.assignment = lambda: {mine}
    pipe.commit.accepting = False
    assert pipe.commit.admit(batch) == []
    pipe.commit.accepting = True
    assert pipe.commit.admit(batch) == [batch[0], batch[2]]
    pipe.app.consumer.assignment = lambda: {mine, gone}
    assert pipe.commit.admit(batch) is batch
