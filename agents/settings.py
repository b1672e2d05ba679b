"""Runtime configuration for funnelwatch (environment-driven, immutable).

Every setting can be given as an environment variable with the ``FUNNELWATCH_`` prefix,
e.g. ``FUNNELWATCH_BROKER_URL=kafka://k1:9092,kafka://k2:9092`` or
``FUNNELWATCH_WINDOW_S=600``.  Units are part of the field names (``_s`` = seconds).

Dict settings take JSON::

    FUNNELWATCH_SLA_S='{"sms": {"queued": 60}}'
    FUNNELWATCH_TENANT_SLA_S='{"acme": {"email": {"sent": 7200}}}'

or the nested form ``FUNNELWATCH_SLA_S__SMS__QUEUED=60`` (note: environment variable
*names* are case-insensitive, so nested-form keys arrive lower-cased; use the JSON form
for case-sensitive tenant ids).  ``sla_s`` overrides are merged per channel and stage
onto the SPEC §6 defaults, so only the values that change need to be given.

This module must stay importable without faust (the CLI and fast tests import it);
faust is only imported lazily inside :meth:`Settings.faust_broker_credentials`.
"""

from __future__ import annotations

import json
import os
import ssl
from functools import lru_cache
from typing import Any, Literal, Mapping

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.kinds import CHANNELS
from streams.stuck import DEFAULT_SLA_S, STUCK_STAGES, SlaTable, check_sla_keys, check_sla_seconds

from .settings_broker import host_port, split_broker_urls
from .settings_parse import _decode_json, _domain_check, _sla_name

__all__ = [
    "CHANNELS",
    "DEFAULT_SLA_S",
    "MASK",
    "SLA_STAGES",
    "Settings",
    "get_settings",
]

#: How secrets are shown by :meth:`Settings.redacted_dict` (same as pydantic's SecretStr).
MASK = "**********"

# CHANNELS (SPEC §3), the stuck stages and DEFAULT_SLA_S (SPEC §6) are the domain core's:
# re-exported here, defined once in streams.kinds / streams.stuck.
SLA_STAGES: tuple[str, ...] = STUCK_STAGES

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")
_DEFAULT_HMAC_KEY = "change-me-in-production"


STORE_SCHEMES = ("rocksdict", "rocksdb", "memory")


