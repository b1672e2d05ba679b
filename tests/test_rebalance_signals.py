"""The worker's rebalance sequence (agents/pipeline.py), no broker: faust sends
``on_rebalance_complete`` also for a recovery that a newer rebalance cut short, before it
checks the generation; that completion neither rebuilds the derived state nor lets records in."""
from __future__ import annotations

import asyncio

import pytest


def test_only_the_current_rebalance_completion_lets_records_in(pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    p = pipeline
    rebuilds: list[int] = []
    monkeypatch.setattr(p, "rebuild", lambda: rebuilds.append(1))
    recovery = p.app.tables.recovery

    async def run() -> None:
        await p._on_revoked(p.app, set())
        await p._on_rebalance_complete(p.app)  # revoked, nothing assigned since: a cut-short recovery
        assert not p.commit.accepting and not rebuilds
        await p._on_assigned(p.app, set())
        recovery.signal_recovery_start.set()  # the assignment's recovery has yet to start
        await p._on_rebalance_complete(p.app)
        assert not p.commit.accepting and not rebuilds
        recovery.signal_recovery_start.clear()
        await p._on_rebalance_complete(p.app)  # the current one
        assert p.commit.accepting and rebuilds == [1]
        await p._on_revoked(p.app, set())
        assert not p.commit.accepting

    asyncio.run(run())
