"""Exposition of a metrics registry (``/metrics``) and small read-back helpers.

This module must not import faust.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["metric_names", "render", "sample_value"]


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """Exposition body and its Content-Type.

    Without ``accept`` (or for ``text/plain``) this is the classic Prometheus text format
    from ``generate_latest`` served as ``text/plain; version=0.0.4`` (what every Prometheus
    version parses); pass the request's ``Accept`` header to serve OpenMetrics to scrapers
    that ask for it.  Content negotiation is prometheus_client's ``choose_encoder``.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def sample_value(
    registry: CollectorRegistry, name: str, labels: Mapping[str, str] | None = None
) -> float | None:
    """Test/debug helper: the current value of one exposed sample, or ``None``."""
    return registry.get_sample_value(name, dict(labels or {}))


def metric_names(registry: CollectorRegistry) -> Iterable[str]:
    """Test/debug helper: every exposed sample name in ``registry``."""
    return sorted({s.name for m in registry.collect() for s in m.samples})
