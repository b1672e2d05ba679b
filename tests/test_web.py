"""Pure parts of agents/web.py (no broker): ingress body splitting, tokens, the dashboard page
and its content security policy, stats merging, the message view."""
from __future__ import annotations

import base64
import hashlib
import json
import re
from types import SimpleNamespace

import pytest

from agents.settings import Settings
from agents.web.guard import token_ok
from agents.web.ingress import BadRequest, split_hooks
from agents.web.messages import message_view
from agents.web.views import build_dashboard, merge_stats
from streams.events import CanonicalEvent
from streams.kinds import AS_LIFECYCLE
from streams.lifecycle import MessageState
from streams.stuck import SlaTable
from streams.timeparse import parse_ts_us


def test_split_hooks_keeps_each_hooks_exact_bytes() -> None:
    a = b'{"event_type": "send", "s": "]} [,", "n": [1, {"x": "}"}]}'
    b = b'{\n  "event_type":"deliv"\n}'
    assert split_hooks(a) == [a]
    assert split_hooks(b"  \n" + a + b"\r\n") == [a]
    assert split_hooks(b"[" + a + b"]") == [a]
    assert split_hooks(b"[ " + a + b" ,\n\t" + b + b" ]\n") == [a, b]
    assert split_hooks("\ufeff".encode() + a) == [a]
    u = '{"event_type": "send", "t": "привет ✓"}'.encode()
    assert split_hooks(b"[" + u + b"]") == [u]


@pytest.mark.parametrize("body", [
    b"", b"   ", b"not json", b"[", b"[]", b"[ ]", b'{"a": 1', b'{"a": 1} x', b'[{"a": 1},]', b'[{"a": 1} {"b": 2}]',
    b"[1]", b'["s"]', b"null", b"3", b'"str"', b'[{"a": 1}, []]', b'{"a": NaN}', b'{"a": Infinity}',
    b"\xff\xfe", b'[{"a": 1}] [{"b": 2}]',
])
def test_split_hooks_rejects(body: bytes) -> None:
    with pytest.raises(BadRequest):
        split_hooks(body)


def test_token_ok_is_exact() -> None:
    assert token_ok("s3cret", "s3cret")
    assert not token_ok(None, "s3cret")
    assert not token_ok("", "s3cret")
    assert not token_ok("s3cret ", "s3cret")
    assert not token_ok("S3CRET", "s3cret")
    assert not token_ok("\udcff", "s3cret")  # undecodable input never raises


def test_dashboard_is_one_self_contained_page_with_hashed_csp() -> None:
    html, csp = build_dashboard()
    text = html.decode()
    assert "<!--STYLE-->" not in text and "<!--SCRIPT-->" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing external
    assert "style=" not in text  # inline style attributes would need 'unsafe-inline'
    for tag in ("script", "style"):
        [body] = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


def test_merge_stats_sums_workers() -> None:
    a = {"dead_letters": {"activity_sync": {"schema": 2}}, "ignored": {"altcraft": {"test_event": 1}},
         "duplicates": {"altcraft": 1}, "events": 10, "inflight": 3, "open_stuck_alerts": 1, "workers": 1}
    b = {"dead_letters": {"activity_sync": {"schema": 1}, "unknown": {"invalid_json": 4}}, "ignored": {},
         "duplicates": {"altcraft": 2}, "events": 5, "inflight": 2, "open_stuck_alerts": 0, "workers": 1}
    m = merge_stats([a, b])
    assert m["dead_letters_by_reason"] == {"invalid_json": 4, "schema": 3}
    assert m["dead_letters_total"] == 7
    assert (m["events"], m["inflight"], m["workers"], m["duplicates"]) == (15, 5, 2, {"altcraft": 3})


def _state(*events: tuple[str, str]) -> MessageState:
    st = MessageState(touched_us=parse_ts_us("2024-08-27T13:30:00Z"))
    for kind, ts in events:
        st.add(CanonicalEvent("activity_sync", "foo", "m", AS_LIFECYCLE[kind], parse_ts_us(ts)))
    return st


def test_message_view() -> None:
    pipeline = SimpleNamespace(slas=SlaTable(), is_open={}.__contains__, window_us=3600 * 10**6,
                               settings=Settings.isolated(message_retention_s=86400))
    st = _state(("outbound-sms", "2024-08-27T13:00:00Z"), ("message-sent", "2024-08-27T13:01:00Z"))
    st.alerted = 1 | (1 << 4)  # stuck at queued, then resolved
    v = message_view(pipeline, "activity_sync", "foo", "m", st.to_bytes(), now=parse_ts_us("2024-08-27T13:10:00Z"))
    assert v["channel"] == "sms" and v["outcome"] == "none"
    assert v["stages"] == [{"stage": "queued", "at": "2024-08-27T13:00:00Z"},
                           {"stage": "sent", "at": "2024-08-27T13:01:00Z"}]
    assert v["stuck"] == {"stage": "sent", "since": "2024-08-27T13:01:00Z", "deadline": "2024-08-27T13:16:00Z",
                          "sla_seconds": 900, "stuck_now": False, "alerted": False}
    assert v["alerts"] == [{"type": "stuck", "stage": "queued", "since": "2024-08-27T13:00:00Z", "open": False},
                           {"type": "resolved", "stage": "queued", "resolved_stage": "sent"}]
    assert v["window_start"] == "2024-08-27T13:00:00Z" and v["expires_at"] == "2024-08-28T13:30:00Z"
    assert [e["kind"] for e in v["events"]] == ["outbound-sms", "message-sent"]
    json.dumps(v)

    done = _state(("outbound-email", "2024-08-27T13:00:00Z"), ("message-failed", "2024-08-27T13:02:00Z"),
                  ("message-delivered", "2024-08-27T13:03:00Z"))
    v = message_view(pipeline, "activity_sync", "foo", "m", done.to_bytes())
    assert (v["outcome"], v["conflicting"], v["stuck"], v["failed_at"]) == ("delivered", True, None,
                                                                           "2024-08-27T13:02:00Z")
