"""normalize(): SPEC §1–§4 mapping tables, §7 rejections and their precedence, timestamps,
account ids, the seed samples, and error texts free of input.

The expected tables here, and the SPEC §7 oracle of the differential test (``spec_outcome``),
are transcribed from SPEC.md, not imported from streams.kinds.
"""
from __future__ import annotations

import copy
import random

import orjson
import pytest

from streams.events import REASONS, CanonicalEvent, Ignored, NonLifecycle, Rejected
from streams.normalize import normalize, normalize_obj
from streams.timeparse import parse_ts_us
from tests.test_streams_samples import (
    AC_DATE, AC_FAMILIES, AC_SAMPLES, AC_SMID, AC_TS_US, AS_MID, AS_SAMPLES, AS_TS_US, CAMPAIGN_LAUNCH,
    TELEGRAM_DATA_SEED, ac_sample, all_samples,
)

# ---- SPEC §3/§4, transcribed ----------------------------------------------------------------------
# kind -> (effect, channel or None, total or None)
AS_TABLE = {
    "outbound-sms": ("queued", "sms", None),
    "outbound-email": ("queued", "email", None),
    "message-sent": ("sent", None, None),
    "message-delivered": ("delivered", None, None),
    "message-opened": ("opened", None, "open"),
    "message-link-clicked": ("clicked", None, "click"),
    "message-failed": ("failed", None, None),
}
AS_NON_LIFECYCLE = ["inbound-sms-matched", "inbound-sms-unmatched", "experience-start", "experience-complete",
                    "experience-failed", "action"]
AS_DEPRECATED = ["queued", "sent-to-gateway"]

AC_TABLE = {
    "send": ("sent", "email", None), "send_sms": ("sent", "sms", None), "send_push": ("sent", "push", None),
    "telegram_bot_send": ("sent", "telegram", None), "telegram_group_send": ("sent", "telegram", None),
    "deliv": ("delivered", "email", None), "deliv_sms": ("delivered", "sms", None),
    "deliv_push": ("delivered", "push", None), "telegram_bot_deliv": ("delivered", "telegram", None),
    "telegram_group_deliv": ("delivered", "telegram", None),
    "undeliv": ("failed", "email", None), "undeliv_sms": ("failed", "sms", None),
    "telegram_bot_undeliv": ("failed", "telegram", None), "telegram_group_undeliv": ("failed", "telegram", None),
    "hbounce": ("failed", "email", None), "suppress": ("failed", "email", None),
    "sbounce": ("soft_bounced", "email", None),
    "complain": ("complained", "email", None),
    "unsub": ("unsubscribed", "email", None), "unsub_sms": ("unsubscribed", "sms", None),
    "open": ("opened", "email", "open"), "open_push": ("opened", "push", "open"),
    "read": ("opened", "email", None), "glanced": ("opened", "email", None), "skimmed": ("opened", "email", None),
    "uopen": ("opened", "email", None), "uopen_push": ("opened", "push", None),
    "click": ("clicked", "email", "click"), "click_sms": ("clicked", "sms", "click"),
    "click_push": ("clicked", "push", "click"), "telegram_bot_click": ("clicked", "telegram", "click"),
    "telegram_group_click": ("clicked", "telegram", "click"),
    "uclick": ("clicked", "email", None), "uclick_sms": ("clicked", "sms", None),
    "uclick_push": ("clicked", "push", None), "telegram_bot_uclick": ("clicked", "telegram", None),
}
AC_NON_LIFECYCLE = ["confirm", "confirmsub", "promocode_attach", "promocode_detach", "promocode_activate",
                    "promocode_anything_new", "segs_add", "segs_remove", "profile_merge", "profile_split",
                    "campaign_launch", "camp_error"]
AC_UNKNOWN = ["undeliv_push", "telegram_group_uclick", "pixel", "Send", "SEND", "send ", "", "open_sms",
              "promocode", "telegram_bot_open", "bounce"]
AS_UNKNOWN = ["message-bounced", "Message-Sent", "outbound-push", "", "message_sent", "sent"]

OUTCOME_TYPES = (CanonicalEvent, NonLifecycle, Ignored, Rejected)


def n(obj) -> object:
    return normalize(orjson.dumps(obj))


def as_ev(kind_: str = "message-sent", /, **kw) -> dict:
    ev = copy.deepcopy(AS_SAMPLES.get(kind_, AS_SAMPLES["message-sent"]))
    ev["kind"] = kind_
    ev.update(kw)
    return ev


def ac_ev(type_: str = "send", /, **kw) -> dict:
    base = copy.deepcopy(AC_SAMPLES.get(type_, AC_SAMPLES["send"]))
    base["event_type"] = type_
    base.update(kw)
    return base


def assert_rejected(out, reason):
    assert type(out) is Rejected, out
    assert out.reason == reason, (out.reason, out.error)
    assert out.reason in REASONS


# ---- mapping tables ------------------------------------------------------------------------------
def test_tables_cover_every_kind_the_spec_names():
    assert len(AS_TABLE) == 7 and len(AC_TABLE) == 36


#: SPEC §11: the campaign and name the Activity Sync samples carry (workflowContext.flowContext).
AS_FLOW = ("flow:b07a5e44-04e3-4698-a799-04c558b77147", "My first flow")

