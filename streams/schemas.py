"""Pydantic v2 models of the vendor payloads: Activity Sync v1.0 and Altcraft action hooks.

These models *document* the shapes the vendors send (``seeds/`` beside SPEC.md), with the
quirks found in the vendors' own samples:

- Activity Sync ``message-failed`` comes without ``version`` (a missing version is 1.0);
- ``outbound-email`` comes without a ``pii`` list;
- ``inbound-sms-matched`` carries a ``metadata`` block besides ``data``;
- Altcraft ``event_date`` has nanoseconds (``2018-03-25T13:13:19.034315796Z``);
- Altcraft ``account_id`` is an integer (some senders use a string of digits); ``is_test``
  flags test events (valid, but ignored by the funnel).

Extra fields are allowed everywhere: vendors add fields without notice.

The hot path (:mod:`streams.normalize`) does not build these models; it validates by hand,
in SPEC §7 order, for speed. ``tests/test_streams_normalize.py`` keeps the two in agreement:
whatever these models accept, ``normalize`` accepts with the same identity. pydantic's own
error texts echo input values: never put them into dead-letter headers or logs (SPEC §8).
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictBool, StrictInt,
    StrictStr, Tag, TypeAdapter, model_validator,
)

from .kinds import AC_LIFECYCLE, ACTIVITY_SYNC, ALTCRAFT
from .timeparse import parse_ts_us


# --------------------------------------------------------------------------------------------
# Shared field types
# --------------------------------------------------------------------------------------------
def _check_ts(value: str) -> str:
    if parse_ts_us(value) is None:
        raise ValueError("not an RFC 3339 timestamp with Z or offset (up to 9 fractional digits)")
    return value


def _check_non_blank(value: str) -> str:
    if not value or value.isspace():
        raise ValueError("must be a non-empty string")
    return value


def _check_account_id(value: Any) -> Any:
    if type(value) is int or (type(value) is str and value.isascii() and value.isdigit()):
        return value
    raise ValueError("account_id must be an integer or a string of digits")


#: An RFC 3339 instant with ``Z`` or an offset; kept as the vendor's text (see ``ts_us``).
Rfc3339 = Annotated[StrictStr, AfterValidator(_check_ts)]
NonBlankStr = Annotated[StrictStr, AfterValidator(_check_non_blank)]
#: Altcraft ``account_id``: an integer, or a string of digits (never a bool or a float).
AccountId = Annotated[Union[int, str], BeforeValidator(_check_account_id)]
#: Altcraft ids are integers in the reference; tolerate ids sent as strings.
IntId = Union[StrictInt, StrictStr]


class VendorModel(BaseModel):
    """Base of every model: unknown fields are kept (vendors add fields)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --------------------------------------------------------------------------------------------
# Activity Sync v1.0
# --------------------------------------------------------------------------------------------
class ExperienceContext(VendorModel):
    experienceId: str | None = None


class FlowContext(VendorModel):
    flowId: str | None = None
    flowName: str | None = None
    flowVersion: int | None = None


class NodeContext(VendorModel):
    nodeId: str | None = None
    nodeName: str | None = None  # "not populated yet" per the vendor
    outputName: str | None = None


class WorkflowContext(VendorModel):
    experienceContext: ExperienceContext | None = None
    flowContext: FlowContext | None = None
    nodeContext: NodeContext | None = None


class Usage(VendorModel):
    uom: str
    qty: int | float


class Attachment(VendorModel):
    filename: str | None = None


class OutboundSmsData(VendorModel):
    messageId: NonBlankStr
    usage: list[Usage] = Field(default_factory=list)
    recipient: str | None = None  # PII
    body: str | None = None  # PII


