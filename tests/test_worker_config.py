"""Configuration errors stop a worker before it connects anything: one line on stderr that
names the variable (never its value), exit status 2. File-mounted secrets. No broker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents import preflight
from agents.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent


def run_worker(**env_extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELWATCH_")}
    env.update({"FUNNELWATCH_BROKER_URL": "kafka://127.0.0.1:9", "FUNNELWATCH_BROKER_WAIT_S": "30", **env_extra})
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agents.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    return proc, time.monotonic() - t


@pytest.mark.parametrize(("var", "value"), [
    ("FUNNELWATCH_SLA_S", "{bad json"),
    ("FUNNELWATCH_SLA_S", '{"sms": {"queued": -5}}'),
    ("FUNNELWATCH_SLA_S", '{"fax": {"queued": 5}}'),
    ("FUNNELWATCH_TENANT_SLA_S", '{"acme": {"sms": {"queued": "s3cr3t-value"}}}'),
    ("FUNNELWATCH_ALERT_TICK_S", "-1"),
    ("FUNNELWATCH_PUBLISH_INTERVAL_S", "0"),
    ("FUNNELWATCH_STORE", "foo://"),
    ("FUNNELWATCH_STORE", "rocksdict"),
    ("FUNNELWATCH_BROKER_WAIT_S", "soon"),
    ("FUNNELWATCH_WEB_PORT", "99999"),
    ("FUNNELWATCH_BROKER_SECURITY_PROTOCOL", "s3cr3t-value"),
])
def test_bad_value_is_one_line_naming_the_variable_exit_2(var: str, value: str) -> None:
    proc, elapsed = run_worker(**{var: value})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and var in lines[0], proc.stderr[-2000:]
    assert "s3cr3t" not in proc.stderr and "Traceback" not in proc.stderr
    assert "waiting for Kafka" not in proc.stderr and elapsed < 20  # before anything connects


def test_broker_wait_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.isolated().broker_wait_s == 30
    monkeypatch.setenv("FUNNELWATCH_BROKER_WAIT_S", "2.5")
    assert Settings().broker_wait_s == 2.5


def test_secrets_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("FUNNELWATCH_")]:
        monkeypatch.delenv(k)
    (tmp_path / "funnelwatch_web_token").write_text("token-from-file\n")
    (tmp_path / "funnelwatch_ingest_token").write_text("ingest-from-file")
    (tmp_path / "funnelwatch_hmac_key").write_text("hmac-key-from-a-file-0123456789")
    monkeypatch.setenv("FUNNELWATCH_SECRETS_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert s.web_token.get_secret_value() == "token-from-file"
        assert s.ingest_token.get_secret_value() == "ingest-from-file"
        assert s.hmac_key.get_secret_value() == "hmac-key-from-a-file-0123456789"
        assert "token-from-file" not in repr(s)
        monkeypatch.setenv("FUNNELWATCH_WEB_TOKEN", "from-env")  # the environment wins over files
        get_settings.cache_clear()
        assert get_settings().web_token.get_secret_value() == "from-env"
    finally:
        get_settings.cache_clear()


def test_missing_rocksdict_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    problem = preflight.store_problem(Settings.isolated(store="rocksdict://"))
    assert problem and "pip install 'funnelwatch[rocksdb]'" in problem and "FUNNELWATCH_STORE" in problem
    assert preflight.store_problem(Settings.isolated(store="memory://")) is None
