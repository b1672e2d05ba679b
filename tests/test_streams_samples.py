"""The vendors' sample payloads (../shared/seeds), as Python data, shared by the streams tests.

Activity Sync samples are the seed's samples verbatim, with the ``workflowContext`` block the
seed elides as ``{ ... }`` filled in from the seed's own example. Altcraft samples are the seed's
envelope example plus, per event type, the seed's ``event_data`` example of its family.

Other test modules import the data from here (names only, never ``*``); the tests below check
that the samples really are the seed's.
"""
from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEEDS = SHARED / "seeds"
AS_SEED = SEEDS / "000_9358d5c66f281fd4.txt"
AC_SEED = SEEDS / "004_e9ede7a1fabbe597.txt"

WORKFLOW_CONTEXT = {
    "experienceContext": {"experienceId": "501b95b3-06d3-4398-9ad4-b2563e158308"},
    "flowContext": {"flowId": "b07a5e44-04e3-4698-a799-04c558b77147", "flowName": "My first flow",
                    "flowVersion": 2},
    "nodeContext": {"nodeId": "node-e72ur", "nodeName": "", "outputName": "conversation_2"},
}
AS_TS = "2024-08-27T13:25:04.913Z"
AS_TS_US = 1724765104913000
AS_MID = "1d8e4e9c-69d8-4cd1-83fe-c13ef6870cfd"


def _as(kind: str, data: dict, pii: list[str] | None, *, version: bool = True, **extra) -> dict:
    ev: dict = {}
    if version:
        ev["version"] = "1.0"
    ev.update({"timestamp": AS_TS, "tenantId": "foo", "workflowContext": copy.deepcopy(WORKFLOW_CONTEXT),
               "customContext": {}, "kind": kind})
    ev.update(extra)
    ev["data"] = data
    if pii is not None:
        ev["pii"] = pii
    return ev


# kind -> sample (verbatim from the seed, quirks included)
AS_SAMPLES: dict[str, dict] = {
    "experience-start": _as("experience-start", {}, []),
    "experience-complete": _as("experience-complete", {"endPoint": "The value of the flow End point reached."}, []),
    "experience-failed": _as("experience-failed", {}, []),
    "action": _as("action", {
        "actionId": "1d8e4e9c-69d8-4cd1-83fe-c13ef6870cfd", "name": "package/outputName", "outcome": "success",
        "outcomeReason": "Details of the successful outcome.",
        "usage": [{"uom": "measurable-quantity", "qty": 3}, {"uom": "another-measurable-quantity", "qty": 3}],
    }, ["outcomeReason"]),
    "outbound-sms": _as("outbound-sms", {
        "usage": [{"uom": "sms-segments-au", "qty": 3}], "recipient": "+61412345678",
        "body": "Thanks for signing up, John.", "messageId": AS_MID,
    }, ["body", "recipient"]),
    # quirk: no `pii` list at all
    "outbound-email": _as("outbound-email", {
        "messageId": AS_MID, "usage": [{"uom": "email-recipients", "qty": 3}],
        "from": "company@appleseed.com", "replyTo": "company@appleseed.com", "to": "john.smith@appleseed.com",
        "cc": [], "bcc": [], "subject": "Thanks for registering with us.", "body": "\n\n Hello world!\n \n",
        "plainTextBody": "\\n \\n Hello world!\\n \\n",
        "attachments": [{"filename": "welcomepack.pdf"}, {"filename": "file2.png"}],
    }, None),
    "message-sent": _as("message-sent", {"messageId": AS_MID, "detail": "smtp: 225 Queued for delivery"}, ["detail"]),
    "message-delivered": _as("message-delivered", {"messageId": AS_MID, "detail": "Delivered message"}, ["detail"]),
    # quirk: no `version`
    "message-failed": _as("message-failed", {"messageId": AS_MID, "detail": "Failed message"}, ["detail"],
                          version=False),
    "message-opened": _as("message-opened", {"messageId": AS_MID, "detail": ""}, ["detail"]),
    "message-link-clicked": _as("message-link-clicked", {"messageId": AS_MID, "detail": ""}, ["detail"]),
    # quirk: a `metadata` block besides `data`
    "inbound-sms-matched": _as("inbound-sms-matched", {
        "sender": "+61487654321", "body": "I need some help", "matchedIntentKey": "upgrade", "matchedPart": "upgrade",
        "messageId": AS_MID, "matchedType": "Rule Match (Conversation)",
    }, ["sender", "body", "matchedIntentKey", "matchedPart"],
        metadata={"messageId": AS_MID, "matchedType": "Rule Match (Conversation)"}),
    "inbound-sms-unmatched": _as("inbound-sms-unmatched", {
        "sender": "+61487654321", "body": "I need some help", "messageId": AS_MID,
    }, ["sender", "body"]),
}