@pytest.mark.parametrize("kind", sorted(AS_TABLE))
def test_activity_sync_lifecycle_kind(kind):
    effect, channel, total = AS_TABLE[kind]
    out = n(as_ev(kind, data={"messageId": "m-1"}))
    assert type(out) is CanonicalEvent
    assert (out.source, out.tenant, out.message_id, out.ts_us) == ("activity_sync", "foo", "m-1", AS_TS_US)
    assert out.kind.name == kind and out.effect == effect and out.kind.total == total
    assert out.kind.channel == channel
    assert out.channel == (channel or "unknown")  # SPEC §3: unknown until the outbound event is seen
    assert out.key == "activity_sync|foo|m-1"


@pytest.mark.parametrize("kind", AS_NON_LIFECYCLE)
def test_activity_sync_non_lifecycle_kind(kind):
    out = n(as_ev(kind))
    assert out == NonLifecycle("activity_sync", kind, "foo", AS_TS_US, None, *AS_FLOW)  # SPEC §11: it names the flow


@pytest.mark.parametrize("kind", AS_NON_LIFECYCLE)
def test_activity_sync_non_lifecycle_needs_only_the_envelope(kind):
    ev = as_ev(kind)
    del ev["data"]
    assert type(n(ev)) is NonLifecycle
    ev["data"] = "not an object"
    assert type(n(ev)) is NonLifecycle


@pytest.mark.parametrize("kind", AS_DEPRECATED)
def test_activity_sync_deprecated_kinds(kind):
    assert_rejected(n(as_ev(kind)), "deprecated_kind")
    assert_rejected(n(as_ev(kind, version=None)), "deprecated_kind")


@pytest.mark.parametrize("kind", AS_UNKNOWN + [None, 5, ["message-sent"], {"k": 1}, True])
def test_activity_sync_unknown_kind(kind):
    assert_rejected(n(as_ev("message-sent", kind=kind)), "unknown_kind")


@pytest.mark.parametrize("event_type", sorted(AC_TABLE))
def test_altcraft_lifecycle_type(event_type):
    effect, channel, total = AC_TABLE[event_type]
    out = n(ac_ev(event_type, event_data={"send_message_id": "s-1", "campaign_id": 973}))
    assert type(out) is CanonicalEvent
    assert (out.source, out.tenant, out.message_id, out.ts_us) == ("altcraft", "23", "s-1", AC_TS_US)
    assert (out.effect, out.channel, out.kind.total) == (effect, channel, total)
    assert out.kind.name == event_type and (out.campaign, out.campaign_name) == ("altcraft:973", None)


@pytest.mark.parametrize("event_type", AC_NON_LIFECYCLE)
def test_altcraft_non_lifecycle_type(event_type):
    out = n(ac_ev(event_type, event_data={}, account_id=23, event_date=AC_DATE))
    assert type(out) is NonLifecycle
    assert (out.source, out.kind, out.tenant, out.ts_us) == ("altcraft", event_type, "23", AC_TS_US)
    assert (out.alert is not None) == (event_type == "camp_error")


@pytest.mark.parametrize("event_type", AC_NON_LIFECYCLE)
def test_altcraft_non_lifecycle_needs_only_the_envelope(event_type):
    ev = ac_ev(event_type)
    del ev["event_data"]
    assert type(n(ev)) is NonLifecycle


@pytest.mark.parametrize("event_type", AC_UNKNOWN + [None, 1, ["send"], {"a": 1}, False])
def test_altcraft_unknown_type(event_type):
    assert_rejected(n(ac_ev("send", event_type=event_type)), "unknown_kind")


def test_camp_error_alert_body():
    out = n(ac_sample("camp_error"))
    assert type(out) is NonLifecycle
    assert out.alert == {"type": "campaign_error", "tenant": "23", "campaign_id": "9", "error_code": 500,
                         "error_text": "LOG_INTERNAL_ERROR", "event_ts_us": AC_TS_US}


# ---- source detection (SPEC §1) --------------------------------------------------------------------
@pytest.mark.parametrize("obj,expected", [
    ({}, "unknown_source"),
    ({"kind": "outbound-sms"}, "unknown_source"),
    ({"tenantId": "foo", "timestamp": "2024-08-27T13:25:04Z"}, "unknown_source"),
    ({"eventType": "send", "account_id": 1}, "unknown_source"),
    ({"type": "send"}, "unknown_source"),
])
def test_unknown_source(obj, expected):
    assert_rejected(n(obj), expected)


def test_event_type_wins_over_kind_and_tenant():
    ev = ac_sample("send")
    ev.update(kind="outbound-sms", tenantId="foo")
    out = n(ev)
    assert type(out) is CanonicalEvent and out.source == "altcraft"


def test_event_type_null_is_still_altcraft():
    assert_rejected(n({"event_type": None, "kind": "message-sent", "tenantId": "foo"}), "unknown_kind")


# ---- SPEC §7 reasons and precedence --------------------------------------------------------------
def test_too_large_boundary():
    raw = orjson.dumps(AS_SAMPLES["message-sent"])
    assert type(normalize(raw, max_event_bytes=len(raw))) is CanonicalEvent
    assert_rejected(normalize(raw, max_event_bytes=len(raw) - 1), "too_large")


def test_too_large_is_checked_before_json():
    assert_rejected(normalize(b"{" * 100, max_event_bytes=10), "too_large")
    assert_rejected(normalize(b"x" * ((1 << 20) + 1)), "too_large")  # default limit: 1 MiB
    assert_rejected(normalize(b"x" * (1 << 20)), "invalid_json")


