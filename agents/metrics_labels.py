"""Bounded tenant label values for :mod:`agents.metrics` (SPEC §10 cardinality cap).

This module must not import faust.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["OTHER", "TenantLabeler"]

#: Label value for kinds the pipeline does not know and for tenants over the cap.
OTHER = "other"


class TenantLabeler:
    """Maps tenant ids to bounded label values: the first ``max_tenants`` distinct
    tenants keep their id, later ones become ``"other"``.

    ``on_overflow(metric)`` is called for every observation mapped to ``"other"``.
    """

    __slots__ = ("max_tenants", "_admitted", "_on_overflow")

    def __init__(
        self, max_tenants: int, on_overflow: Callable[[str], None] | None = None
    ) -> None:
        if max_tenants < 0:
            raise ValueError("max_tenants must be >= 0")
        self.max_tenants = max_tenants
        self._admitted: set[str] = set()
        self._on_overflow = on_overflow

    def label(self, tenant: str, metric: str = "") -> str:
        """The label value for ``tenant`` (admits it if there is room; else counts the overflow)."""
        out = self.admit(tenant)
        if tenant not in self._admitted and self._on_overflow is not None:
            self._on_overflow(metric)
        return out

    __call__ = label

    def admit(self, tenant: str) -> str:
        """Like :meth:`label` (admits ``tenant`` if there is room) but never counts an
        overflow: for collectors that re-render the same values on every scrape.

        Use this, not :meth:`is_overflowing`, to pick a label value: ``is_overflowing``
        admits nothing, so on its own it lets more than ``max_tenants`` tenants through.
        """
        admitted = self._admitted
        if tenant in admitted:
            return tenant
        if len(admitted) < self.max_tenants:
            admitted.add(tenant)
            return tenant
        return OTHER

    def is_overflowing(self, tenant: str) -> bool:
        """True if ``tenant`` would be (or is) reported as ``other``; admits nothing."""
        return tenant not in self._admitted and len(self._admitted) >= self.max_tenants

    @property
    def admitted(self) -> frozenset[str]:
        return frozenset(self._admitted)
