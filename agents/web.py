"""Web views for people and machines (registered on a Pipeline's faust app)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline


def register(pipeline: "Pipeline") -> None:
    """Register the views that are not part of the core pipeline (dashboard, messages, ingress)."""
