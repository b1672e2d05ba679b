# Shared pytest configuration. Real-Kafka fixtures (kafka_bootstrap, kafka_admin,
# topic_factory, unique_topics) and helpers (produce, consume_all, ...) live in
# tests/kafka_fixtures.py and are registered here as a plugin.
import os

import pytest

pytest_plugins = ["tests.kafka_fixtures"]


@pytest.fixture()
def pipeline(monkeypatch: pytest.MonkeyPatch):
    """A worker's pipeline built from default settings (no broker is contacted)."""
    for k in [k for k in os.environ if k.startswith("FUNNELWATCH_")]:
        monkeypatch.delenv(k)
    from agents.pipeline import Pipeline
    from agents.settings import Settings

    return Pipeline(Settings())
