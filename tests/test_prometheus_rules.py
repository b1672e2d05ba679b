"""deploy/prometheus/alerts.yml: promtool syntax check + rule unit tests.

promtool comes from Debian's ``prometheus`` package (``make deps-system``).  Without it
the promtool tests are skipped locally, but fail in CI (env ``CI`` set), where a missing
promtool means a broken environment rather than an optional extra.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agents.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
ALERTS = {
    "FunnelwatchStuckMessages",
    "FunnelwatchFailureRateHigh",
    "FunnelwatchDeadLetterRate",
    "FunnelwatchWorkerDown",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if _in_ci():
            pytest.fail("promtool not found on PATH in CI: install Debian's `prometheus` package (make deps-system)")
        pytest.skip("promtool not found (install Debian's `prometheus` package: make deps-system); CI is not set")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.prometheus
def test_promtool_check_rules(promtool):
    proc = _run([promtool, "check", "rules", str(RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout + proc.stderr


@pytest.mark.prometheus
def test_promtool_rule_unit_tests(promtool):
    proc = _run([promtool, "test", "rules", str(RULE_TESTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_rule_file_has_the_four_alerts_in_group_funnelwatch():
    text = RULES.read_text()
    assert re.search(r"^\s*- name: funnelwatch\s*$", text, flags=re.M)
    assert set(re.findall(r"^\s*- alert: (\w+)\s*$", text, flags=re.M)) == ALERTS
    tested = set(re.findall(r"^\s*alertname: (\w+)\s*$", RULE_TESTS.read_text(), flags=re.M))
    assert tested == ALERTS


def test_rules_only_use_metrics_we_export():
    """Every funnel_* series a rule queries is exported by agents.metrics (SPEC §10)."""
    registry = CollectorRegistry()
    m = Metrics(registry, max_tenants_label=1)
    m.event("altcraft", "send", True)
    m.rejected("altcraft", "schema")
    m.ignored("altcraft", "test_event")
    m.duplicate("altcraft")
    m.stage_reached("altcraft", "t", "email", "failed")
    m.engagement("altcraft", "t", "email", "open")
    m.latency("email", "sent", "delivered", 1)
    m.stuck_set("t", "email", "sent", 1)
    m.alert("stuck")
    m.stage_reached("altcraft", "t2", "email", "sent")  # overflow sample
    exported = {s.name for fam in registry.collect() for s in fam.samples}
    used = set(re.findall(r"\b(funnel_\w+)", RULES.read_text()))
    assert used, "no funnel metrics found in the rules"
    assert used <= exported, used - exported
    # label names used in the rules exist on those metrics
    assert 'funnel_stage_reached_total{stage="failed"}' in RULES.read_text()
    assert "by (tenant, channel, stage) (funnel_stuck_messages)" in RULES.read_text()