class OutboundEmailData(VendorModel):
    messageId: NonBlankStr
    usage: list[Usage] = Field(default_factory=list)
    from_: str | None = Field(default=None, alias="from")  # PII
    replyTo: str | None = None  # PII
    to: str | list[str] | None = None  # PII
    cc: str | list[str] = Field(default_factory=list)  # PII
    bcc: str | list[str] = Field(default_factory=list)  # PII
    subject: str | None = None  # PII
    body: str | None = None  # PII
    plainTextBody: str | None = None  # PII
    attachments: list[Attachment] = Field(default_factory=list)  # PII


class MessageEventData(VendorModel):
    """``data`` of message-sent / -delivered / -failed / -opened / -link-clicked."""

    messageId: NonBlankStr
    detail: str | None = None  # PII


class InboundSmsMetadata(VendorModel):
    messageId: str | None = None
    matchedType: str | None = None


class InboundSmsMatchedData(VendorModel):
    messageId: str | None = None
    sender: str | None = None  # PII
    body: str | None = None  # PII
    matchedIntentKey: str | None = None  # PII
    matchedPart: str | None = None  # PII
    matchedType: str | None = None


class InboundSmsUnmatchedData(VendorModel):
    messageId: str | None = None
    sender: str | None = None  # PII
    body: str | None = None  # PII


class ExperienceStartData(VendorModel):
    pass


class ExperienceCompleteData(VendorModel):
    endPoint: str | None = None


class ExperienceFailedData(VendorModel):
    pass


class ActionData(VendorModel):
    actionId: str | None = None
    name: str | None = None
    outcome: str | None = None
    outcomeReason: str | None = None  # PII
    usage: list[Usage] = Field(default_factory=list)


class ActivitySyncEnvelope(VendorModel):
    """Every v1.0 event: ``{version, timestamp, tenantId, workflowContext, customContext, kind, data, pii, metadata?}``."""

    version: Literal["1.0"] | None = None  # missing = 1.0 (the vendor's message-failed sample omits it)
    timestamp: Rfc3339
    tenantId: NonBlankStr
    workflowContext: WorkflowContext | None = None
    customContext: dict[str, Any] | None = None
    kind: str
    data: Any = None
    pii: list[str] = Field(default_factory=list)  # outbound-email sample has none
    metadata: dict[str, Any] | None = None

    source: ClassVar[str] = ACTIVITY_SYNC

    @property
    def ts_us(self) -> int:
        ts = parse_ts_us(self.timestamp)
        assert ts is not None  # validated
        return ts

    @property
    def tenant(self) -> str:
        return self.tenantId

    @property
    def message_id(self) -> str | None:
        mid = getattr(self.data, "messageId", None)
        return mid if isinstance(mid, str) and mid else None


class OutboundSms(ActivitySyncEnvelope):
    kind: Literal["outbound-sms"]
    data: OutboundSmsData


class OutboundEmail(ActivitySyncEnvelope):
    kind: Literal["outbound-email"]
    data: OutboundEmailData


class MessageSent(ActivitySyncEnvelope):
    kind: Literal["message-sent"]
    data: MessageEventData


class MessageDelivered(ActivitySyncEnvelope):
    kind: Literal["message-delivered"]
    data: MessageEventData


class MessageFailed(ActivitySyncEnvelope):
    kind: Literal["message-failed"]
    data: MessageEventData


class MessageOpened(ActivitySyncEnvelope):
    kind: Literal["message-opened"]
    data: MessageEventData


class MessageLinkClicked(ActivitySyncEnvelope):
    kind: Literal["message-link-clicked"]
    data: MessageEventData


class InboundSmsMatched(ActivitySyncEnvelope):
    kind: Literal["inbound-sms-matched"]
    data: InboundSmsMatchedData = Field(default_factory=InboundSmsMatchedData)
    metadata: InboundSmsMetadata | None = None  # type: ignore[assignment]


class InboundSmsUnmatched(ActivitySyncEnvelope):
    kind: Literal["inbound-sms-unmatched"]
    data: InboundSmsUnmatchedData = Field(default_factory=InboundSmsUnmatchedData)


