"""What a worker checks before it connects to anything: the configuration, accidental
exposure of the web views, and the store's package. Each problem is one line for stderr;
the worker then exits with status 2."""
from __future__ import annotations

import importlib.util
import re

from pydantic import ValidationError
from pydantic_settings import SettingsError

from .settings import Settings, get_settings
from .settings_broker import is_loopback

ENV_PREFIX = "FUNNELWATCH_"
_SOURCE_ERROR = re.compile(r'field "([^"]+)"')


def describe_config_error(exc: Exception) -> str:
    """One line naming the variable at fault (never its value: it may be a secret)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0]
        field = str(first["loc"][0]) if first.get("loc") else "?"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{ENV_PREFIX}{field.upper()}: {first['msg']}{more}"
    if isinstance(exc, SettingsError):
        m = _SOURCE_ERROR.search(str(exc))
        field = m.group(1) if m else "?"
        return f"{ENV_PREFIX}{field.upper()}: not valid JSON"
    raise TypeError(f"not a configuration error: {type(exc).__name__}")


def load_settings() -> tuple[Settings | None, str | None]:
    """``(settings, None)``, or ``(None, one line)`` when the configuration is invalid."""
    try:
        return get_settings(), None
    except (ValidationError, SettingsError) as exc:
        return None, f"invalid configuration: {describe_config_error(exc)}"


def exposure_problem(s: Settings) -> str | None:
    """Why serving the web views as configured would expose them to anyone, if it would."""
    if s.web_token is not None or s.web_allow_anonymous or is_loopback(s.web_host):
        return None
    return (f"FUNNELWATCH_WEB_HOST={s.web_host} is not a loopback address and FUNNELWATCH_WEB_TOKEN is "
            f"not set: every view would be open to anyone who can reach the port. Set FUNNELWATCH_WEB_TOKEN, "
            f"or FUNNELWATCH_WEB_ALLOW_ANONYMOUS=true if that is intended.")


def store_problem(s: Settings) -> str | None:
    """The rocksdict store needs the ``rocksdb`` extra, which a plain install lacks."""
    if s.store.partition("://")[0].lower() in ("rocksdict", "rocksdb") and importlib.util.find_spec("rocksdict") is None:
        return (f"FUNNELWATCH_STORE={s.store} needs the rocksdict package: pip install 'funnelwatch[rocksdb]' "
                f"(or FUNNELWATCH_STORE=memory://, which keeps no state across restarts)")
    return None


def startup_problems(s: Settings) -> list[str]:
    return [p for p in (exposure_problem(s), store_problem(s)) if p]
