"""Unit tests for agents.settings (no broker, no faust import unless stated)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from agents.settings import DEFAULT_SLA_S, MASK, Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch):
    """No FUNNELWATCH_* variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("FUNNELWATCH_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults():
    s = Settings()
    assert s.app_id == "funnelwatch"
    assert s.broker_url == "kafka://127.0.0.1:19092"
    assert s.broker_urls == ["kafka://127.0.0.1:19092"]
    assert s.bootstrap_servers == "127.0.0.1:19092"
    assert s.broker_security_protocol == "PLAINTEXT"
    assert (s.topic_activity_sync, s.topic_altcraft) == ("activity-sync-events", "altcraft-action-hooks")
    assert (s.topic_alerts, s.topic_funnel_windows, s.topic_dead_letters) == (
        "message-alerts", "funnel-windows", "dead-letters",
    )
    assert (s.topic_partitions, s.topic_replication_factor) == (4, 1)
    assert (s.store, s.data_dir, s.processing_guarantee) == ("rocksdict://", ".run/worker", "at_least_once")
    assert s.window_s == 3600
    assert s.window_retention_s == s.message_retention_s == 7 * 86400
    assert s.max_event_bytes == 1048576
    assert (s.publish_interval_s, s.alert_max_lag, s.alert_tick_s) == (10.0, 1000, 1.0)
    assert s.max_tenants_label == 50
    assert s.sla_s == DEFAULT_SLA_S
    assert s.tenant_sla_s == {}
    assert (s.web_host, s.web_port, s.web_token, s.ingest_token) == ("127.0.0.1", 6066, None, None)
    assert s.web_enable_faust_views is False
    assert s.faust_prometheus_sensor is False
    assert s.log_level == "INFO"
    assert s.uses_default_hmac_key


def test_env_prefix_parsing(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_APP_ID", "fw-test")
    monkeypatch.setenv("FUNNELWATCH_WINDOW_S", "600")
    monkeypatch.setenv("FUNNELWATCH_PUBLISH_INTERVAL_S", "2.5")
    monkeypatch.setenv("FUNNELWATCH_STORE", "memory://")
    monkeypatch.setenv("FUNNELWATCH_WEB_ENABLE_FAUST_VIEWS", "true")
    monkeypatch.setenv("FUNNELWATCH_PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("FUNNELWATCH_LOG_LEVEL", "debug")
    monkeypatch.setenv("FUNNELWATCH_TOPIC_ALERTS", "alerts-x")
    monkeypatch.setenv("WINDOW_S", "1")  # no prefix: ignored
    s = Settings()
    assert s.app_id == "fw-test"
    assert s.window_s == 600
    assert s.publish_interval_s == 2.5
    assert s.store == "memory://"
    assert s.web_enable_faust_views is True
    assert s.processing_guarantee == "exactly_once"
    assert s.log_level == "DEBUG"
    assert s.topic_alerts == "alerts-x"


def test_constructor_overrides_beat_env(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_WINDOW_S", "600")
    assert Settings(window_s=60).window_s == 60


def test_isolated_ignores_env(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_WINDOW_S", "600")
    monkeypatch.setenv("FUNNELWATCH_WEB_TOKEN", "from-env")
    s = Settings.isolated(store="memory://")
    assert isinstance(s, Settings)
    assert s.window_s == 3600 and s.web_token is None and s.store == "memory://"
    assert repr(s).startswith("Settings(")


def test_get_settings_is_cached(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_APP_ID", "first")
    a = get_settings()
    monkeypatch.setenv("FUNNELWATCH_APP_ID", "second")
    assert get_settings() is a and a.app_id == "first"
    get_settings.cache_clear()
    assert get_settings().app_id == "second"


def test_frozen():
    s = Settings.isolated()
    with pytest.raises(ValidationError):
        s.window_s = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.web_token = SecretStr("x")  # type: ignore[misc]
    assert s.window_s == 3600


@pytest.mark.parametrize(
    "field, value",
    [
        ("window_s", 0),
        ("topic_partitions", 0),
        ("web_port", 70000),
        ("broker_security_protocol", "TLS"),
        ("processing_guarantee", "at_most_once"),
        ("log_level", "LOUD"),
        ("broker_url", ""),
        ("broker_url", "http://k1:9092"),
        ("broker_sasl_mechanism", "GSSAPI"),
    ],
)
def test_invalid_values_rejected(field, value):
    with pytest.raises(ValidationError):
        Settings.isolated(**{field: value})


# ----------------------------------------------------------------------------- brokers
@pytest.mark.parametrize(
    "url, urls, servers",
    [
        ("kafka://k1:9092", ["kafka://k1:9092"], "k1:9092"),
        ("kafka://k1:9092,kafka://k2:9093", ["kafka://k1:9092", "kafka://k2:9093"], "k1:9092,k2:9093"),
        ("k1:9092; kafka://k2 ,k3:1", ["kafka://k1:9092", "kafka://k2", "kafka://k3:1"], "k1:9092,k2:9092,k3:1"),
        ("aiokafka://a:1,b:2", ["aiokafka://a:1", "aiokafka://b:2"], "a:1,b:2"),
        ("k1", ["kafka://k1"], "k1:9092"),
    ],
)
def test_broker_urls(url, urls, servers):
    s = Settings.isolated(broker_url=url)
    assert s.broker_urls == urls
    assert s.bootstrap_servers == servers


def test_broker_url_from_env(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_BROKER_URL", "kafka://a:9092,kafka://b:9092")
    assert Settings().bootstrap_servers == "a:9092,b:9092"


def test_plaintext_security():
    s = Settings.isolated()
    assert s.aiokafka_security_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert s.ssl_context() is None
    assert s.faust_broker_credentials() is None


def test_aiokafka_kwargs_sasl_ssl_scram512(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_BROKER_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FUNNELWATCH_BROKER_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FUNNELWATCH_BROKER_SASL_USERNAME", "fw")
    monkeypatch.setenv("FUNNELWATCH_BROKER_SASL_PASSWORD", "s3cr3t-pw")
    s = Settings()
    kw = s.aiokafka_security_kwargs()
    assert set(kw) == {
        "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_context",
    }
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "fw"
    assert kw["sasl_plain_password"] == "s3cr3t-pw"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "s3cr3t-pw" not in repr(s)


def test_aiokafka_kwargs_sasl_plaintext_and_ssl():
    s = Settings.isolated(
        broker_security_protocol="SASL_PLAINTEXT",
        broker_sasl_mechanism="PLAIN",
        broker_sasl_username="u",
        broker_sasl_password="p",
    )
    assert s.aiokafka_security_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    kw = Settings.isolated(broker_security_protocol="SSL").aiokafka_security_kwargs()
    assert kw["security_protocol"] == "SSL" and isinstance(kw["ssl_context"], ssl.SSLContext)


def test_missing_cafile_fails_loudly(tmp_path):
    s = Settings.isolated(broker_security_protocol="SSL", broker_ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(OSError):
        s.ssl_context()


@pytest.mark.parametrize("missing", ["broker_sasl_mechanism", "broker_sasl_username", "broker_sasl_password"])
def test_sasl_requires_mechanism_and_credentials(missing):
    kwargs = {
        "broker_security_protocol": "SASL_SSL",
        "broker_sasl_mechanism": "SCRAM-SHA-256",
        "broker_sasl_username": "u",
        "broker_sasl_password": "topsecret-123",
    }
    del kwargs[missing]
    with pytest.raises(ValidationError) as exc:
        Settings.isolated(**kwargs)
    assert missing in str(exc.value)
    assert "topsecret-123" not in str(exc.value)


def test_faust_credentials_match_aiokafka_kwargs():
    """Our faust credentials translate (via faust's own driver) to our aiokafka kwargs."""
    pytest.importorskip("faust")
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    s = Settings.isolated(
        broker_security_protocol="SASL_SSL",
        broker_sasl_mechanism="SCRAM-SHA-512",
        broker_sasl_username="fw",
        broker_sasl_password="pw",
    )
    creds = s.faust_broker_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    got = dict(credentials_to_aiokafka_auth(creds))
    ours = s.aiokafka_security_kwargs()
    assert isinstance(got.pop("ssl_context"), ssl.SSLContext)
    ours.pop("ssl_context")
    assert got == ours

    plain = Settings.isolated(
        broker_security_protocol="SASL_PLAINTEXT",
        broker_sasl_mechanism="SCRAM-SHA-256",
        broker_sasl_username="fw",
        broker_sasl_password="pw",
    ).faust_broker_credentials()
    auth = credentials_to_aiokafka_auth(plain)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"

    ssl_creds = Settings.isolated(broker_security_protocol="SSL").faust_broker_credentials()
    assert isinstance(ssl_creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(ssl_creds)["security_protocol"] == "SSL"


def test_module_does_not_import_faust():
    code = (
        "import sys, agents.settings, agents.metrics\n"
        "s = agents.settings.Settings.isolated(broker_security_protocol='SSL')\n"
        "s.aiokafka_security_kwargs(); s.redacted_dict()\n"
        "bad = sorted(m for m in sys.modules if m == 'faust' or m.startswith('faust.'))\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FUNNELWATCH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=60)


# --------------------------------------------------------------------------------- SLAs
def test_sla_env_json_merges_over_defaults(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_SLA_S", '{"sms": {"queued": 60}, "email": {"sent": 7200}}')
    s = Settings()
    assert s.sla_s["sms"] == {"queued": 60, "sent": 900}
    assert s.sla_s["email"] == {"queued": 300, "sent": 7200}
    for channel in ("push", "telegram", "unknown"):
        assert s.sla_s[channel] == DEFAULT_SLA_S[channel]
    # the module defaults were not mutated by the merge
    assert DEFAULT_SLA_S["sms"]["queued"] == 120


def test_sla_nested_env(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_SLA_S__PUSH__SENT", "42")
    s = Settings()
    assert s.sla_s["push"] == {"queued": 120, "sent": 42}
    assert s.sla_s["sms"] == DEFAULT_SLA_S["sms"]


def test_sla_constructor_merges_and_instances_are_independent():
    a = Settings.isolated(sla_s={"telegram": {"sent": 10}})
    b = Settings.isolated()
    assert a.sla_s["telegram"] == {"queued": 120, "sent": 10}
    assert b.sla_s == DEFAULT_SLA_S
    assert a.sla_s["sms"] is not b.sla_s["sms"]


@pytest.mark.parametrize(
    "value",
    [
        {"whatsapp": {"queued": 1}},
        {"sms": {"delivered": 1}},
        {"sms": {"queued": 0}},
        {"sms": {"queued": -5}},
        {"sms": 60},
        "not json",
    ],
)
def test_sla_invalid(value):
    with pytest.raises(ValidationError):
        Settings.isolated(sla_s=value)


def test_tenant_sla_and_lookup(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_SLA_S", '{"sms": {"queued": 60}}')
    monkeypatch.setenv("FUNNELWATCH_TENANT_SLA_S", '{"Acme": {"sms": {"sent": 30}}}')
    s = Settings()
    assert s.tenant_sla_s == {"Acme": {"sms": {"sent": 30}}}
    assert s.sla_seconds("sms", "sent", "Acme") == 30  # tenant override (case kept)
    assert s.sla_seconds("sms", "queued", "Acme") == 60  # falls back to channel SLA
    assert s.sla_seconds("sms", "sent", "other-tenant") == 900
    assert s.sla_seconds("email", "queued") == 300
    assert s.sla_seconds("carrier-pigeon", "sent") == 3600  # unknown channel -> "unknown"
    assert s.sla_seconds("sms", "delivered") is None  # not an SLA stage


def test_tenant_sla_invalid():
    with pytest.raises(ValidationError):
        Settings.isolated(tenant_sla_s={"t": {"fax": {"sent": 1}}})
    with pytest.raises(ValidationError):
        Settings.isolated(tenant_sla_s={"t": {"sms": {"sent": 0}}})


# ------------------------------------------------------------------------------ secrets
SECRETS = {
    "broker_sasl_password": "sasl-pw-AAA",
    "web_token": "web-token-BBB",
    "ingest_token": "ingest-token-CCC",
    "hmac_key": "hmac-key-DDD",
}


def _secret_settings() -> Settings:
    return Settings.isolated(
        broker_security_protocol="SASL_SSL",
        broker_sasl_mechanism="PLAIN",
        broker_sasl_username="user",
        **SECRETS,
    )


def test_secrets_masked_in_repr_str_and_redacted_dict():
    s = _secret_settings()
    shown = [repr(s), str(s), repr(s.redacted_dict()), s.model_dump_json()]
    for text in shown:
        for secret in SECRETS.values():
            assert secret not in text
    red = s.redacted_dict()
    for name in SECRETS:
        assert red[name] == MASK
    # everything else is there, as plain data
    assert set(red) == set(Settings.model_fields)
    assert red["broker_sasl_username"] == "user"
    assert red["sla_s"] == DEFAULT_SLA_S
    # the values are still usable
    assert s.hmac_key.get_secret_value() == "hmac-key-DDD"
    assert not s.uses_default_hmac_key


def test_redacted_dict_keeps_unset_secrets_none_and_copies():
    s = Settings.isolated()
    red = s.redacted_dict()
    assert red["web_token"] is None and red["broker_sasl_password"] is None
    assert red["hmac_key"] == MASK
    red["sla_s"]["sms"]["queued"] = 1
    assert s.sla_s["sms"]["queued"] == 120


def test_secrets_from_env_masked(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_WEB_TOKEN", "env-token-EEE")
    monkeypatch.setenv("FUNNELWATCH_HMAC_KEY", "env-hmac-FFF")
    s = Settings()
    assert s.web_token is not None and s.web_token.get_secret_value() == "env-token-EEE"
    for text in (repr(s), str(s), repr(s.redacted_dict())):
        assert "env-token-EEE" not in text and "env-hmac-FFF" not in text


def test_validation_errors_do_not_echo_secrets():
    with pytest.raises(ValidationError) as exc:
        Settings.isolated(web_port="nope", web_token="tok-GGG", hmac_key="key-HHH")
    assert "tok-GGG" not in str(exc.value) and "key-HHH" not in str(exc.value)