@pytest.mark.parametrize("raw", [b"", b"{", b"nul", b"{'a': 1}", b"{} x", b"\xff\xfe", b'{"a": 1,}',
                                 b'"\xed\xa0\x80"', b"[" * 5000 + b"]" * 5000, b"NaN", b"{\"a\" 1}"])
def test_invalid_json(raw):
    assert_rejected(normalize(raw), "invalid_json")


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"1", b"1.5", b"null", b"true", b'[{"event_type": "send"}]'])
def test_not_an_object(raw):
    assert_rejected(normalize(raw), "not_an_object")


def test_str_input_is_accepted():
    out = normalize(orjson.dumps(AS_SAMPLES["message-sent"]).decode())
    assert type(out) is CanonicalEvent


@pytest.mark.parametrize("version", ["0.0", "2.0", "1", "1.0 ", "", 1.0, 1, True, ["1.0"], {"v": "1.0"}])
def test_unsupported_version(version):
    assert_rejected(n(as_ev("message-sent", version=version)), "unsupported_version")


def test_missing_or_null_version_is_1_0():
    ev = as_ev("message-sent")
    del ev["version"]
    assert type(n(ev)) is CanonicalEvent
    assert type(n(as_ev("message-sent", version=None))) is CanonicalEvent


# Each row: (description, record, reason). Records fail several checks; the first in SPEC §7 wins.
PRECEDENCE = [
    ("version 0.0 + deprecated kind", as_ev("queued", version="0.0"), "unsupported_version"),
    ("version 0.0 + unknown kind + bad ts", as_ev("message-sent", version="0.0", kind="nope", timestamp="x"),
     "unsupported_version"),
    ("version 2 + no message id", as_ev("message-sent", version="2", data={}), "unsupported_version"),
    ("unknown kind + bad timestamp", as_ev("message-bounced", timestamp="yesterday"), "unknown_kind"),
    ("unknown kind + empty tenant", as_ev("message-bounced", tenantId=""), "unknown_kind"),
    ("deprecated kind + bad timestamp", as_ev("sent-to-gateway", timestamp="never"), "deprecated_kind"),
    ("deprecated kind + no message id", as_ev("queued", data={}), "deprecated_kind"),
    ("bad timestamp + no message id", as_ev("message-sent", timestamp="2024-13-01T00:00:00Z", data={}), "schema"),
    ("empty tenant + no message id", as_ev("message-sent", tenantId="", data={}), "schema"),
    ("non-lifecycle + bad timestamp", as_ev("action", timestamp=None), "schema"),
    ("ac unknown type + bad date", ac_ev("bounce", event_date="x"), "unknown_kind"),
    ("ac unknown type + is_test", ac_ev("bounce", is_test=True), "unknown_kind"),
    ("ac unknown type + bad account", ac_ev("bounce", account_id=None), "unknown_kind"),
    ("ac bad date + is_test", ac_ev("send", event_date="2024-08-27", is_test=True), "schema"),
    ("ac bad account + is_test", ac_ev("send", account_id=1.5, is_test=True), "schema"),
    ("ac bad account + no message id", ac_ev("send", account_id="x", event_data={}), "schema"),
    ("ac bad date + no message id", ac_ev("send", event_date=None, event_data={}), "schema"),
    ("ac event_data not object + is_test", ac_ev("send", event_data=[1], is_test=True), "schema"),
]


