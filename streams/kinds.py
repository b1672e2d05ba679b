"""Vendor kinds and event types: what each one means for a message (SPEC §3, §4).

Every lifecycle kind has a stable integer *code*: codes are persisted in message state
(changelog topics), so this table is append-only — never reorder or remove entries.
"""
from __future__ import annotations

from typing import Final, NamedTuple

ACTIVITY_SYNC: Final = "activity_sync"
ALTCRAFT: Final = "altcraft"
SOURCES: Final = (ACTIVITY_SYNC, ALTCRAFT)

# Positive stages in funnel order. Index = rank.
STAGES: Final = ("queued", "sent", "delivered", "opened", "clicked")
STAGE_RANK: Final = {s: i for i, s in enumerate(STAGES)}
QUEUED, SENT, DELIVERED, OPENED, CLICKED = range(5)
FAILED: Final = "failed"
ANNOTATIONS: Final = ("soft_bounced", "complained", "unsubscribed")
# Channels known to the pipeline (SPEC §3); ``unknown`` until an outbound event is seen.
# The one definition: agents/settings validates SLA overrides against it.
CHANNELS: Final = ("sms", "email", "push", "telegram", "unknown")

# Ladders (SPEC §4): which stages a reached stage implies, per channel.
_FULL = (QUEUED, SENT, DELIVERED, OPENED, CLICKED)
_NO_OPEN = (QUEUED, SENT, DELIVERED, CLICKED)
LADDERS: Final = {"email": _FULL, "push": _FULL, "unknown": _FULL, "sms": _NO_OPEN, "telegram": _NO_OPEN}


class Kind(NamedTuple):
    """What a lifecycle kind does: ``effect`` is a stage name, ``failed`` or an annotation."""

    code: int
    source: str
    name: str
    effect: str
    channel: str | None  # None: the kind carries no channel (activity_sync non-outbound)
    total: str | None  # "open" / "click": adds to the engagement totals


def _altcraft_channel(event_type: str) -> str:
    if event_type.startswith(("telegram_bot_", "telegram_group_")):
        return "telegram"
    if event_type.endswith("_sms"):
        return "sms"
    if event_type.endswith("_push"):
        return "push"
    return "email"


_AS_LIFECYCLE = [
    ("outbound-sms", "queued", "sms", None),
    ("outbound-email", "queued", "email", None),
    ("message-sent", "sent", None, None),
    ("message-delivered", "delivered", None, None),
    ("message-opened", "opened", None, "open"),
    ("message-link-clicked", "clicked", None, "click"),
    ("message-failed", "failed", None, None),
]
_AC_LIFECYCLE: list[tuple[str, str, str | None]] = []
for _names, _effect, _total in [
    (("send", "send_sms", "send_push", "telegram_bot_send", "telegram_group_send"), "sent", None),
    (("deliv", "deliv_sms", "deliv_push", "telegram_bot_deliv", "telegram_group_deliv"), "delivered", None),
    (("undeliv", "undeliv_sms", "telegram_bot_undeliv", "telegram_group_undeliv", "hbounce", "suppress"),
     "failed", None),
    (("sbounce",), "soft_bounced", None),
    (("complain",), "complained", None),
    (("unsub", "unsub_sms"), "unsubscribed", None),
    (("open", "open_push"), "opened", "open"),
    (("read", "glanced", "skimmed", "uopen", "uopen_push"), "opened", None),
    (("click", "click_sms", "click_push", "telegram_bot_click", "telegram_group_click"), "clicked", "click"),
    (("uclick", "uclick_sms", "uclick_push", "telegram_bot_uclick"), "clicked", None),
]:
    for _n in _names:
        _AC_LIFECYCLE.append((_n, _effect, _total))

KINDS: Final[tuple[Kind, ...]] = tuple(
    [Kind(i, ACTIVITY_SYNC, n, e, c, t) for i, (n, e, c, t) in enumerate(_AS_LIFECYCLE)]
    + [Kind(len(_AS_LIFECYCLE) + i, ALTCRAFT, n, e, _altcraft_channel(n), t)
       for i, (n, e, t) in enumerate(_AC_LIFECYCLE)]
)
AS_LIFECYCLE: Final = {k.name: k for k in KINDS if k.source == ACTIVITY_SYNC}
AC_LIFECYCLE: Final = {k.name: k for k in KINDS if k.source == ALTCRAFT}

AS_NON_LIFECYCLE: Final = frozenset({
    "inbound-sms-matched", "inbound-sms-unmatched", "experience-start", "experience-complete",
    "experience-failed", "action",
})
AS_DEPRECATED: Final = frozenset({"queued", "sent-to-gateway"})
AC_NON_LIFECYCLE: Final = frozenset({
    "confirm", "confirmsub", "segs_add", "segs_remove", "profile_merge", "profile_split",
    "campaign_launch", "camp_error",
})
AC_NON_LIFECYCLE_PREFIXES: Final = ("promocode_",)


def altcraft_non_lifecycle(event_type: str) -> bool:
    return event_type in AC_NON_LIFECYCLE or event_type.startswith(AC_NON_LIFECYCLE_PREFIXES)


def known_kind(source: str, kind: object) -> bool:
    """True for every kind the contract names (lifecycle or not); drives the metrics `kind` label."""
    if type(kind) is not str:
        return False
    if source == ACTIVITY_SYNC:
        return kind in AS_LIFECYCLE or kind in AS_NON_LIFECYCLE or kind in AS_DEPRECATED
    return kind in AC_LIFECYCLE or altcraft_non_lifecycle(kind)


def metric_kind(source: str, kind: object) -> str:
    """The `kind` label value: the kind itself when known, else ``other`` (bounded cardinality)."""
    if not known_kind(source, kind):
        return "other"
    assert isinstance(kind, str)
    if kind.startswith("promocode_"):
        return kind if kind in ("promocode_attach", "promocode_detach", "promocode_activate") else "promocode_other"
    return kind


# Which stages a source emits at all (altcraft has no `queued`), SPEC §5.
SOURCE_MIN_STAGE: Final = {ACTIVITY_SYNC: QUEUED, ALTCRAFT: SENT}
