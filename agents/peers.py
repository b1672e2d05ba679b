"""The other workers of the group, and the one HTTP client that asks them.

Peers are found through faust's assignor metadata (every worker's canonical URL). Views
complete across workers by scatter-gather (:meth:`Peers.gather`: ``GET path?local=1`` on
every other worker) and answer a message from its owner (:meth:`Peers.forward`: one hop).
"""
from __future__ import annotations

import asyncio
from typing import Any

from yarl import URL

from .settings import Settings

FORWARDED_HEADER = "X-Funnelwatch-Forwarded"
SERVED_BY_HEADER = "X-Funnelwatch-Served-By"
GATHER_TIMEOUT_S = 5.0
FORWARD_TIMEOUT_S = 5.0


def ident(url: Any) -> tuple[str, int]:
    u = URL(str(url))
    return (u.host or "", int(u.port or 80))


class PeerError(RuntimeError):
    """A peer did not answer, or not with 200."""


class Peers:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    @property
    def me(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    def urls(self) -> list[str]:
        me = self.me
        hosts = {str(h).rstrip("/") for h in self.app.router.tables_metadata()}
        return sorted(h for h in hosts if h != me)

    def _headers(self) -> dict[str, str]:
        token = self.settings.web_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}

    async def gather(self, path: str, params: dict[str, str]) -> list[dict]:
        """GET ``path?local=1`` on every other worker; raises :class:`PeerError` if one fails."""
        peers = self.urls()
        if not peers:
            return []
        import aiohttp

        params = dict(params, local="1")
        headers = self._headers()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GATHER_TIMEOUT_S)) as http:
            async def one(url: str) -> dict:
                async with http.get(f"{url}{path}", params=params, headers=headers) as resp:
                    if resp.status != 200:
                        raise PeerError(f"peer {url} answered {resp.status}")
                    return await resp.json()
            return list(await asyncio.gather(*(one(u) for u in peers)))

    async def forward(self, dest: Any, rel_url: str) -> tuple[int, bytes, str, str]:
        """``(status, body, content type, served by)`` of a GET on the worker ``dest``, which
        answers locally (the forwarded header stops a second hop)."""
        import aiohttp

        headers = {FORWARDED_HEADER: self.me, "Accept": "application/json", **self._headers()}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as http:
            async with http.get(str(dest).rstrip("/") + rel_url, headers=headers) as resp:
                body = await resp.read()
                return (resp.status, body, resp.content_type or "application/json",
                        resp.headers.get(SERVED_BY_HEADER, str(dest)))
