"""Small builders shared by the domain-core tests."""
from __future__ import annotations

from streams.events import CanonicalEvent
from streams.kinds import AC_LIFECYCLE, AS_LIFECYCLE
from streams.lifecycle import MessageState, summarize


def ev(kind: str, ts_us: int, mid: str = "m1", tenant: str = "t") -> CanonicalEvent:
    """A lifecycle event of either source, by kind / event_type name."""
    if kind in AS_LIFECYCLE:
        return CanonicalEvent("activity_sync", tenant, mid, AS_LIFECYCLE[kind], ts_us)
    return CanonicalEvent("altcraft", tenant, mid, AC_LIFECYCLE[kind], ts_us)


def summary_of(*events: CanonicalEvent):
    """The Summary of one message made of ``events``."""
    st = MessageState()
    for e in events:
        st.add(e)
    return summarize(events[0].source, st.events)