# ---- Altcraft ---------------------------------------------------------------------------------
AC_DATE = "2018-03-25T13:13:19.034315796Z"  # nanoseconds: truncated to ...034315
AC_TS_US = 1521983599034315
AC_SMID = "5a9bf01a17_3cd_11_6f_0_2.5a8c045fc1dde44cbf718f78"
AC_ENVELOPE = {
    "_xxh": "ad1850e0d1d9481e", "_md5": "145bb30f7ddf1184cb560bc4b7705646", "list_id": 111, "account_id": 23,
    "is_test": False, "custom_data": {"email": "alice@example.org"},
}
TRACKING_DATA = {
    "message_id": 17, "campaign_id": 973, "segment_id": 0, "ip": "10.9.0.14", "country": ".ru", "city": "Moscow",
    "postal_code": "390000", "region": "Moskovskaya oblast", "tz": "Europe/Vaduz", "lat": 55.244075,
    "lon": 55.244075, "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:59.0) Gecko/20100101 Firefox/59.0",
    "os": "Linux x86_64", "browser": "Firefox", "device": "web", "link_url": "http://www.example.com",
    "launch_id": "00000017000003cd5a9bf01a", "send_message_id": AC_SMID,
    "extra_uid": "ew4Sgf41Qwjq8_2_2E_w_k___t.2SDvJv8bvBYQFtSDx_7bTV2f.2_2E_4Sgf41DXc7Z_D",
}
MESSAGING_DATA = {
    "message_id": 17, "campaign_id": 973, "segment_id": 0, "bounce_code": 500, "bounce_message": "No such email",
    "launch_id": "00000017000003cd5a9bf01a", "send_message_id": AC_SMID,
    "extra_uid": "ew4Sgf41Qwjq8_2_2E_w_k___t.2SDvJv8bvBYQFtSDx_7bTV2f.2_2E_4Sgf41DXc7Z_D",
}
PIXEL_DATA = {k: TRACKING_DATA[k] for k in ("ip", "country", "city", "postal_code", "region", "tz", "lat", "lon",
                                            "user_agent", "os", "browser", "device")}
PROMOCODE_DATA = {
    "attached": "2020-10-02T13:28:52Z", "detached": "2020-10-02T13:28:52Z", "activated": "2020-10-02T13:28:52Z",
    "code": "TEST-XOUH-KBJM-J5K9-24I1", "db_id": 123456, "loyalty_id": 9, "profile_id": "000000000000000000000000",
}
SEGMENT_DATA = {"campaign_id": 9, "launch_id": "", "message_id": 0, "segment_id": 80, "send_message_id": ""}
PROFILE_DATA = {
    "destination": [{"custom_data": {"age": 25}, "db_id": 94, "profile_id": "608a8960e3224a6be26a71df"}],
    "source": [{"custom_data": {"age": 25}, "db_id": 94, "profile_id": "608a8960e3224a6be26a71df"}],
}
# The seed's telegram example has an empty send_message_id: as a lifecycle event that is
# missing_message_id (tested as such); the samples use a real one.
TELEGRAM_DATA_SEED = {"campaign_id": 9, "launch_id": "", "message_id": 0, "resource_id": 3, "segment_id": 80,
                      "send_message_id": ""}
TELEGRAM_DATA = dict(TELEGRAM_DATA_SEED, send_message_id=AC_SMID)
CAMP_ERROR_DATA = {"campaign_id": 9, "error_code": 500, "error_text": "LOG_INTERNAL_ERROR", "launch_id": "",
                   "message_id": 0, "resource_id": 3, "segment_id": 80, "send_message_id": ""}
# The seed's campaign_launch example (its missing comma after "x11" fixed).
CAMPAIGN_LAUNCH = {
    "event_type": "campaign_launch", "event_date": "2016-12-09T10:11:24.934079204Z", "is_test": False,
    "account_id": 161,
    "event_data": {
        "campaign_id": 1472, "campaign_type": "broadcast", "campaign_name": "Campaugn Launch Hook",
        "campaign_sub_id": "x11", "data_type": "segment", "data_id": 1221, "launch_id": "000000a1000005c0584a834c",
        "content": [
            {"message_name": "Hello", "message_id": 1412, "suppress_id": 271, "replyto_email": "", "replyto_name": "",
             "text": "message text version", "html": "<html> html message version </html>", "from_name": "",
             "from_email": "", "attach_links": [], "subject": "Hello, {your_name}!"},
            {"message_name": "Hi", "message_id": 1413, "suppress_id": 272, "replyto_email": "monty@altcraft.com",
             "replyto_name": "Monty", "text": "message text version", "html": "<html> html message version </html>",
             "from_name": "", "from_email": "",
             "attach_links": [
                 {"name": "text_file.txt",
                  "url": "http://test.altcraft.com/api/attach/link/text_file.txt?token=eyJh..."},
                 {"name": "picture_file.png",
                  "url": "http://test.altcraft.com/api/attach/link/picture_file.png?token=eyJh..."}],
             "subject": "Hi, {your_name}!"},
        ],
    },
}
# Hook-level `content` ("Add messages content" option), as in the seed.
MESSAGE_CONTENT = {
    "amp": "<html amp4email></html>", "from_email": "no-reply@altcraft.com", "from_name": "Altcraft",
    "html": "<html></html>", "replyto_email": "example@example.com", "replyto_name": "Altcraft",
    "subject": "Weather alert", "text": "Text version", "to_email": "profile@example.com", "to_name": "Fname Lname",
    "webversion_email_html": "http://click.altkraft.com/0000/path.html",
    "webversion_email_text": "http://click.altkraft.com/0000/path.txt",
}

