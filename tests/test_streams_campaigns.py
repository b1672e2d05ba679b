"""SPEC §11 campaign funnels, rule by rule, in-process (no broker): the campaign of an event,
of a message, names, state bytes, and the replay report's ``campaigns`` rows."""
from __future__ import annotations

import copy
import itertools
import random

import orjson
import pytest

from streams.campaigns import CampaignNames, name_wins, names_key, split_names_key
from streams.errors import StateCorrupt
from streams.events import CanonicalEvent, Ignored, NonLifecycle
from streams.lifecycle import MessageState, apply, summarize
from streams.normalize import normalize
from streams.report import Replay
from streams.timeparse import format_ts_us, parse_ts_us

T0 = parse_ts_us("2024-10-01T08:00:00Z")
S = 1_000_000
UUID1 = "11111111-aaaa-4aaa-8aaa-000000000001"


def as_ev(kind: str, mid: str | None = "m1", ts_us: int = T0, tenant: str = "foo", flow: object = "absent",
          name: object = "absent", wc: object = "absent") -> dict:
    fc: dict = {"flowVersion": 2}
    if flow != "absent":
        fc["flowId"] = flow
    if name != "absent":
        fc["flowName"] = name
    obj = {"version": "1.0", "timestamp": format_ts_us(ts_us), "tenantId": tenant, "kind": kind,
           "workflowContext": {"flowContext": fc} if wc == "absent" else wc, "customContext": {},
           "data": {"messageId": mid} if mid is not None else {}}
    return obj


def ac_ev(event_type: str, mid: str | None = "k1", ts_us: int = T0, account: int = 23, campaign: object = "absent",
          name: object = "absent", is_test: bool = False, ed: object = "absent") -> dict:
    data: dict = {"message_id": 17}
    if mid is not None:
        data["send_message_id"] = mid
    if campaign != "absent":
        data["campaign_id"] = campaign
    if name != "absent":
        data["campaign_name"] = name
    return {"event_type": event_type, "event_date": format_ts_us(ts_us), "account_id": account, "is_test": is_test,
            "event_data": data if ed == "absent" else ed}


def report(objs: list[dict], **kw) -> dict:
    rp = Replay(**kw)
    rp.feed_lines([orjson.dumps(o) for o in objs])
    return rp.report()


# ---- campaign of an event ------------------------------------------------------------------------------
@pytest.mark.parametrize("obj,campaign,name", [
    (as_ev("message-sent", flow=UUID1, name="Welcome"), "flow:" + UUID1, "Welcome"),
    (as_ev("message-sent", flow="plain-id", name="W"), "flow:plain-id", "W"),
    (as_ev("message-sent", flow="x", name=""), "flow:x", None),  # an empty name names nothing
    (as_ev("message-sent", flow="x", name=7), "flow:x", None),
    (as_ev("message-sent", flow="x"), "flow:x", None),
    (as_ev("message-sent", flow="", name="W"), None, None),  # an empty id: no campaign, no name
    (as_ev("message-sent", flow=5, name="W"), None, None),
    (as_ev("message-sent", flow=None, name="W"), None, None),
    (as_ev("message-sent", flow=["x"], name="W"), None, None),
    (as_ev("message-sent", name="W"), None, None),
    (as_ev("message-sent", wc=None), None, None),
    (as_ev("message-sent", wc=[]), None, None),
    (as_ev("message-sent", wc={"flowContext": "x"}), None, None),
    (as_ev("message-sent", wc={}), None, None),
    (ac_ev("send", campaign=501), "altcraft:501", None),
    (ac_ev("send", campaign=501, name="lifecycle events name nothing"), "altcraft:501", None),
    (ac_ev("send", campaign=2**63 - 1), f"altcraft:{2**63 - 1}", None),
    (ac_ev("send", campaign="501"), None, None),  # a string is not an integer
    (ac_ev("send", campaign=0), None, None),
    (ac_ev("send", campaign=-3), None, None),
    (ac_ev("send", campaign=True), None, None),  # a boolean is not an id
    (ac_ev("send", campaign=False), None, None),
    (ac_ev("send", campaign=1.0), None, None),
    (ac_ev("send", campaign=None), None, None),
    (ac_ev("send"), None, None),
])
def test_campaign_of_a_lifecycle_event(obj, campaign, name):
    out = normalize(orjson.dumps(obj))
    assert type(out) is CanonicalEvent  # a bad campaign never rejects an event
    assert (out.campaign, out.campaign_name) == (campaign, name)


