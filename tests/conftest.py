# Shared pytest configuration. Real-Kafka fixtures (kafka_bootstrap, kafka_admin,
# topic_factory, unique_topics) and helpers (produce, consume_all, ...) live in
# tests/kafka_fixtures.py and are registered here as a plugin.
pytest_plugins = ["tests.kafka_fixtures"]
