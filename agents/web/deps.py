"""What the web views may see of the worker: a narrow, read-only dependencies object.

Views never reach into the pipeline: they get this object, built by the composition root
(``agents.pipeline``), with plain values and read-only callables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry

from streams.stuck import SlaTable

from ..peers import Peers
from ..settings import Settings
from ..windows import Windows


@dataclass(frozen=True)
class WebDeps:
    settings: Settings
    app: Any  # the faust app: web server, router (partition owners), producer (ingress), agents (health)
    registry: CollectorRegistry
    peers: Peers
    windows: Windows
    slas: SlaTable
    window_us: int
    table_name: str  # the messages table (router key -> owner)
    ingress_topic: str  # where POST /ingest/altcraft writes
    ready: Callable[[], bool]  # derived state built, records being processed
    load: Callable[[bytes], bytes | None]  # a stored message state
    open_alerts: Callable[[], Iterable[dict]]  # this worker's open stuck alerts
    is_open: Callable[[bytes], bool]  # the message has an open stuck alert here
    inflight: Callable[[], int]
    lags: Callable[[], dict[str, int]]
