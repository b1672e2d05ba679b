"""Funnel rows across workers: this worker's share plus every peer's (scatter-gather), and
their publication to the ``funnel-windows`` topic (coalesced, tombstones for dropped rows)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import orjson

from streams.campaigns import CampaignNames
from streams.lifecycle import VECTOR_FIELDS
from streams.report import campaign_report_rows
from streams.timeparse import US_PER_S, format_ts_us, parse_ts_us

from .funnel import ANY_CAMPAIGN, FunnelShare, merge_windows, rows_json
from .peers import Peers

log = logging.getLogger("funnelwatch")

WindowRows = dict[tuple[int, str, str], list[int]]
CampaignRows = dict[tuple[int, str, str, "str | None"], list[int]]
FILTERS = ("tenant", "channel", "from", "to")
CAMPAIGN_FILTERS = FILTERS + ("campaign",)
NO_CAMPAIGN = "null"  # ``campaign=null``: the rows of messages without a campaign


def campaign_filter(q: Mapping[str, str]) -> object:
    """The ``campaign`` query parameter: a campaign id, ``null`` (no campaign), or absent (all)."""
    v = q.get("campaign")
    if not v:
        return ANY_CAMPAIGN
    return None if v == NO_CAMPAIGN else v


def parse_filters(q: Mapping[str, str]) -> dict[str, Any]:
    """``tenant``, ``channel``, ``from``, ``to`` of a query as :meth:`FunnelShare.windows`
    arguments; ValueError naming a bad time."""
    out: dict[str, Any] = {"tenant": q.get("tenant") or None, "channel": q.get("channel") or None,
                           "from_us": None, "to_us": None}
    for name, field in (("from", "from_us"), ("to", "to_us")):
        if q.get(name):
            v = parse_ts_us(q[name])
            if v is None:
                raise ValueError(f"query parameter {name!r} must be an RFC 3339 timestamp with zone")
            out[field] = v
    return out


class Windows:
    def __init__(self, share: Callable[[], FunnelShare], peers: Peers, topic: Any, retention_s: float,
                 clock: Callable[[], int], names: Callable[[], CampaignNames] = CampaignNames) -> None:
        self._share = share
        self._names = names
        self.peers = peers
        self.topic = topic
        self.retention_us = int(retention_s * US_PER_S)
        self.clock = clock
        self.last_published: dict[tuple[int, str, str], list[int]] = {}

    def local(self, q: Mapping[str, str]) -> WindowRows:
        """This worker's rows (``parse_filters(q)``), without rows past ``window_retention``
        (unchanged since before it, by processing time)."""
        return self._share().windows(**parse_filters(q), min_touched_us=self.clock() - self.retention_us)

    async def gather(self, q: Mapping[str, str]) -> WindowRows:
        """Every worker's rows; raises if a peer does not answer."""
        params = {k: v for k, v in q.items() if k in FILTERS}
        parts = [self.local(q)]
        for body in await self.peers.gather("/funnel", params):
            parts.append({(parse_ts_us(r["window_start"]), r["tenant"], r["channel"]): [r[f] for f in VECTOR_FIELDS]
                          for r in body["windows"]})
        return merge_windows(parts)

    def local_campaigns(self, q: Mapping[str, str]) -> tuple[CampaignRows, CampaignNames]:
        """This worker's campaign rows (SPEC §11) and the names it holds, both filtered by ``q``."""
        f = parse_filters(q)
        camp = campaign_filter(q)
        rows = self._share().campaigns(**f, campaign=camp, min_touched_us=self.clock() - self.retention_us)
        names = CampaignNames()
        tenant = f["tenant"]
        names.names = {k: v for k, v in self._names().names.items()
                       if (tenant is None or k[0] == tenant) and (camp is ANY_CAMPAIGN or k[1] == camp)}
        return rows, names

    async def gather_campaigns(self, q: Mapping[str, str]) -> list[dict]:
        """SPEC §11 rows across every worker (counts summed, names from whichever worker holds
        them); raises if a peer does not answer."""
        params = {k: v for k, v in q.items() if k in CAMPAIGN_FILTERS}
        params["by"] = "campaign"
        rows, names = self.local_campaigns(q)
        parts = [rows]
        for body in await self.peers.gather("/funnel", params):
            parts.append({(parse_ts_us(r["window_start"]), r["tenant"], r["channel"], r["campaign"]):
                          [r[f] for f in VECTOR_FIELDS] for r in body["campaigns"]})
            for tenant, campaign, ts, name in body["names"]:
                names.note(tenant, campaign, ts, name)
        return campaign_report_rows(merge_windows(parts), names)

    async def publish(self) -> None:
        """Publish changed rows; a tombstone for each row that left (retention or expiry)."""
        try:
            windows = await self.gather({})
        except Exception as exc:  # noqa: BLE001 - a peer is down or rebalancing: try next interval
            log.warning("funnel-windows publish skipped: %s", exc)
            return
        for k, vec in sorted(windows.items()):
            if self.last_published.get(k) == vec:
                continue
            row = rows_json({k: vec})[0] if vec[0] else None
            key = f"{row['window_start'] if row else format_ts_us(k[0])}|{k[1]}|{k[2]}".encode()
            await self.topic.send(key=key, value=orjson.dumps(row) if row else None)
            self.last_published[k] = vec
        for k in list(self.last_published):
            if k not in windows:  # dropped (retention or expiry): tombstone for compacted consumers
                await self.topic.send(key=f"{format_ts_us(k[0])}|{k[1]}|{k[2]}".encode(), value=None)
                del self.last_published[k]