@pytest.mark.parametrize("obj,campaign,name", [
    (ac_ev("campaign_launch", mid=None, campaign=501, name="Black Friday"), "altcraft:501", "Black Friday"),
    (ac_ev("campaign_launch", mid=None, campaign=501, name=""), None, None),
    (ac_ev("campaign_launch", mid=None, campaign=501), None, None),
    (ac_ev("campaign_launch", mid=None, campaign="501", name="B"), None, None),
    (ac_ev("campaign_launch", mid=None, campaign=True, name="B"), None, None),
    (ac_ev("campaign_launch", mid=None, name="B"), None, None),
    (ac_ev("segs_add", mid=None, campaign=501, name="not a launch"), None, None),
    (as_ev("experience-start", mid=None, flow="f", name="Flow F"), "flow:f", "Flow F"),
    (as_ev("action", mid=None, flow="", name="Flow F"), None, None),
])
def test_campaign_names_from_non_lifecycle_events(obj, campaign, name):
    out = normalize(orjson.dumps(obj))
    assert type(out) is NonLifecycle
    if name is not None:
        assert (out.campaign, out.campaign_name) == (campaign, name)
    else:
        assert out.campaign_name is None


@pytest.mark.parametrize("pii,campaign,name", [
    (["body"], "flow:f", "F"), (["flowName"], "flow:f", None), (["flowId"], None, None),
    (["flowName", "flowId"], None, None), ("flowName", "flow:f", "F"), ([], "flow:f", "F"),
])
def test_what_an_event_declares_pii_is_never_its_campaign_or_name(pii, campaign, name):
    """SPEC §8 over §11: the event's own ``pii`` list makes a field PII, also flowId/flowName."""
    obj = dict(as_ev("message-sent", flow="f", name="F"), pii=pii)
    out = normalize(orjson.dumps(obj))
    assert type(out) is CanonicalEvent and (out.campaign, out.campaign_name) == (campaign, name)
    nl = normalize(orjson.dumps(dict(as_ev("action", mid=None, flow="f", name="F"), pii=pii)))
    assert (nl.campaign, nl.campaign_name) == (campaign, name)


def test_test_events_carry_nothing():
    assert type(normalize(orjson.dumps(ac_ev("campaign_launch", mid=None, campaign=5, name="S", is_test=True)))) is Ignored


# ---- campaign of a message ------------------------------------------------------------------------------
def ce(kind: str, ts_us: int, campaign: str | None, source: str = "activity_sync") -> CanonicalEvent:
    from streams.kinds import AC_LIFECYCLE, AS_LIFECYCLE
    k = (AS_LIFECYCLE if source == "activity_sync" else AC_LIFECYCLE)[kind]
    return CanonicalEvent(source, "foo", "m1", k, ts_us, campaign)


def fold(events: list[CanonicalEvent]) -> MessageState:
    st = None
    for e in events:
        st = apply(st, e, window_us=3600 * S, now_us=e.ts_us).state
    assert st is not None
    return st


@pytest.mark.parametrize("events,campaign", [
    ([ce("outbound-sms", T0, "flow:a")], "flow:a"),
    ([ce("outbound-sms", T0, None)], None),
    ([ce("outbound-sms", T0, None), ce("message-sent", T0 + S, "flow:b")], "flow:b"),  # events without one don't count
    ([ce("outbound-sms", T0, "flow:b"), ce("message-sent", T0 + S, "flow:a")], "flow:b"),  # earliest wins
    ([ce("outbound-sms", T0 + S, "flow:b"), ce("message-sent", T0, "flow:z")], "flow:z"),  # a late earlier event moves it
    ([ce("outbound-sms", T0, "flow:b"), ce("message-sent", T0, "flow:a")], "flow:a"),  # same time: smallest campaign
    ([ce("message-sent", T0, "flow:b"), ce("message-sent", T0, "flow:a")], "flow:b"),  # a duplicate changes nothing
])
def test_message_campaign_is_the_smallest_timestamp_then_campaign(events, campaign):
    for perm in itertools.permutations(events):
        st = fold(list(perm))
        if len({(e.ts_us, e.kind.code) for e in events}) == len(events):  # no duplicates: any order
            assert st.campaign == campaign
    assert fold(events).campaign == campaign