@pytest.mark.parametrize("desc,record,reason", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence(desc, record, reason):
    assert_rejected(n(record), reason)


def test_is_test_is_ignored_before_the_message_id_is_looked_at():
    for ed in ({}, {"send_message_id": ""}, {"send_message_id": None}, None):
        ev = ac_ev("send", is_test=True, event_data=ed)
        if ed is None:
            del ev["event_data"]
        assert n(ev) == Ignored("altcraft", "send", "test_event")


@pytest.mark.parametrize("event_type", sorted(AC_TABLE) + AC_NON_LIFECYCLE)
def test_is_test_ignored_for_any_type(event_type):
    out = n(ac_ev(event_type, is_test=True))
    assert out == Ignored("altcraft", event_type, "test_event")


def test_is_test_false_or_missing_is_not_a_test():
    ev = ac_sample("send")
    del ev["is_test"]
    assert type(n(ev)) is CanonicalEvent
    assert type(n(ac_sample("send", is_test=False))) is CanonicalEvent


@pytest.mark.parametrize("is_test", ["true", 1, 0, "false", [], {}])
def test_is_test_must_be_a_boolean(is_test):
    assert_rejected(n(ac_ev("send", is_test=is_test)), "schema")


@pytest.mark.parametrize("data", [None, {}, {"messageId": ""}, {"messageId": None}, {"messageId": "   "},
                                  {"messageid": "m1"}, {"detail": "x"}])
def test_activity_sync_missing_message_id(data):
    ev = as_ev("message-delivered", data=data)
    if data is None:
        del ev["data"]
    assert_rejected(n(ev), "missing_message_id")


@pytest.mark.parametrize("data", ["m1", ["m1"], 5, True])
def test_activity_sync_data_not_an_object_is_schema(data):
    assert_rejected(n(as_ev("message-delivered", data=data)), "schema")


@pytest.mark.parametrize("mid", [5, 1.5, True, ["m"], {"id": "m"}])
def test_activity_sync_message_id_not_a_string_is_schema(mid):
    assert_rejected(n(as_ev("message-delivered", data={"messageId": mid})), "schema")


@pytest.mark.parametrize("tenant", ["", None, 5, ["foo"], {"id": "foo"}, True])
def test_activity_sync_tenant_must_be_a_non_empty_string(tenant):
    assert_rejected(n(as_ev("message-sent", tenantId=tenant)), "schema")


@pytest.mark.parametrize("ed", [None, {}, {"send_message_id": ""}, {"send_message_id": None},
                                {"send_message_id": " \t"}, {"message_id": 17}])
def test_altcraft_missing_message_id(ed):
    ev = ac_ev("deliv", event_data=ed)
    if ed is None:
        del ev["event_data"]
    assert_rejected(n(ev), "missing_message_id")


def test_altcraft_seed_telegram_example_has_no_message_id():
    assert_rejected(n(ac_sample("telegram_bot_send", TELEGRAM_DATA_SEED)), "missing_message_id")
    assert type(n(ac_sample("telegram_bot_send"))) is CanonicalEvent


@pytest.mark.parametrize("ed", ["x", [1], 5, True])
def test_altcraft_event_data_not_an_object_is_schema(ed):
    assert_rejected(n(ac_ev("deliv", event_data=ed)), "schema")
    assert_rejected(n(ac_ev("segs_add", event_data=ed)), "schema")


@pytest.mark.parametrize("smid", [1.5, True, ["x"], {"a": 1}])
def test_altcraft_send_message_id_of_wrong_type_is_schema(smid):
    assert_rejected(n(ac_ev("deliv", event_data={"send_message_id": smid})), "schema")


def test_altcraft_integer_send_message_id_is_its_decimal_text():
    out = n(ac_ev("deliv", event_data={"send_message_id": 12345}))
    assert type(out) is CanonicalEvent and out.message_id == "12345"


# ---- account_id ------------------------------------------------------------------------------------
@pytest.mark.parametrize("account,tenant", [
    (23, "23"), (0, "0"), ("23", "23"), ("0023", "23"), ("0", "0"), ("000", "0"), (2**63 - 1, str(2**63 - 1)),
    (-5, "-5"),  # SPEC §7: "integer" — a negative integer is an integer
    ("9" * 5000, "9" * 5000),  # used to raise ValueError (int() digit limit)
])
def test_account_id_accepted(account, tenant):
    out = n(ac_ev("send", account_id=account))
    assert type(out) is CanonicalEvent and out.tenant == tenant


def test_int_and_digit_string_account_are_the_same_tenant():
    a, b = n(ac_ev("send", account_id=23)), n(ac_ev("send", account_id="23"))
    assert a.key == b.key


@pytest.mark.parametrize("account", [True, False, 23.0, 1.5, "-5", "+5", "12a", "", " 23", "23 ", "２３", "1e3",
                                     None, [23], {"id": 23}, "٢٣"])
def test_account_id_rejected(account):
    assert_rejected(n(ac_ev("send", account_id=account)), "schema")


def test_account_id_missing():
    ev = ac_sample("send")
    del ev["account_id"]
    assert_rejected(n(ev), "schema")
    ev = ac_sample("segs_add")
    del ev["account_id"]
    assert_rejected(n(ev), "schema")  # non-lifecycle types need their envelope fields too


# ---- timestamps (SPEC §5) --------------------------------------------------------------------------
BASE = 1724763600_000000  # 2024-08-27T13:00:00Z
TS_OK = [
    ("2024-08-27T13:00:00Z", BASE),
    ("2024-08-27T13:00:00z", BASE),
    ("2024-08-27t13:00:00Z", BASE),
    ("2024-08-27T13:00:00+00:00", BASE),
    ("2024-08-27T13:00:00-00:00", BASE),
    ("2024-08-27T18:30:00+05:30", BASE),
    ("2024-08-27T05:00:00-08:00", BASE),
    ("2024-08-28T00:59:00+11:59", BASE),
    ("2024-08-27T13:00:00.5Z", BASE + 500000),
    ("2024-08-27T13:00:00.000001Z", BASE + 1),
    ("2024-08-27T13:00:00.123456789Z", BASE + 123456),  # 9 digits: truncated, not rounded
    ("2024-08-27T13:00:00.999999999Z", BASE + 999999),
    ("2024-08-27T13:00:00.0000009Z", BASE),
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.5Z", -500000),
    ("1900-01-01T00:00:00Z", -2208988800_000000),
    ("2999-12-31T23:59:59Z", 32503680000_000000 - 1_000000),
    ("2024-02-29T00:00:00Z", 1709164800_000000),
    (AC_DATE, AC_TS_US),
]
TS_BAD = [
    "2024-08-27T13:00:00",  # no zone: not an instant
    "2024-08-27T13:00:00.123",
    "2024-08-27", "13:00:00Z", "2024-08-27T13:00Z", "2024-08-27T13:00:00.Z",
    "2024-08-27T13:00:00.1234567890Z",  # 10 fractional digits
    "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-08-32T00:00:00Z", "2024-08-27T24:00:00Z",
    "2024-08-27T13:60:00Z", "2024-08-27T13:00:60Z", "2024-08-27T13:00:00+24:00", "2024-08-27T13:00:00+05:60",
    "0000-01-01T00:00:00Z", "10000-01-01T00:00:00Z", "2024-08-27T13:00:00ZZ", " 2024-08-27T13:00:00Z",
    "2024-08-27T13:00:00Z ", "٢٠٢٤-08-27T13:00:00Z", "2024-08-27T13:00:00 UTC", "", "now",
    1724763600, 1724763600.0, None, True, ["2024-08-27T13:00:00Z"], {"ts": "2024-08-27T13:00:00Z"},
]


@pytest.mark.parametrize("ts,us", TS_OK)
def test_timestamp_forms_accepted(ts, us):
    a = n(as_ev("message-sent", timestamp=ts))
    b = n(ac_ev("send", event_date=ts))
    assert type(a) is CanonicalEvent and a.ts_us == us
    assert type(b) is CanonicalEvent and b.ts_us == us


@pytest.mark.parametrize("ts", TS_BAD)
def test_timestamp_forms_rejected_as_schema(ts):
    assert_rejected(n(as_ev("message-sent", timestamp=ts)), "schema")
    assert_rejected(n(ac_ev("send", event_date=ts)), "schema")
    assert_rejected(n(as_ev("experience-start", timestamp=ts)), "schema")


def test_timestamp_missing():
    ev = as_ev("message-sent")
    del ev["timestamp"]
    assert_rejected(n(ev), "schema")
    ev = ac_sample("send")
    del ev["event_date"]
    assert_rejected(n(ev), "schema")


def test_far_future_and_past_round_trip_through_format():
    from streams.timeparse import format_ts_us
    for ts in ("9999-12-29T23:59:59.999999Z", "0001-01-02T00:00:00Z", "1969-07-20T20:17:40Z",
               "2024-08-27T13:13:19.034315Z"):
        assert format_ts_us(parse_ts_us(ts)) == ts
    assert parse_ts_us("9999-12-31T23:59:59Z") is None  # kept inside datetime's range, with a margin


# ---- seed samples -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(AS_SAMPLES))
def test_activity_sync_seed_sample(kind):
    sample = copy.deepcopy(AS_SAMPLES[kind])
    out = n(sample)
    if kind in AS_TABLE:
        assert type(out) is CanonicalEvent
        assert (out.tenant, out.message_id, out.ts_us, out.kind.name) == ("foo", AS_MID, AS_TS_US, kind)
        assert (out.campaign, out.campaign_name) == AS_FLOW
    else:
        assert out == NonLifecycle("activity_sync", kind, "foo", AS_TS_US, None, *AS_FLOW)


def test_activity_sync_sample_quirks_are_accepted():
    """The seed's own quirks are valid v1.0 (SPEC §4): no ``version``, no ``pii`` list, a ``metadata`` block."""
    failed = AS_SAMPLES["message-failed"]
    assert "version" not in failed
    assert n(failed) == n(dict(failed, version="1.0"))
    assert type(n(failed)) is CanonicalEvent
    email = AS_SAMPLES["outbound-email"]
    assert "pii" not in email
    assert type(n(email)) is CanonicalEvent and n(email) == n(dict(email, pii=[]))
    matched = AS_SAMPLES["inbound-sms-matched"]
    assert "metadata" in matched
    assert n(matched) == NonLifecycle("activity_sync", "inbound-sms-matched", "foo", AS_TS_US, None, *AS_FLOW)


@pytest.mark.parametrize("event_type", sorted(AC_SAMPLES))
def test_altcraft_seed_sample(event_type):
    sample = copy.deepcopy(AC_SAMPLES[event_type])
    et = sample["event_type"]
    out = n(sample)
    if et in AC_TABLE:
        assert type(out) is CanonicalEvent
        assert (out.tenant, out.message_id, out.ts_us) == ("23", AC_SMID, AC_TS_US)
    else:
        assert type(out) is NonLifecycle and out.kind == et and out.tenant == str(sample["account_id"])


def test_altcraft_campaign_launch_sample():
    assert n(CAMPAIGN_LAUNCH) == NonLifecycle("altcraft", "campaign_launch", "161", 1481278284934079, None,
                                              "altcraft:1472", "Campaugn Launch Hook")


def test_seed_altcraft_types_are_all_in_the_spec_tables():
    seed_types = {t for types, _ in AC_FAMILIES.values() for t in types} | {"campaign_launch"}
    assert seed_types <= set(AC_TABLE) | set(AC_NON_LIFECYCLE)


@pytest.mark.parametrize("obj,reason", [
    (as_ev("queued"), "deprecated_kind"), (as_ev("message-bounced"), "unknown_kind"),
    (as_ev("message-sent", version="0.0"), "unsupported_version"),
    (as_ev("message-sent", timestamp="2024-08-27T13:00:00"), "schema"), (as_ev("message-sent", tenantId=""), "schema"),
    (as_ev("message-sent", data={}), "missing_message_id"),
    (ac_ev("bounce"), "unknown_kind"), (ac_ev("send", account_id=True), "schema"),
    (ac_ev("send", account_id=1.0), "schema"), (ac_ev("send", event_date="x"), "schema"),
    (ac_ev("send", event_data={}), "missing_message_id"), (ac_ev("send", is_test="yes"), "schema"),
])
def test_normalize_rejects_invalid_shapes(obj, reason):
    assert type(n(obj)) is Rejected
    assert_rejected(n(obj), reason)
    assert spec_outcome(obj) == ("Rejected", reason)  # the oracle of the differential test agrees


def test_test_event_without_message_id_is_ignored():
    ev = ac_ev("send", is_test=True, event_data={})
    assert type(n(ev)) is Ignored


def test_extra_fields_are_allowed_everywhere():
    """Vendors add fields without notice: unknown fields, at any depth, change nothing."""
    ev = as_ev("message-sent", newField={"x": 1})
    ev["data"]["vendorAdded"] = 1
    ev["workflowContext"]["flowContext"]["flowTags"] = ["a"]
    assert n(ev) == n(as_ev("message-sent")) and type(n(ev)) is CanonicalEvent
    ac = ac_ev("click", new_top=1)
    ac["event_data"]["new_inner"] = 2
    assert n(ac) == n(ac_ev("click")) and type(n(ac)) is CanonicalEvent
    nl = as_ev("action", newField=[1])
    nl["data"]["vendorAdded"] = {"y": None}
    assert n(nl) == NonLifecycle("activity_sync", "action", "foo", AS_TS_US, None, *AS_FLOW)


# ---- differential test: normalize vs SPEC §7, transcribed ------------------------------------------------
AS_LIFECYCLE_KINDS = set(AS_TABLE)
AC_LIFECYCLE_TYPES = set(AC_TABLE)
AC_NON_LIFECYCLE_NAMED = {"confirm", "confirmsub", "segs_add", "segs_remove", "profile_merge", "profile_split",
                          "campaign_launch", "camp_error"}  # plus promocode_*


def _blank(v: str) -> bool:
    return not v.strip()


def spec_outcome(obj: object) -> tuple:
    """What SPEC §1/§2/§4/§7 say a decoded record is, read straight from the text: ``("Rejected",
    reason)``, or the accepted outcome's type and identity. Checks in the SPEC §7 order: object →
    source → (activity_sync) version → kind known / deprecated → fields → message id; (altcraft)
    event_type known → fields → ``is_test`` → message id. "Parseable" timestamps are ``parse_ts_us``'s
    (SPEC §5, tested above on its own)."""
    if not isinstance(obj, dict):
        return ("Rejected", "not_an_object")
    if "event_type" in obj:
        et = obj["event_type"]
        lifecycle = isinstance(et, str) and et in AC_LIFECYCLE_TYPES
        if not lifecycle and not (isinstance(et, str) and (et in AC_NON_LIFECYCLE_NAMED or et.startswith("promocode_"))):
            return ("Rejected", "unknown_kind")
        date, account, is_test, ed = (obj.get("event_date"), obj.get("account_id"), obj.get("is_test"),
                                      obj.get("event_data"))
        ts = parse_ts_us(date) if isinstance(date, str) else None
        if isinstance(account, bool) or not (isinstance(account, int) or (
                isinstance(account, str) and account.isascii() and account.isdigit())):
            return ("Rejected", "schema")
        smid = ed.get("send_message_id") if isinstance(ed, dict) else None
        if (ts is None or not (is_test is None or isinstance(is_test, bool)) or not (ed is None or isinstance(ed, dict))
                or (lifecycle and not (smid is None or isinstance(smid, str)
                                       or (isinstance(smid, int) and not isinstance(smid, bool))))):
            return ("Rejected", "schema")
        tenant = str(int(account))
        if is_test is True:
            return ("Ignored", "altcraft", et, "test_event")
        if not lifecycle:
            return ("NonLifecycle", "altcraft", et, tenant, ts)
        if smid is None or _blank(str(smid)):
            return ("Rejected", "missing_message_id")
        return ("CanonicalEvent", "altcraft", tenant, str(smid), et, ts)
    if "kind" in obj and "tenantId" in obj:
        if obj.get("version") is not None and obj.get("version") != "1.0":
            return ("Rejected", "unsupported_version")
        kind = obj["kind"]
        if isinstance(kind, str) and kind in AS_DEPRECATED:
            return ("Rejected", "deprecated_kind")
        if not (isinstance(kind, str) and (kind in AS_LIFECYCLE_KINDS or kind in AS_NON_LIFECYCLE)):
            return ("Rejected", "unknown_kind")
        stamp, tenant = obj.get("timestamp"), obj["tenantId"]
        ts = parse_ts_us(stamp) if isinstance(stamp, str) else None
        if ts is None or not isinstance(tenant, str) or tenant == "":
            return ("Rejected", "schema")
        if kind in AS_NON_LIFECYCLE:
            return ("NonLifecycle", "activity_sync", kind, tenant, ts)
        data = obj.get("data")
        if data is not None and not isinstance(data, dict):
            return ("Rejected", "schema")
        mid = data.get("messageId") if data is not None else None
        if mid is not None and not isinstance(mid, str):
            return ("Rejected", "schema")
        if mid is None or _blank(mid):
            return ("Rejected", "missing_message_id")
        return ("CanonicalEvent", "activity_sync", tenant, mid, kind, ts)
    return ("Rejected", "unknown_source")


def _outcome_tuple(out: object) -> tuple:
    if type(out) is Rejected:
        return ("Rejected", out.reason)
    if type(out) is Ignored:
        return ("Ignored", out.source, out.kind, out.reason)
    if type(out) is NonLifecycle:
        return ("NonLifecycle", out.source, out.kind, out.tenant, out.ts_us)
    assert type(out) is CanonicalEvent, out
    return ("CanonicalEvent", out.source, out.tenant, out.message_id, out.kind.name, out.ts_us)


def _mutations(obj, rng: random.Random):
    """Yield mutated deep copies: one field deleted / replaced / retyped, at any depth."""
    paths = []

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                paths.append(path + (i,))
                walk(v, path + (i,))

    walk(obj, ())
    values = [None, True, False, 0, -1, 23, 1.5, "", " ", "x", "23", [], {}, [1], {"a": None}, "0.0",
              "2024-08-27T13:00:00Z", "2024-08-27T13:00:00"]
    for path in paths:
        for op in ("del", "set", "set"):
            m = copy.deepcopy(obj)
            parent = m
            for p in path[:-1]:
                parent = parent[p]
            if op == "del":
                if isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    parent.pop(path[-1])
            else:
                parent[path[-1]] = rng.choice(values)
            yield m


def test_differential_spec_vs_normalize_on_mutated_samples():
    """On every mutation of every seed sample (one field deleted / replaced / retyped, at any depth),
    normalize gives exactly the outcome SPEC §7 names: the same reason, or the same identity."""
    rng = random.Random(7)
    checked = accepted = 0
    for sample in all_samples():
        for m in _mutations(sample, rng):
            out = normalize_obj(m)
            assert isinstance(out, OUTCOME_TYPES)
            assert _outcome_tuple(out) == spec_outcome(m), m
            assert _outcome_tuple(normalize(orjson.dumps(m))) == spec_outcome(m)
            checked += 1
            accepted += type(out) is not Rejected
    assert checked > 1000 and accepted > 500


# ---- error texts carry no input (SPEC §7/§8) ---------------------------------------------------------
CANARY = "CANARY-5e1f"


def _canary_variants(obj):
    """Each leaf and each key replaced by / renamed to the canary, plus some canary-bearing garbage."""
    rng = random.Random(3)
    for m in _mutations(obj, rng):
        yield m
    paths = []

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                paths.append(path + (k,))
                walk(v, path + (k,))

    walk(obj, ())
    for path in paths:
        for val in (CANARY, {CANARY: CANARY}, [CANARY], CANARY * 50):
            m = copy.deepcopy(obj)
            parent = m
            for p in path[:-1]:
                parent = parent[p]
            parent[path[-1]] = val
            yield m
        m = copy.deepcopy(obj)
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        parent[CANARY] = parent.pop(path[-1])
        yield m


def test_error_texts_never_contain_input_values():
    rejected = set()
    for sample in all_samples():
        for m in _canary_variants(sample):
            raw = orjson.dumps(m)
            for r in (raw, raw[: len(raw) // 2], raw + b"," + CANARY.encode(), CANARY.encode() + raw):
                out = normalize(r)
                if type(out) is Rejected:
                    rejected.add(out.reason)
                    assert CANARY not in out.error, (out, r)
                    assert CANARY.lower() not in out.error.lower()
            out = normalize(raw, max_event_bytes=10)
            assert CANARY not in out.error
    for raw in (orjson.dumps(CANARY), orjson.dumps([CANARY]), CANARY.encode(), b'{"' + CANARY.encode() + b'"}'):
        out = normalize(raw)
        assert type(out) is Rejected and CANARY not in out.error
    assert rejected >= {"invalid_json", "unknown_source", "schema", "missing_message_id", "unsupported_version",
                        "unknown_kind"}


def test_deprecated_kind_error_names_only_the_known_kind():
    out = n(as_ev("queued", data={"messageId": CANARY, "body": CANARY}, tenantId=CANARY))
    assert out.reason == "deprecated_kind" and CANARY not in out.error


@pytest.mark.parametrize("reason", REASONS)
def test_every_reason_is_reachable(reason):
    examples = {
        "too_large": (b"{}" * 10, 5),
        "invalid_json": (b"{", None),
        "not_an_object": (b"[]", None),
        "unknown_source": (b"{}", None),
        "unsupported_version": (orjson.dumps(as_ev(version="0.0")), None),
        "deprecated_kind": (orjson.dumps(as_ev("sent-to-gateway")), None),
        "unknown_kind": (orjson.dumps(ac_ev("nope")), None),
        "schema": (orjson.dumps(ac_ev(account_id="x")), None),
        "missing_message_id": (orjson.dumps(ac_ev(event_data={})), None),
    }
    raw, limit = examples[reason]
    out = normalize(raw, limit) if limit else normalize(raw)
    assert_rejected(out, reason)
    assert out.error and len(out.error) <= 200


def test_format_ts_us_matches_datetime_in_range_and_never_raises_outside():
    from streams.timeparse import format_ts_us, to_datetime
    rng = random.Random(9)
    lo, hi = -62135596800 * 1_000_000, 253402300799 * 1_000_000  # 0001-01-01 .. 9999-12-31T23:59:59
    for i in range(20000):
        t = rng.randrange(lo, hi)
        if i % 3 == 0:
            t -= t % 1_000_000
        dt = to_datetime(t)
        want = dt.strftime("%Y-%m-%dT%H:%M:%S")
        if len(want) < 19:  # strftime does not pad years < 1000 on every platform
            want = f"{dt.year:04d}" + want[want.index("-"):]
        if dt.microsecond:
            want += f".{dt.microsecond:06d}".rstrip("0")
        assert format_ts_us(t) == want + "Z"
    # window starts / deadlines beyond datetime's range (huge --window, long SLA) must not crash
    assert format_ts_us(lo - 1) == "0000-12-31T23:59:59.999999Z"
    assert format_ts_us(hi + 1_000_000) == "+10000-01-01T00:00:00Z"
    assert format_ts_us(-(10**20)).endswith("Z")


def test_replay_with_a_huge_window_and_old_events_does_not_crash():
    from streams.report import Replay
    rp = Replay(window_s=10**11)
    rp.feed_line(orjson.dumps(as_ev("message-sent", timestamp="1969-12-31T00:00:00Z")))
    rp.feed_line(orjson.dumps(as_ev("message-sent", timestamp="0001-01-02T00:00:00Z", data={"messageId": "x"})))
    rows = rp.report()["windows"]
    assert [(r["window_start"], r["entered"]) for r in rows] == [("-1199-02-15T14:13:20Z", 2)]


# ---- the fast timestamp path agrees with parse_ts_us -------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from streams.normalize import _ts  # noqa: E402

_TS_PIECES = st.lists(st.sampled_from(
    ["2024-08-27", "T", "t", " ", "13:25", ":04", ":60", ":5", ".913", ".034315796", ".1234567890", ".", ",5",
     "Z", "z", "+00:00", "-00:00", "+05:30", "-08:00", "+23:59", "+24:00", "+0530", "0", "9", "٢", "²", "-",
     "9999-12-30", "0001-01-01", "0001-01-02", "1969-12-31", "23:59", "00:00", ":59", ":00", "\x00"]),
    max_size=8).map("".join)


_TS_TAILS = st.tuples(
    st.sampled_from(["2024-08-27T13:25", "2024-08-27t13:25", "2024-08-27 13:25", "9999-12-29T23:59",
                     "0001-01-02T00:00", "1969-12-31T23:59", "2024-02-29T00:00"]),
    st.sampled_from([":04", ":59", ":60", ":4", "", ":0٤"]),
    st.sampled_from(["", ".", ".9", ".913", ".034315796", ".0343157961", ".1²", ",5", ".-1"]),
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-23:59", "+24:00", "+05:60", "+0530", "", "ZZ"]),
).map("".join)


@settings(max_examples=1500, deadline=None, database=None)
@given(st.one_of(_TS_TAILS, _TS_PIECES, st.text(max_size=32)))
def test_fast_timestamp_path_agrees_with_parse_ts_us(text):
    assert _ts(text) == parse_ts_us(text)
    assert _ts(text) == parse_ts_us(text)  # second call: the minute may now be cached


def test_fast_timestamp_path_edges():
    edge = ["2024-08-27T13:25:04Z", "2024-08-27T13:25:04.Z", "2024-08-27T13:25:04.1234567890Z",
            "2024-08-27T13:25:60Z", "2024-08-27T13:25:4Z", "2024-08-27T13:25:04.1²Z", "2024-08-27T13:25:04,5Z",
            "2024-08-27T13:25:04.5+24:00", "2024-08-27T13:25:04.5+23:59", "2024-08-27T13:25:04 +00:00",
            "9999-12-29T23:59:59.999999-23:59", "9999-12-29T23:59:59+00:00", "9999-12-30T00:00:00Z",
            "9999-12-30T00:00:01Z", "0001-01-02T00:00:00Z", "0001-01-02T00:00:00+00:01",
            "0001-01-02T23:59:00-00:01", "0001-01-03T00:00:00+23:59", "2024-08-27T13:25:04.913+00:00x",
            "2024-08-27T13:25:04.000000999Z", "2024-08-27T13:25:04.9Z"]
    for _ in range(2):
        for v in edge:
            assert _ts(v) == parse_ts_us(v), v


def test_normalize_lite_agrees_with_normalize():
    from streams.normalize import normalize_lite
    rng = random.Random(17)
    lines = [orjson.dumps(m) for s in all_samples() for m in [s, *_mutations(s, rng)]]
    lines += [b"", b"{", b"[]", b"x" * 100]
    kinds = set()
    for raw in lines:
        full, lite = normalize(raw), normalize_lite(raw)
        if type(full) is CanonicalEvent:
            assert lite == (full.source, full.tenant, full.message_id, full.kind, full.ts_us, full.campaign,
                            full.campaign_name) == tuple(full)
        else:
            assert lite == full
        kinds.add(type(full).__name__)
    assert kinds == {"CanonicalEvent", "NonLifecycle", "Ignored", "Rejected"}
    assert normalize_lite(b"{}" * 10, 5) == normalize(b"{}" * 10, 5)


def test_too_large_counts_bytes_of_a_str_record():
    from streams.normalize import normalize_lite
    text = '{"kind": "x", "tenantId": "' + "é" * 60 + '"}'  # 89 characters, 149 UTF-8 bytes
    assert len(text) < 100 < len(text.encode())
    for f in (normalize, normalize_lite):
        assert_rejected(f(text, 100), "too_large")
        assert "149 bytes" in f(text, 100).error
        assert f(text, 200) == f(text.encode(), 200)
        assert_rejected(f("\ud800" * 40, 100), "too_large")  # lone surrogates: counted, never raises
