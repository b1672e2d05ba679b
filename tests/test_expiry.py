"""The expiry sweep (agents/expiry.py), no broker: every expired state of every owned partition
is found within one sweep period, in slices, with one cursor per partition and nothing else."""
from __future__ import annotations

from agents.expiry import MIN_SLICE, ExpirySweep
from streams.lifecycle import MessageState, touched_us_of

S = 1_000_000
T0 = 1_724_763_600_000_000
RET = 3600 * S


class Store:
    def __init__(self, parts: dict[int, dict[bytes, bytes]]) -> None:
        self.parts, self.calls = parts, []

    def scan(self, p: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        self.calls.append((p, after, limit))
        keys = sorted(k for k in self.parts[p] if after is None or k > after)[:limit]
        return [(k, self.parts[p][k]) for k in keys]


def state(touched_us: int, campaign: str | None = None) -> bytes:
    return MessageState([(T0, 0)], 0, touched_us, campaign, T0 if campaign else 0).to_bytes()


def test_touched_is_read_from_the_header_of_either_version():
    assert touched_us_of(state(T0 + 5)) == T0 + 5 == touched_us_of(state(T0 + 5, "altcraft:7"))


def test_every_expired_state_is_found_once_per_sweep_in_slices():
    n = 2_000
    parts = {p: {f"k{p}-{i:05d}".encode(): state(T0 - (RET + S if i % 7 == 0 else 0)) for i in range(n)}
             for p in (0, 1)}
    store = Store(parts)
    sweep = ExpirySweep(store.scan, retention_us=RET, sweep_s=20.0, tick_s=1.0)
    sizes = {0: n, 1: n}
    found: list[bytes] = []
    now = T0
    for _ in range(20):  # one sweep period: 20 ticks of ceil(2000 * 1/20) = 100 states each
        found += sweep.due(now, sizes)
        now += S
    want = sorted(k for d in parts.values() for k, v in d.items() if touched_us_of(v) < T0 - RET)
    assert sorted(found) == want and len(found) == len(set(found))
    assert {lim for _, _, lim in store.calls} == {max(MIN_SLICE, n // 20)}
    assert sweep.due(now, sizes)[:1] == []  # the end of the partition was not yet reported: cursor wraps
    now += S
    found2 = []
    for _ in range(20):
        found2 += sweep.due(now, sizes)
        now += S
    assert sorted(set(found2)) == want  # the next sweep finds them again (until the lifecycle deletes them)


def test_sweep_period_is_at_most_half_the_retention_and_keep_drops_cursors():
    sweep = ExpirySweep(Store({}).scan, retention_us=10 * S, sweep_s=600.0, tick_s=1.0)
    assert sweep.sweep_s == 5.0
    sweep.cursors = {0: b"a", 1: b"b", 2: None}
    sweep.keep([1, 3])
    assert sweep.cursors == {1: b"b"}


def test_a_sweep_that_ends_early_starts_over_a_period_after_it_started():
    """A small partition (one MIN_SLICE slice) is read once per sweep period, not every tick."""
    parts = {0: {b"a": state(T0 - RET - S), b"b": state(T0)}}
    store = Store(parts)
    sweep = ExpirySweep(store.scan, retention_us=RET, sweep_s=10.0, tick_s=1.0)
    got = [sweep.due(T0 + i * S, {0: 2}) for i in range(25)]
    assert [i for i, g in enumerate(got) if g] == [0, 10, 20]
    assert all(g == [b"a"] for g in got if g)
    assert len(store.calls) == 3
    sweep.keep([])  # a partition lost, then owned again: swept from its start at once
    assert sweep.due(T0 + 25 * S, {0: 2}) == [b"a"]