def test_a_late_event_moves_the_message_to_another_campaign_row():
    st = fold([ce("outbound-sms", T0 + 10 * S, "flow:b"), ce("message-sent", T0 + 20 * S, "flow:b")])
    r = apply(st, ce("message-delivered", T0 + 5 * S, "flow:a"), window_us=3600 * S, now_us=T0)
    assert r.old.campaign == "flow:b" and r.new.campaign == "flow:a"
    delta = dict(r.delta)
    assert delta[(T0, "foo", "sms", "flow:b")][0] == -1 and delta[(T0, "foo", "sms", "flow:a")][0] == 1


# ---- state bytes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("campaign,extra_bytes", [
    (None, 0), ("altcraft:1", 3), ("altcraft:501", 4), ("altcraft:16383", 4), ("altcraft:16384", 5),
    (f"altcraft:{2**64 + 5}", 12), ("flow:" + UUID1, 18), ("flow:" + UUID1.upper(), 39),
    ("flow:x", 4), ("flow:é", 5), ("altcraft:0501", 16), ("other", 8),
])
def test_state_bytes_per_campaign(campaign, extra_bytes):
    events = [(T0, 0), (T0 + S, 2), (T0 + 2 * S, 3), (T0 + 3 * S, 4)]
    base = MessageState(list(events), 1, T0).to_bytes()
    assert len(base) == 48  # version 1, as before SPEC §11
    st = MessageState(list(events), 1, T0, campaign, T0 + S if campaign else 0)
    raw = st.to_bytes()
    assert len(raw) == 48 + extra_bytes
    back = MessageState.from_bytes(raw)
    assert back == st and back.campaign == campaign and (campaign is None or back.campaign_ts == T0 + S)
    assert raw[0] == (1 if campaign is None else 2)


@pytest.mark.parametrize("tail", [b"", b"\x00", b"\x00\x09", b"\x00\x02\x01", b"\x05\x01\x05", b"\x00\x03\x05ab",
                                  b"\x00\x01\x80", b"\x00\x04\x02\xff\xfe"])
def test_corrupt_campaign_trailer_is_state_corrupt(tail):
    raw = bytearray(MessageState([(T0, 0)], 0, T0).to_bytes())
    raw[0] = 2
    with pytest.raises(StateCorrupt):
        MessageState.from_bytes(bytes(raw) + tail)


def test_summary_carries_the_campaign():
    st = fold([ce("outbound-sms", T0, "flow:a")])
    assert summarize("activity_sync", st.events, st.campaign).campaign == "flow:a"
    assert summarize("activity_sync", st.events).campaign is None


# ---- names ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("current,ts,name,wins", [
    (None, T0, "a", True), ((T0, "b"), T0 + 1, "z", True), ((T0, "b"), T0 - 1, "a", False),
    ((T0, "b"), T0, "a", True), ((T0, "b"), T0, "c", False), ((T0, "b"), T0, "b", False),
])
def test_name_wins(current, ts, name, wins):
    assert name_wins(ts, name, current) is wins


def test_names_are_order_independent_and_tenant_scoped():
    notes = [("t", "c", T0, "A"), ("t", "c", T0 + 5, "B"), ("t", "c", T0 + 5, "Aa"), ("u", "c", T0 + 9, "U"),
             ("t", "c", T0 + 1, "Z")]
    for perm in itertools.permutations(notes):
        n = CampaignNames()
        for x in perm:
            n.note(*x)
        assert (n.name("t", "c"), n.name("u", "c"), n.name("v", "c"), n.name("t", None)) == ("Aa", "U", None, None)