# Families as the seed lists them (tracking, messaging, telegram, ...).
AC_FAMILIES: dict[str, tuple[tuple[str, ...], dict]] = {
    "tracking": (("uopen", "open", "uclick", "click", "confirm", "confirmsub", "unsub", "read", "glanced", "skimmed",
                  "uclick_sms", "click_sms", "unsub_sms", "uopen_push", "open_push", "click_push", "uclick_push"),
                 TRACKING_DATA),
    "messaging": (("send", "deliv", "undeliv", "suppress", "sbounce", "hbounce", "complain", "send_sms",
                   "deliv_sms", "undeliv_sms", "send_push", "deliv_push"), MESSAGING_DATA),
    "promocode": (("promocode_attach", "promocode_detach", "promocode_activate"), PROMOCODE_DATA),
    "segment": (("segs_add", "segs_remove"), SEGMENT_DATA),
    "profile": (("profile_merge", "profile_split"), PROFILE_DATA),
    "telegram": (("telegram_bot_send", "telegram_bot_deliv", "telegram_bot_click", "telegram_bot_uclick",
                  "telegram_bot_undeliv", "telegram_group_send", "telegram_group_deliv", "telegram_group_click",
                  "telegram_group_undeliv"), TELEGRAM_DATA),
    "camp_error": (("camp_error",), CAMP_ERROR_DATA),
}


def ac_sample(event_type: str, event_data: dict | None = None, **overrides) -> dict:
    """An Altcraft hook of ``event_type`` shaped like the seed's example."""
    if event_data is None:
        event_data = next(d for types, d in AC_FAMILIES.values() if event_type in types)
    ev = {"event_type": event_type, "event_date": AC_DATE, **copy.deepcopy(AC_ENVELOPE),
          "event_data": copy.deepcopy(event_data)}
    ev.update(overrides)
    return ev


# event_type -> sample, for every type the seed names (campaign_launch: the seed's own example)
AC_SAMPLES: dict[str, dict] = {t: ac_sample(t) for types, _ in AC_FAMILIES.values() for t in types}
AC_SAMPLES["campaign_launch"] = copy.deepcopy(CAMPAIGN_LAUNCH)
AC_SAMPLES["send_with_content"] = ac_sample("send", content=copy.deepcopy(MESSAGE_CONTENT))


def all_samples() -> list[dict]:
    """Fresh deep copies of every sample of both vendors."""
    return [copy.deepcopy(s) for s in (*AS_SAMPLES.values(), *AC_SAMPLES.values())]


def sample_lines() -> list[bytes]:
    return [orjson.dumps(s) for s in all_samples()]


# ---- the samples really are the seed's --------------------------------------------------------
def _strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (k, *_strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


@pytest.mark.parametrize("kind", sorted(AS_SAMPLES))
def test_activity_sync_sample_is_the_seeds(kind):
    text = AS_SEED.read_text()
    assert f'"kind": "{kind}"' in text
    for s in _strings(AS_SAMPLES[kind]["data"]):
        # the seed writes JSON: compare with the JSON-escaped form
        assert orjson.dumps(s).decode()[1:-1] in text, s


@pytest.mark.parametrize("event_type", sorted(AC_SAMPLES))
def test_altcraft_sample_is_the_seeds(event_type):
    text = AC_SEED.read_text()
    sample = AC_SAMPLES[event_type]
    if event_type != "send_with_content":
        assert event_type in text
    for s in _strings(sample["event_data"]):
        if s and s != AC_SMID:
            assert s in text, s


def test_seed_quirks_are_present_in_the_samples():
    assert "version" not in AS_SAMPLES["message-failed"]
    assert "pii" not in AS_SAMPLES["outbound-email"]
    assert "metadata" in AS_SAMPLES["inbound-sms-matched"]
    assert len(AC_DATE.split(".")[1].rstrip("Z")) == 9
    assert type(AC_SAMPLES["send"]["account_id"]) is int
