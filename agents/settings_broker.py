"""Broker URL lists for :mod:`agents.settings` (``FUNNELWATCH_BROKER_URL``).

``kafka://k1:9092,k2;aiokafka://k3`` style lists as faust takes them: entries without a
scheme take the first scheme given (default ``kafka://``), ports default to 9092.
Must stay importable without faust.
"""

from __future__ import annotations

__all__ = ["host_port", "split_broker_urls"]

_BROKER_SCHEMES = ("kafka", "aiokafka")
_DEFAULT_KAFKA_PORT = 9092


def split_broker_urls(value: str) -> list[str]:
    """Broker URLs with scheme from a ``,``/``;`` separated list; ValueError if invalid."""
    parts = [p.strip() for p in value.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("broker_url must name at least one broker")
    default_scheme = next((p.split("://", 1)[0] for p in parts if "://" in p), "kafka")
    urls: list[str] = []
    for part in parts:
        url = part if "://" in part else f"{default_scheme}://{part}"
        scheme = url.split("://", 1)[0].lower()
        if scheme not in _BROKER_SCHEMES:
            raise ValueError(
                f"broker_url scheme {scheme!r} not supported (use {' or '.join(_BROKER_SCHEMES)})"
            )
        if not host_port(url).split(":")[0]:
            raise ValueError(f"broker_url entry {part!r} has no host")
        urls.append(url)
    return urls


def host_port(url: str) -> str:
    """``host:port`` of a broker URL (no scheme, credentials or path; port 9092 by default)."""
    rest = url.split("://", 1)[-1]
    rest = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):  # IPv6 literal
        return rest if "]:" in rest else f"{rest}:{_DEFAULT_KAFKA_PORT}"
    return rest if ":" in rest else f"{rest}:{_DEFAULT_KAFKA_PORT}"


def is_loopback(host: str) -> bool:
    """``host`` (a web bind address) only accepts connections from this machine."""
    import ipaddress

    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False
