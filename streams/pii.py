"""PII (SPEC §8): redaction of every PII field, and keyed pseudonyms.

PII fields of an event = its own ``pii`` list ∪ the fields known to carry PII for its
source. Redaction removes them at any depth of the record, so a copy that is stored or
shown can never carry them, whatever the vendor nests where.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from .errors import ConfigError

ACTIVITY_SYNC_PII = frozenset({
    "recipient", "sender", "body", "plainTextBody", "to", "cc", "bcc", "from", "replyTo", "subject",
    "attachments", "detail", "outcomeReason", "matchedIntentKey", "matchedPart",
})
ALTCRAFT_PII = frozenset({
    "custom_data", "_xxh", "_md5", "ip", "lat", "lon", "city", "postal_code", "user_agent", "link_url",
    "bounce_message", "content",
})
KNOWN_PII = ACTIVITY_SYNC_PII | ALTCRAFT_PII
REDACTED = "[redacted]"


def pii_fields(record: dict) -> frozenset[str]:
    """The PII field names of one raw record: its declared ``pii`` list plus the known ones."""
    declared = record.get("pii")
    extra = frozenset(x for x in declared if isinstance(x, str)) if isinstance(declared, list) else frozenset()
    return KNOWN_PII | extra


def redact(record: Any, fields: frozenset[str] | None = None, _depth: int = 0) -> Any:
    """A deep copy of ``record`` without any PII field (keys removed, at every depth)."""
    if fields is None:
        fields = pii_fields(record) if isinstance(record, dict) else KNOWN_PII
    if _depth > 64:
        return REDACTED  # absurdly deep: refuse to copy rather than risk leaking
    if isinstance(record, dict):
        return {k: redact(v, fields, _depth + 1) for k, v in record.items() if k not in fields and k != "pii"}
    if isinstance(record, list):
        return [redact(v, fields, _depth + 1) for v in record]
    return record


class Pseudonymizer:
    """HMAC-SHA256 pseudonyms with a secret key: stable per key, not reversible, not a plain hash."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | str):
        if isinstance(key, str):
            key = key.encode()
        if len(key) < 16:
            raise ConfigError("the HMAC key must be at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymizer(key=**********)"

    def pseudonym(self, value: str, *, length: int = 32) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:length]
