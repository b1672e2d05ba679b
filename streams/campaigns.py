"""Campaigns and flows (SPEC §11): which campaign an event carries, the names they go by,
and the campaign rows of the funnel. Pure: no I/O, no clock.

* Campaign of an event: Activity Sync ``workflowContext.flowContext.flowId`` (a non-empty
  string) → ``flow:<flowId>``, named by ``flowName`` (a non-empty string); Altcraft
  ``event_data.campaign_id`` (an integer > 0, not a boolean) → ``altcraft:<id>``, named by the
  ``campaign_name`` of ``campaign_launch`` events. A missing or malformed value never rejects
  an event: it just carries no campaign.
* Campaign of a message: that of its applied event with the smallest ``(timestamp, campaign)``
  (kept by :class:`streams.lifecycle.MessageState`).
* Name of a campaign: the one carried by the tenant's event with the greatest timestamp among
  those naming it (ties: the smallest name), over every event not rejected or ignored
  (:func:`name_wins`, :class:`CampaignNames`: a max, so order and repeats do not matter).
"""
from __future__ import annotations

import struct

from .events import _esc, _unesc

FLOW = "flow:"
ALTCRAFT = "altcraft:"

#: (tenant, campaign) -> (ts_us, name) of the event that names it.
NameEntry = tuple[int, str]


def activity_sync_campaign(obj: dict) -> tuple[str | None, str | None]:
    """``(campaign, name)`` of an Activity Sync event (either may be None).

    SPEC §8 wins over §11: an event that declares ``flowId`` (or ``flowName``) in its own
    ``pii`` list carries no campaign (no name) - nothing it declares PII leaves the worker."""
    wc = obj.get("workflowContext")
    if type(wc) is not dict:
        return None, None
    fc = wc.get("flowContext")
    if type(fc) is not dict:
        return None, None
    flow_id = fc.get("flowId")
    if type(flow_id) is not str or not flow_id:
        return None, None
    name = fc.get("flowName")
    pii = obj.get("pii")
    if pii and type(pii) is list and ("flowId" in pii or "flowName" in pii):
        if "flowId" in pii:
            return None, None
        name = None
    return FLOW + flow_id, name if type(name) is str and name else None


def altcraft_campaign(ed: object) -> str | None:
    """The campaign of an Altcraft event's ``event_data`` (None if it carries none)."""
    if type(ed) is not dict:
        return None
    cid = ed.get("campaign_id")
    if type(cid) is int and cid > 0:  # type() is int: a boolean is not an id
        return ALTCRAFT + str(cid)
    return None


def altcraft_campaign_name(event_type: str, ed: object) -> str | None:
    """The name a ``campaign_launch`` event gives its campaign (None for every other event)."""
    if event_type != "campaign_launch" or type(ed) is not dict:
        return None
    name = ed.get("campaign_name")
    return name if type(name) is str and name else None


def name_wins(ts_us: int, name: str, current: NameEntry | None) -> bool:
    """True if ``(ts_us, name)`` names the campaign instead of ``current``: a greater timestamp,
    or the same one and a smaller name."""
    if current is None:
        return True
    cts = current[0]
    return ts_us > cts or (ts_us == cts and name < current[1])


class CampaignNames:
    """Names of campaigns, by ``(tenant, campaign)``: a max-register per key."""

    __slots__ = ("names",)

    def __init__(self) -> None:
        self.names: dict[tuple[str, str], NameEntry] = {}

    def note(self, tenant: str, campaign: str, ts_us: int, name: str) -> bool:
        """Take one naming event into account; True if the entry changed."""
        key = (tenant, campaign)
        if name_wins(ts_us, name, self.names.get(key)):
            self.names[key] = (ts_us, name)
            return True
        return False

    def name(self, tenant: str, campaign: str | None) -> str | None:
        if campaign is None:
            return None
        e = self.names.get((tenant, campaign))
        return e[1] if e is not None else None


_NAME_TS = struct.Struct("<q")


def pack_name(ts_us: int, name: str) -> bytes:
    """A names-table value: the naming event's timestamp, then the name (UTF-8)."""
    return _NAME_TS.pack(ts_us) + name.encode("utf-8", "surrogatepass")


def unpack_name(raw: bytes) -> NameEntry:
    return _NAME_TS.unpack_from(raw, 0)[0], raw[_NAME_TS.size:].decode("utf-8", "surrogatepass")


def names_key(tenant: str, campaign: str) -> str:
    """``tenant|campaign`` with ``|`` and ``%`` escaped: the key of a name in the names table."""
    return f"{_esc(tenant)}|{_esc(campaign)}"


def split_names_key(key: str) -> tuple[str, str]:
    tenant, campaign = key.split("|")
    return _unesc(tenant), _unesc(campaign)