class ExperienceStart(ActivitySyncEnvelope):
    kind: Literal["experience-start"]
    data: ExperienceStartData = Field(default_factory=ExperienceStartData)


class ExperienceComplete(ActivitySyncEnvelope):
    kind: Literal["experience-complete"]
    data: ExperienceCompleteData = Field(default_factory=ExperienceCompleteData)


class ExperienceFailed(ActivitySyncEnvelope):
    kind: Literal["experience-failed"]
    data: ExperienceFailedData = Field(default_factory=ExperienceFailedData)


class Action(ActivitySyncEnvelope):
    kind: Literal["action"]
    data: ActionData = Field(default_factory=ActionData)


ACTIVITY_SYNC_MODELS: dict[str, type[ActivitySyncEnvelope]] = {
    m.model_fields["kind"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (OutboundSms, OutboundEmail, MessageSent, MessageDelivered, MessageFailed, MessageOpened,
              MessageLinkClicked, InboundSmsMatched, InboundSmsUnmatched, ExperienceStart,
              ExperienceComplete, ExperienceFailed, Action)
}

ActivitySyncEvent = Annotated[
    Union[tuple(ACTIVITY_SYNC_MODELS.values())],  # type: ignore[valid-type]
    Field(discriminator="kind"),
]
_AS_ADAPTER: TypeAdapter = TypeAdapter(ActivitySyncEvent)


# --------------------------------------------------------------------------------------------
# Altcraft action hooks
# --------------------------------------------------------------------------------------------
class PixelData(VendorModel):
    """``event_data`` of AK-Pixel events (also the geo/device part of tracking events)."""

    ip: str | None = None  # PII
    country: str | None = None
    city: str | None = None  # PII
    postal_code: str | None = None  # PII
    region: str | None = None
    tz: str | None = None
    lat: float | None = None  # PII
    lon: float | None = None  # PII
    user_agent: str | None = None  # PII
    os: str | None = None
    browser: str | None = None
    device: str | None = None


class TrackingData(PixelData):
    message_id: IntId | None = None  # template id
    campaign_id: IntId | None = None
    segment_id: IntId | None = None
    link_url: str | None = None  # PII
    launch_id: str | None = None
    send_message_id: IntId | None = None
    extra_uid: str | None = None  # push channel only


class MessagingData(VendorModel):
    message_id: IntId | None = None
    campaign_id: IntId | None = None
    segment_id: IntId | None = None
    bounce_code: IntId | None = None
    bounce_message: str | None = None  # PII
    launch_id: str | None = None
    send_message_id: IntId | None = None
    extra_uid: str | None = None


class PromocodeData(VendorModel):
    attached: Rfc3339 | None = None
    detached: Rfc3339 | None = None
    activated: Rfc3339 | None = None
    code: str | None = None
    db_id: IntId | None = None
    loyalty_id: IntId | None = None
    profile_id: str | None = None


class SegmentData(VendorModel):
    campaign_id: IntId | None = None
    launch_id: str | None = None
    message_id: IntId | None = None
    segment_id: IntId | None = None
    send_message_id: IntId | None = None


class ProfileRef(VendorModel):
    custom_data: dict[str, Any] | None = None  # PII
    db_id: IntId | None = None
    profile_id: str | None = None


class ProfileMergeData(VendorModel):
    """``event_data`` of ``profile_merge`` and ``profile_split``."""

    destination: list[ProfileRef] = Field(default_factory=list)
    source: list[ProfileRef] = Field(default_factory=list)


class TelegramData(VendorModel):
    campaign_id: IntId | None = None
    launch_id: str | None = None
    message_id: IntId | None = None
    resource_id: IntId | None = None
    segment_id: IntId | None = None
    send_message_id: IntId | None = None


class CampErrorData(TelegramData):
    error_code: IntId | None = None
    error_text: str | None = None


class AttachLink(VendorModel):
    name: str | None = None
    url: str | None = None


class LaunchContent(VendorModel):
    message_name: str | None = None
    message_id: IntId | None = None
    suppress_id: IntId | None = None
    replyto_email: str | None = None
    replyto_name: str | None = None
    text: str | None = None
    html: str | None = None
    from_name: str | None = None
    from_email: str | None = None
    attach_links: list[AttachLink] = Field(default_factory=list)
    subject: str | None = None


class CampaignLaunchData(VendorModel):
    campaign_id: IntId | None = None
    campaign_type: str | None = None
    campaign_name: str | None = None
    campaign_sub_id: str | None = None
    data_type: str | None = None
    data_id: IntId | None = None
    launch_id: str | None = None
    content: list[LaunchContent] = Field(default_factory=list)  # PII (SPEC §8: `content`)


class MessageContent(VendorModel):
    """Hook-level ``content`` ("Add messages content" option). PII as a whole (SPEC §8)."""

    amp: str | None = None
    from_email: str | None = None
    from_name: str | None = None
    html: str | None = None
    replyto_email: str | None = None
    replyto_name: str | None = None
    subject: str | None = None
    text: str | None = None
    to_email: str | None = None
    to_name: str | None = None
    webversion_email_html: str | None = None
    webversion_email_text: str | None = None
    webversion_link: str | None = None


TRACKING_TYPES = (
    "uopen", "open", "uclick", "click", "confirm", "confirmsub", "unsub", "read", "glanced", "skimmed",
    "uclick_sms", "click_sms", "unsub_sms", "uopen_push", "open_push", "click_push", "uclick_push",
)
MESSAGING_TYPES = (
    "send", "deliv", "undeliv", "suppress", "sbounce", "hbounce", "complain",
    "send_sms", "deliv_sms", "undeliv_sms", "send_push", "deliv_push",
)
TELEGRAM_TYPES = (
    "telegram_bot_send", "telegram_bot_deliv", "telegram_bot_click", "telegram_bot_uclick",
    "telegram_bot_undeliv", "telegram_group_send", "telegram_group_deliv", "telegram_group_click",
    "telegram_group_undeliv",
)
SEGMENT_TYPES = ("segs_add", "segs_remove")
PROFILE_TYPES = ("profile_merge", "profile_split")
PROMOCODE_PREFIX = "promocode_"  # promocode_attach, promocode_detach, promocode_activate, ...


class AltcraftEnvelope(VendorModel):
    """``{event_type, event_date, account_id, is_test, event_data, custom_data, _xxh, _md5, list_id}``."""

    event_type: str
    event_date: Rfc3339  # RFC 3339, often with nanoseconds
    account_id: AccountId
    is_test: StrictBool = False
    event_data: Any = None
    custom_data: dict[str, Any] | None = None  # PII
    xxh: str | None = Field(default=None, alias="_xxh")  # PII
    md5: str | None = Field(default=None, alias="_md5")  # PII
    list_id: IntId | None = None
    content: MessageContent | None = None  # PII

    source: ClassVar[str] = ALTCRAFT

    @model_validator(mode="after")
    def _lifecycle_needs_message_id(self) -> "AltcraftEnvelope":
        # SPEC §7: lifecycle types need event_data.send_message_id; test events are valid
        # without it (they are ignored before the message id is looked at).
        if self.event_type in AC_LIFECYCLE and not self.is_test and self.message_id is None:
            raise ValueError("lifecycle event without event_data.send_message_id")
        return self

    @property
    def ts_us(self) -> int:
        ts = parse_ts_us(self.event_date)
        assert ts is not None  # validated
        return ts

    @property
    def tenant(self) -> str:
        """``str(account_id)``; a digit string is read as the integer it spells."""
        a = self.account_id
        return str(a) if type(a) is int else (a.lstrip("0") or "0")

    @property
    def message_id(self) -> str | None:
        mid = getattr(self.event_data, "send_message_id", None)
        if type(mid) is int:
            return str(mid)
        return mid if isinstance(mid, str) and mid and not mid.isspace() else None


class AltcraftTracking(AltcraftEnvelope):
    event_type: Literal[TRACKING_TYPES]  # type: ignore[valid-type]
    event_data: TrackingData | None = None


class AltcraftMessaging(AltcraftEnvelope):
    event_type: Literal[MESSAGING_TYPES]  # type: ignore[valid-type]
    event_data: MessagingData | None = None


class AltcraftTelegram(AltcraftEnvelope):
    event_type: Literal[TELEGRAM_TYPES]  # type: ignore[valid-type]
    event_data: TelegramData | None = None


class AltcraftPromocode(AltcraftEnvelope):
    event_type: Annotated[StrictStr, Field(pattern=r"^promocode_[a-z_]+$")]
    event_data: PromocodeData | None = None


class AltcraftSegment(AltcraftEnvelope):
    event_type: Literal[SEGMENT_TYPES]  # type: ignore[valid-type]
    event_data: SegmentData | None = None


class AltcraftProfile(AltcraftEnvelope):
    event_type: Literal[PROFILE_TYPES]  # type: ignore[valid-type]
    event_data: ProfileMergeData | None = None


class AltcraftCampError(AltcraftEnvelope):
    event_type: Literal["camp_error"]
    event_data: CampErrorData | None = None


class AltcraftCampaignLaunch(AltcraftEnvelope):
    event_type: Literal["campaign_launch"]
    event_data: CampaignLaunchData | None = None


_FAMILY_OF: dict[str, str] = {}
for _family, _types in (("tracking", TRACKING_TYPES), ("messaging", MESSAGING_TYPES),
                        ("telegram", TELEGRAM_TYPES), ("segment", SEGMENT_TYPES), ("profile", PROFILE_TYPES),
                        ("camp_error", ("camp_error",)), ("campaign_launch", ("campaign_launch",))):
    for _t in _types:
        _FAMILY_OF[_t] = _family

ALTCRAFT_MODELS: dict[str, type[AltcraftEnvelope]] = {
    "tracking": AltcraftTracking, "messaging": AltcraftMessaging, "telegram": AltcraftTelegram,
    "promocode": AltcraftPromocode, "segment": AltcraftSegment, "profile": AltcraftProfile,
    "camp_error": AltcraftCampError, "campaign_launch": AltcraftCampaignLaunch,
}


def altcraft_family(event_type: object) -> str | None:
    """The event_data family of an Altcraft event type (None: not a type of the reference)."""
    if type(event_type) is not str:
        return None
    if event_type.startswith(PROMOCODE_PREFIX):
        return "promocode"
    return _FAMILY_OF.get(event_type)


def _altcraft_tag(v: Any) -> str | None:
    et = v.get("event_type") if isinstance(v, dict) else getattr(v, "event_type", None)
    return altcraft_family(et)


AltcraftEvent = Annotated[
    Union[tuple(Annotated[m, Tag(tag)] for tag, m in ALTCRAFT_MODELS.items())],  # type: ignore[valid-type]
    Discriminator(_altcraft_tag),
]
_AC_ADAPTER: TypeAdapter = TypeAdapter(AltcraftEvent)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def parse_activity_sync(obj: Any) -> ActivitySyncEnvelope:
    """Validate one decoded Activity Sync v1.0 event; raises ``pydantic.ValidationError``."""
    return _AS_ADAPTER.validate_python(obj)


def parse_altcraft(obj: Any) -> AltcraftEnvelope:
    """Validate one decoded Altcraft action hook; raises ``pydantic.ValidationError``."""
    return _AC_ADAPTER.validate_python(obj)


__all__ = [
    "ACTIVITY_SYNC_MODELS", "ALTCRAFT_MODELS", "ActivitySyncEnvelope", "ActivitySyncEvent", "AltcraftEnvelope",
    "AltcraftEvent", "altcraft_family", "parse_activity_sync", "parse_altcraft",
]
