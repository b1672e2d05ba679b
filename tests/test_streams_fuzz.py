"""Fuzz: normalize never raises and always yields one of the four outcomes; Replay survives
anything. Random bytes, truncations of every sample at every byte, and mutated samples
(fields deleted / replaced / retyped at any depth)."""
from __future__ import annotations

import copy
import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events import REASONS, CanonicalEvent, Ignored, NonLifecycle, Rejected
from streams.normalize import normalize, normalize_obj
from streams.report import Replay, dumps_report, format_table
from tests.test_streams_samples import all_samples, sample_lines

OUTCOMES = (CanonicalEvent, NonLifecycle, Ignored, Rejected)
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def check(out) -> None:
    assert type(out) in OUTCOMES, out
    if type(out) is Rejected:
        assert out.reason in REASONS and isinstance(out.error, str) and out.error
    elif type(out) is CanonicalEvent:
        assert out.message_id and out.message_id.strip() and out.tenant and isinstance(out.ts_us, int)
        assert out.key.count("|") == 2


def replay_all(lines: list[bytes]) -> dict:
    rp = Replay()
    for line in lines:
        rp.feed_line(line)
    rep = rp.report()
    dumps_report(rep)
    format_table(rep)
    inp = rep["input"]
    assert inp["lines"] == (inp["applied"] + inp["duplicates"] + sum(inp["rejected"].values())
                            + sum(inp["ignored"].values()) + sum(inp["non_lifecycle"].values()))
    return rep


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(raw):
    check(normalize(raw))
    replay_all([raw])


@FUZZ
@given(st.text(max_size=200))
def test_random_text_including_surrogates(text):
    check(normalize(text))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
              st.text(max_size=12), st.sampled_from(["", " ", "1.0", "0.0", "23", "send", "message-sent",
                                                     "2024-08-27T13:00:00Z", "2024-08-27T13:00:00"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@FUZZ
@given(json_values)
def test_random_json_values(value):
    check(normalize_obj(value))
    check(normalize(orjson.dumps(value)))


envelope_keys = ["event_type", "event_date", "account_id", "is_test", "event_data", "send_message_id", "kind",
                 "tenantId", "timestamp", "version", "data", "messageId", "pii", "metadata", "workflowContext"]


@FUZZ
@given(st.dictionaries(st.sampled_from(envelope_keys), json_values, max_size=8))
def test_random_objects_with_vendor_keys(obj):
    check(normalize_obj(obj))
    for nested in ("data", "event_data"):
        if nested in obj and isinstance(obj[nested], dict):
            obj[nested]["messageId"] = obj[nested]["send_message_id"] = "m"
    check(normalize_obj(obj))


def test_every_truncation_of_every_sample():
    lines = []
    for raw in sample_lines():
        for i in range(len(raw) + 1):
            cut = raw[:i]
            check(normalize(cut))
            lines.append(cut)
        for i in range(0, len(raw), 7):  # a byte dropped or garbled in the middle
            check(normalize(raw[:i] + raw[i + 1:]))
            check(normalize(raw[:i] + b"\xff" + raw[i + 1:]))
    replay_all(lines)


WEIRD = [None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, 1e308, "", " ", "\u0000", "x" * 5000, "23",
         "1.0", "0.0", "2024-08-27T13:00:00Z", "2024-08-27T13:00:00", "٢٠٢٤", "9" * 5000, [], {}, [None],
         {"": None}, {"messageId": 5}, {"send_message_id": []}, [[[[[]]]]]]


def _paths(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield path + (i,)
            yield from _paths(v, path + (i,))


def _mutate(obj, rng: random.Random):
    m = copy.deepcopy(obj)
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(m))
        if not paths:
            return m
        path = rng.choice(paths)
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        op = rng.random()
        if op < 0.3:
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op < 0.7:
            parent[path[-1]] = copy.deepcopy(rng.choice(WEIRD))
        elif op < 0.85:  # retype: wrap in a list / stringify / nest
            v = parent[path[-1]]
            parent[path[-1]] = rng.choice([[v], str(v), {"value": v}])
        elif isinstance(parent, dict):  # rename
            parent[path[-1] + "_x" if isinstance(path[-1], str) else "k"] = parent.pop(path[-1])
    return m


def test_mutated_seed_samples():
    rng = random.Random(20240827)
    samples = all_samples()
    lines = []
    kinds = set()
    for i in range(12000):
        m = _mutate(samples[i % len(samples)], rng)
        out = normalize_obj(m)
        check(out)
        raw = orjson.dumps(m)
        out2 = normalize(raw)
        check(out2)
        assert type(out2) is type(out)
        kinds.add(out.reason if type(out) is Rejected else type(out).__name__)
        lines.append(raw)
    rep = replay_all(lines)
    assert rep["input"]["lines"] == 12000
    # the mutations reach every kind of outcome
    assert {"CanonicalEvent", "NonLifecycle", "Ignored", "schema", "missing_message_id", "unknown_kind",
            "unknown_source", "unsupported_version"} <= kinds


def test_replay_on_hostile_lines():
    lines = [b"", b"\n", b"\r\n", b" \t ", b"\x00", b"\xff" * 10, b"{}" * 1000, b"[" * 100000, b"{" * 2000,
             orjson.dumps({"event_type": "send", "event_date": "2024-08-27T13:00:00Z", "account_id": 1,
                           "event_data": {"send_message_id": "a|b%7C|c"}}),
             orjson.dumps({"kind": "message-sent", "tenantId": "t|%", "timestamp": "0001-01-02T00:00:00Z",
                           "data": {"messageId": "%|%"}}),
             orjson.dumps({"kind": "message-sent", "tenantId": "t", "timestamp": "9999-12-30T00:00:00Z",
                           "data": {"messageId": "late"}})]
    rep = replay_all(lines)
    ids = {(s["tenant"], s["message_id"]) for s in rep["stuck"]}
    assert ("t|%", "%|%") in ids  # escaped keys split back to the original identity
    rp = Replay(max_event_bytes=10)
    rp.feed_line(b'{"a": 12345678901}')
    assert rp.report()["input"]["rejected"] == {"too_large": 1}