class Settings(BaseSettings):
    """All funnelwatch settings.  Immutable: build a new instance to change anything.

    ``Settings(**overrides)`` reads the environment and applies ``overrides`` on top;
    :meth:`isolated` ignores the environment (for hermetic tests).
    """

    model_config = SettingsConfigDict(
        env_prefix="FUNNELWATCH_",
        frozen=True,
        env_nested_delimiter="__",
        extra="ignore",
        # Validation errors must never echo inputs: they may hold passwords/tokens.
        hide_input_in_errors=True,
    )

    # -- app / broker -----------------------------------------------------------------
    app_id: str = Field("funnelwatch", min_length=1)
    #: One or more broker URLs, separated by ``,`` or ``;``.  Entries without a scheme
    #: take the first scheme given (default ``kafka://``), as faust does.
    broker_url: str = "kafka://127.0.0.1:19092"

    broker_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    broker_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    broker_sasl_username: str | None = None
    broker_sasl_password: SecretStr | None = None
    #: CA bundle for SSL / SASL_SSL; ``None`` = the system trust store.
    broker_ssl_cafile: str | None = None

    # -- topics -------------------------------------------------------------------------
    topic_activity_sync: str = Field("activity-sync-events", min_length=1)
    topic_altcraft: str = Field("altcraft-action-hooks", min_length=1)
    topic_alerts: str = Field("message-alerts", min_length=1)
    topic_funnel_windows: str = Field("funnel-windows", min_length=1)
    topic_dead_letters: str = Field("dead-letters", min_length=1)
    topic_partitions: int = Field(4, ge=1)
    topic_replication_factor: int = Field(1, ge=1)

    # -- state ----------------------------------------------------------------------------
    #: faust table store URL: ``rocksdict://`` in production, ``memory://`` in tests.
    store: str = "rocksdict://"
    #: How long ``funnelwatch worker`` waits for the broker before exiting (status 3).
    broker_wait_s: float = Field(30.0, ge=0)
    data_dir: str = ".run/worker"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"

    # -- domain (SPEC §5, §6, §7) -----------------------------------------------------------
    window_s: int = Field(3600, gt=0)
    window_retention_s: int = Field(7 * 86400, gt=0)
    message_retention_s: int = Field(7 * 86400, gt=0)
    max_event_bytes: int = Field(1048576, gt=0)
    publish_interval_s: float = Field(10.0, gt=0)
    alert_max_lag: int = Field(1000, ge=0)
    alert_tick_s: float = Field(1.0, gt=0)
    # Message states past ``message_retention_s`` are found by sweeping each owned partition's
    # store in slices, each partition once per this period (at most half the retention): no
    # index entry in RAM per message.
    expiry_sweep_s: float = Field(600.0, gt=0)
    # A partition whose commit point has not moved for this long while records are waiting
    # (a record faust dropped was the last one): re-read from the commit point.
    offset_stall_s: float = Field(10.0, gt=0)
    # After taking over partitions, the alerts topic is re-read for alerts whose marks were
    # lost (acked, then a crash before the changelog write): from the partition's last
    # changelog write minus this margin, at most this far back, giving up after this long.
    alert_reconcile_margin_s: float = Field(120.0, ge=0)
    alert_reconcile_lookback_s: float = Field(86400.0, gt=0)
    alert_reconcile_timeout_s: float = Field(30.0, gt=0)
    # A dead letter not acked within this is sent again (3 tries), then the ingest agent stops.
    dead_letter_ack_timeout_s: float = Field(10.0, gt=0)
    max_tenants_label: int = Field(50, ge=0)
    # Hot path: records are processed a fetch at a time, in batches of up to this many (more
    # fetched meanwhile wait for the next batch). ``batch_within_s``: the wait of faust's
    # ``take_events`` in the bench's faust floor app; the worker does not wait to fill a batch.
    batch_max_events: int = Field(1000, ge=1)
    batch_within_s: float = Field(0.05, gt=0)
    # The longest a fetch request waits on the broker for data (faust's own: 1500 ms). The
    # consumer keeps one request in flight: a long wait on caught-up partitions delays the
    # others' next records.
    fetch_max_wait_ms: int = Field(100, ge=0, le=30000)
    # Producer batching: repartition and changelog records ride in few produce requests.
    producer_linger_s: float = Field(0.01, ge=0)
    producer_max_batch_bytes: int = Field(262144, ge=1024)
    # Group membership: how fast a crashed worker's partitions move to the others.
    broker_session_timeout_s: float = Field(30.0, gt=0)
    broker_heartbeat_interval_s: float = Field(3.0, gt=0)

    # -- SLAs (SPEC §6) -------------------------------------------------------------------
    #: channel -> stage (``queued``/``sent``) -> seconds; overrides merge onto the defaults.
    sla_s: dict[str, dict[str, int]] = Field(default_factory=lambda: json.loads(json.dumps(DEFAULT_SLA_S)))
    #: tenant -> channel -> stage -> seconds; sparse, falls back to :attr:`sla_s`.
    tenant_sla_s: dict[str, dict[str, dict[str, int]]] = Field(default_factory=dict)

    # -- web ------------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    #: Bearer token required by every web view except health checks (``None`` = open).
    web_token: SecretStr | None = None
    web_enable_faust_views: bool = False
    #: A non-loopback ``web_host`` without ``web_token`` is refused unless this says it is meant.
    web_allow_anonymous: bool = False
    ingest_token: SecretStr | None = None
    #: ``POST /ingest/altcraft`` requests per second and burst per client address (0 = no limit);
    #: loopback clients are not limited unless ``ingest_rate_limit_loopback``.
    ingest_rate_per_s: float = Field(20.0, ge=0)
    ingest_rate_burst: int = Field(40, ge=1)
    ingest_rate_limit_loopback: bool = False

    # -- PII (SPEC §8) --------------------------------------------------------------------
    #: Secret for keyed HMAC-SHA256 pseudonyms.  Change it in production.
    hmac_key: SecretStr = SecretStr(_DEFAULT_HMAC_KEY)

    # -- observability ------------------------------------------------------------------
    #: Also register faust's own Prometheus sensor (off by default; SPEC §10 metrics are ours).
    faust_prometheus_sensor: bool = False
    log_level: str = "INFO"
    #: ``text`` (faust's lines) or ``json`` (one object per line: agents/logjson.py).
    log_format: Literal["text", "json"] = "text"

    # ------------------------------------------------------------------------ validators
    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        urls = split_broker_urls(value)  # raises ValueError on bad input
        return ",".join(urls)

    @field_validator("broker_sasl_mechanism", mode="before")
    @classmethod
    def _blank_mechanism_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper().replace("_", "-")
            return value or None
        return value

    @field_validator("broker_security_protocol", mode="before")
    @classmethod
    def _upper_protocol(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        if value.partition("://")[0].lower() not in STORE_SCHEMES or "://" not in value:
            raise ValueError(f"unknown store (expected one of {', '.join(f'{x}://' for x in STORE_SCHEMES)})")
        return value

    @field_validator("sla_s", mode="before")
    @classmethod
    def _merge_sla_defaults(cls, value: Any) -> dict[str, dict[str, Any]]:
        value = _decode_json(value, "sla_s")
        if value is None:
            value = {}
        overrides = _domain_check(check_sla_keys, value, "sla_s", key=_sla_name)
        merged: dict[str, dict[str, Any]] = {ch: dict(st) for ch, st in DEFAULT_SLA_S.items()}
        for channel, stages in overrides.items():
            merged[channel].update(stages)
        return merged

    @field_validator("tenant_sla_s", mode="before")
    @classmethod
    def _check_tenant_sla(cls, value: Any) -> dict[str, dict[str, dict[str, Any]]]:
        value = _decode_json(value, "tenant_sla_s")
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError("tenant_sla_s must be an object of tenant -> channel -> stage -> seconds")
        return {
            str(tenant): _domain_check(
                check_sla_keys, channels, f"tenant_sla_s[{tenant!r}]", key=_sla_name
            )
            for tenant, channels in value.items()
        }

    @field_validator("sla_s", mode="after")
    @classmethod
    def _positive_slas(cls, value: dict[str, Any]) -> dict[str, Any]:
        _domain_check(check_sla_seconds, value)
        return value

    @field_validator("tenant_sla_s", mode="after")
    @classmethod
    def _positive_tenant_slas(cls, value: dict[str, Any]) -> dict[str, Any]:
        for tenant, channels in value.items():
            _domain_check(check_sla_seconds, channels, tenant)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            if value not in _LOG_LEVELS:
                raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if self.broker_security_protocol.startswith("SASL_"):
            missing = [
                name
                for name, val in (
                    ("broker_sasl_mechanism", self.broker_sasl_mechanism),
                    ("broker_sasl_username", self.broker_sasl_username),
                    ("broker_sasl_password", self.broker_sasl_password),
                )
                if val is None
            ]
            if missing:
                raise ValueError(
                    f"broker_security_protocol={self.broker_security_protocol} needs "
                    + ", ".join(missing)
                )
        return self

    # ----------------------------------------------------------------------- constructors
    @classmethod
    def isolated(cls, **overrides: Any) -> Settings:
        """Build settings from defaults + ``overrides`` only, ignoring the environment."""
        return _IsolatedSettings(**overrides)

    # ------------------------------------------------------------------------ broker
    @property
    def broker_urls(self) -> list[str]:
        """Broker URLs with scheme, e.g. ``["kafka://k1:9092", "kafka://k2:9092"]``."""
        return split_broker_urls(self.broker_url)

    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port...]`` for raw aiokafka clients (no scheme)."""
        return ",".join(host_port(url) for url in self.broker_urls)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for SSL / SASL_SSL (verifies the server), else ``None``."""
        if self.broker_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        return ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH, cafile=self.broker_ssl_cafile
        )

    def faust_broker_credentials(self) -> Any:
        """Credentials for ``faust.App(broker_credentials=...)``; ``None`` for PLAINTEXT."""
        protocol = self.broker_security_protocol
        if protocol == "PLAINTEXT":
            return None
        import faust  # lazy: keep this module importable without faust

        if protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(
            username=self.broker_sasl_username,
            password=_reveal(self.broker_sasl_password),
            mechanism=self.broker_sasl_mechanism,
            ssl_context=self.ssl_context(),  # None for SASL_PLAINTEXT
        )

    def aiokafka_security_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer/Consumer/AdminClient(...)``.

        Only the keys relevant to the protocol are present (aiokafka defaults the rest).
        The dict holds the clear-text SASL password: never log it.
        """
        protocol = self.broker_security_protocol
        kwargs: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            kwargs["sasl_mechanism"] = self.broker_sasl_mechanism
            kwargs["sasl_plain_username"] = self.broker_sasl_username
            kwargs["sasl_plain_password"] = _reveal(self.broker_sasl_password)
        return kwargs

    # -------------------------------------------------------------------------- domain
    def sla_table(self) -> SlaTable:
        """The domain SLA table for these settings (built on each call: keep the result)."""
        return SlaTable(self.sla_s, self.tenant_sla_s)

    def sla_seconds(self, channel: str, stage: str, tenant: str | None = None) -> int | None:
        """SLA for a message stuck at ``stage`` (``queued``/``sent``); ``None`` otherwise.

        Lookup order: tenant override for the channel, the channel default, then the
        ``unknown`` channel (for a channel name not in :data:`CHANNELS`, any tenant).
        Answers from :meth:`sla_table`, so prefer that one for repeated lookups.
        """
        if stage not in STUCK_STAGES:
            return None
        if channel not in CHANNELS:
            return self.sla_s["unknown"][stage]
        return self.sla_table().sla_s(tenant, channel, stage)

    @property
    def uses_default_hmac_key(self) -> bool:
        """True while ``hmac_key`` is the shipped placeholder (warn about it at startup)."""
        return self.hmac_key.get_secret_value() == _DEFAULT_HMAC_KEY

    # -------------------------------------------------------------------------- display
    def redacted_dict(self) -> dict[str, Any]:
        """All settings as plain data, secrets shown as ``"**********"`` (``None`` stays ``None``)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = MASK
            elif isinstance(value, dict):
                out[name] = json.loads(json.dumps(value))  # deep copy
            else:
                out[name] = value
        return out


class _IsolatedSettings(Settings):
    """:class:`Settings` that reads only init arguments (no env, no dotenv, no secrets dir)."""

    model_config = SettingsConfigDict(title="Settings")

    def __repr_name__(self) -> str:
        return "Settings"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):  # type: ignore[override]
        return (init_settings,)


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment and, if ``FUNNELWATCH_SECRETS_DIR`` names a
    directory, from files in it (``funnelwatch_web_token``, ...; cached)."""
    return Settings(_secrets_dir=os.environ.get("FUNNELWATCH_SECRETS_DIR") or None)
