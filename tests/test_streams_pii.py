"""PII (SPEC §8): redaction of every PII field at any depth, and keyed pseudonyms."""
from __future__ import annotations

import copy
import hashlib
import hmac

import orjson
import pytest

from streams.errors import ConfigError
from streams.pii import Pseudonymizer, pii_fields, redact
from tests.test_streams_samples import all_samples

# SPEC §8, transcribed
AS_PII = ["recipient", "sender", "body", "plainTextBody", "to", "cc", "bcc", "from", "replyTo", "subject",
          "attachments", "detail", "outcomeReason", "matchedIntentKey", "matchedPart"]
AC_PII = ["custom_data", "_xxh", "_md5", "ip", "lat", "lon", "city", "postal_code", "user_agent", "link_url",
          "bounce_message", "content"]
SECRET = "PII-VALUE-93c1"


def keys_anywhere(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_anywhere(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys_anywhere(v)}
    return set()


def _nest(field: str, depth: int):
    """{field: SECRET} wrapped ``depth`` levels deep, through dicts and lists."""
    obj: object = {field: SECRET, "keep": "ok"}
    for i in range(depth):
        obj = {"level": obj} if i % 2 == 0 else [obj, {"other": 1}]
    return {"wrapper": obj}


@pytest.mark.parametrize("field", AS_PII + AC_PII)
@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_every_known_pii_field_is_removed_at_any_depth(field, depth):
    rec = _nest(field, depth)
    rec[field] = {"nested": SECRET}  # and at the top level, whatever its type
    out = redact(rec)
    assert field not in keys_anywhere(out)
    assert SECRET.encode() not in orjson.dumps(out)
    assert "keep" in keys_anywhere(out)  # the rest is kept


@pytest.mark.parametrize("value", [SECRET, [SECRET], {"a": SECRET}, 55.1, None, [{"x": [SECRET]}]])
def test_pii_field_removed_whatever_its_value(value):
    out = redact({"data": {"recipient": value, "messageId": "m1"}})
    assert out == {"data": {"messageId": "m1"}}


def test_declared_pii_fields_are_removed_too():
    rec = {"kind": "action", "pii": ["loyaltyNumber", "nickname"],
           "data": {"loyaltyNumber": SECRET, "usage": [{"nickname": SECRET, "qty": 1}], "actionId": "a"},
           "metadata": {"loyaltyNumber": SECRET}}
    out = redact(rec)
    assert SECRET.encode() not in orjson.dumps(out)
    assert out == {"kind": "action", "data": {"usage": [{"qty": 1}], "actionId": "a"}, "metadata": {}}
    assert {"loyaltyNumber", "nickname"} <= pii_fields(rec)


def test_declared_pii_list_with_junk_entries():
    rec = {"pii": ["ok", 5, None, {"x": 1}], "ok": SECRET, "five": 5}
    assert redact(rec) == {"five": 5}
    rec = {"pii": "not-a-list", "body": SECRET, "x": 1}
    assert redact(rec) == {"x": 1}


def test_redact_does_not_mutate_the_input():
    rec = {"data": {"recipient": SECRET, "messageId": "m"}, "pii": ["recipient"]}
    before = copy.deepcopy(rec)
    redact(rec)
    assert rec == before


def test_redact_refuses_to_copy_absurd_depth():
    obj: object = {"body": SECRET}
    for _ in range(200):
        obj = {"a": obj}
    out = redact(obj)
    assert SECRET.encode() not in orjson.dumps(out)


def test_redact_scalars_and_lists():
    assert redact(5) == 5 and redact("x") == "x" and redact(None) is None
    assert redact([{"ip": "10.0.0.1", "os": "Linux"}]) == [{"os": "Linux"}]


def _pii_values(obj, fields, out):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in fields:
                _leaves(v, out)
            else:
                _pii_values(v, fields, out)
    elif isinstance(obj, list):
        for v in obj:
            _pii_values(v, fields, out)


def _leaves(v, out):
    if isinstance(v, dict):
        for x in v.values():
            _leaves(x, out)
    elif isinstance(v, list):
        for x in v:
            _leaves(x, out)
    elif isinstance(v, str) and len(v) >= 4:
        out.add(v)
    elif isinstance(v, float):
        out.add(repr(v))


def test_seed_samples_redacted_carry_no_pii_value():
    for sample in all_samples():
        fields = set(AS_PII) | set(AC_PII) | set(sample.get("pii") or [])
        values: set[str] = set()
        _pii_values(sample, fields, values)
        out = redact(sample)
        assert not (keys_anywhere(out) & fields)
        dumped = orjson.dumps(out).decode()
        leaked = {v for v in values if v in dumped}
        # values that are also legitimately non-PII elsewhere in the sample (e.g. matchedType) are fine
        non_pii: set[str] = set()
        _leaves(out, non_pii)
        assert leaked <= non_pii, leaked


def test_known_pii_values_of_the_seeds_are_gone():
    dumped = orjson.dumps([redact(s) for s in all_samples()]).decode()
    for v in ("+61412345678", "+61487654321", "john.smith@appleseed.com", "alice@example.org", "10.9.0.14",
              "Moscow", "390000", "No such email", "http://www.example.com", "ad1850e0d1d9481e",
              "145bb30f7ddf1184cb560bc4b7705646", "I need some help", "Thanks for signing up, John.",
              "monty@altcraft.com", "profile@example.com", "welcomepack.pdf", "Details of the successful outcome."):
        assert v not in dumped, v


# ---- pseudonyms -----------------------------------------------------------------------------------------------
KEY_A = b"k" * 32
KEY_B = b"j" * 32


def test_pseudonym_is_stable_per_key():
    p = Pseudonymizer(KEY_A)
    assert p.pseudonym("+61412345678") == Pseudonymizer(KEY_A).pseudonym("+61412345678")
    assert p.pseudonym("+61412345678") != p.pseudonym("+61412345679")


def test_different_keys_give_different_pseudonyms():
    assert Pseudonymizer(KEY_A).pseudonym("alice@example.org") != Pseudonymizer(KEY_B).pseudonym("alice@example.org")


def test_pseudonym_is_keyed_hmac_not_a_plain_hash():
    v = "alice@example.org"
    got = Pseudonymizer(KEY_A).pseudonym(v, length=64)
    assert got == hmac.new(KEY_A, v.encode(), hashlib.sha256).hexdigest()
    assert got != hashlib.sha256(v.encode()).hexdigest()
    assert got != hashlib.sha256(KEY_A + v.encode()).hexdigest()
    assert got != hashlib.sha256(v.encode() + KEY_A).hexdigest()
    assert v not in got


def test_pseudonym_length_and_str_key():
    p = Pseudonymizer("s" * 16)
    assert len(p.pseudonym("x")) == 32 and len(p.pseudonym("x", length=12)) == 12
    assert p.pseudonym("x") == Pseudonymizer(b"s" * 16).pseudonym("x")


@pytest.mark.parametrize("key", [b"", b"short", "fifteen-chars!!"])
def test_short_keys_are_refused(key):
    with pytest.raises(ConfigError):
        Pseudonymizer(key)


def test_repr_hides_the_key():
    assert "k" * 16 not in repr(Pseudonymizer(KEY_A))