def test_names_key_round_trip():
    for tenant, campaign in (("23", "altcraft:5"), ("a|b", "flow:%7C|x"), ("", "flow:")):
        assert split_names_key(names_key(tenant, campaign)) == (tenant, campaign)


def test_names_count_applied_duplicate_and_non_lifecycle_events_only():
    objs = [
        as_ev("outbound-sms", "m1", T0, flow="f", name="applied"),
        as_ev("outbound-sms", "m1", T0, flow="f", name="dup, later name wins ties? no: same ts, smaller"),
        as_ev("experience-start", None, T0 + S, flow="f", name="non-lifecycle, latest"),
        as_ev("message-sent", "", T0 + 9 * S, flow="f", name="rejected: missing_message_id"),
        ac_ev("campaign_launch", None, T0, campaign=7, name="launch"),
        ac_ev("campaign_launch", None, T0 + 9 * S, campaign=7, name="test", is_test=True),
        ac_ev("send", "k1", T0, campaign=7),
    ]
    r = report(objs)
    assert r["input"]["duplicates"] == 1 and r["input"]["rejected"] == {"missing_message_id": 1}
    names = {(c["tenant"], c["campaign"]): c["campaign_name"] for c in r["campaigns"]}
    assert names == {("foo", "flow:f"): "non-lifecycle, latest", ("23", "altcraft:7"): "launch"}


def test_duplicate_names_by_tie_on_the_smallest_name():
    objs = [as_ev("outbound-sms", "m1", T0, flow="f", name="b"), as_ev("outbound-sms", "m1", T0, flow="f", name="a")]
    for perm in (objs, objs[::-1]):
        assert report(perm)["campaigns"][0]["campaign_name"] == "a"


def test_names_of_another_tenant_do_not_apply():
    objs = [ac_ev("campaign_launch", None, T0, account=99, campaign=7, name="other tenant"),
            ac_ev("send", "k1", T0, campaign=7)]
    (row,) = report(objs)["campaigns"]
    assert (row["tenant"], row["campaign"], row["campaign_name"]) == ("23", "altcraft:7", None)


# ---- replay rows ------------------------------------------------------------------------------------------
def test_campaign_rows_sorted_null_first_and_sum_to_windows():
    objs = [ac_ev("send", "k1", T0, campaign=9), ac_ev("send", "k2", T0, campaign=10), ac_ev("send", "k3", T0),
            ac_ev("deliv", "k3", T0 + S), ac_ev("send", "k4", T0 + 3600 * S, campaign=9)]
    r = report(objs)
    assert [(row["window_start"], row["campaign"]) for row in r["campaigns"]] == [
        ("2024-10-01T08:00:00Z", None), ("2024-10-01T08:00:00Z", "altcraft:10"), ("2024-10-01T08:00:00Z", "altcraft:9"),
        ("2024-10-01T09:00:00Z", "altcraft:9")]
    assert r["campaigns"][0]["delivered"] == 1 and r["windows"][0]["entered"] == 3
    assert sum(row["entered"] for row in r["campaigns"]) == sum(w["entered"] for w in r["windows"]) == 4


def test_campaign_rows_are_the_same_for_every_order():
    rng = random.Random(5)
    objs = []
    for i in range(40):
        ts = T0 + rng.randrange(0, 7200) * S
        if rng.random() < 0.5:
            objs.append(as_ev(rng.choice(["outbound-sms", "message-sent", "message-delivered", "message-opened"]),
                              f"m{i % 9}", ts, flow=rng.choice(["a", "b", ""]), name=rng.choice(["N1", "N2", ""])))
        else:
            objs.append(ac_ev(rng.choice(["send", "deliv", "open", "campaign_launch"]), f"k{i % 7}", ts,
                              campaign=rng.choice([1, 2, "3", None]), name=rng.choice(["L1", "L2"])))
    objs += copy.deepcopy(objs[:5])  # exact duplicates
    ref = report(objs)
    assert ref["campaigns"]
    for _ in range(20):
        rng.shuffle(objs)
        assert report(objs) == ref
