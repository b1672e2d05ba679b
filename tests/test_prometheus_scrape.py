"""A real Prometheus scrapes a live worker's `/metrics` (SPEC §10): after the golden scenario,
`sum by (tenant, channel, stage) (funnel_stage_reached_total)` equals the report's windows.

Prometheus comes from Debian's ``prometheus`` package (``make deps-system``). Without the
binary the test is skipped locally but fails in CI (env ``CI`` set).
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import urllib.parse
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.kafka_fixtures import create_topics, delete_topics
from tests.worker_harness import (
    BASIC,
    ManagedProcess,
    WorkerPool,
    delete_app_topics,
    expected_report,
    free_port,
    http_get,
    produce_scenario,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.timeout(90)]

INPUT_PARTITIONS = {"activity_sync": 3, "altcraft": 2}
OUTPUT_PARTITIONS = {"dead_letters": 1, "alerts": 1, "funnel_windows": 1}
STAGE_COLUMNS = ("queued", "sent", "delivered", "opened", "clicked", "failed")
ENGAGEMENT_COLUMNS = {"open": "opens_total", "click": "clicks_total"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class PrometheusServer(ManagedProcess):
    """``prometheus`` on 127.0.0.1:<free port>, scraping ``targets`` every second."""

    def __init__(self, binary: str, workdir: Path, targets: list[str], job: str = "funnelwatch") -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": job,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }],
        }, indent=2))
        super().__init__("prometheus", [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ], workdir / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 30) -> None:
        def ready() -> bool:
            self.check_alive()
            return http_get(self.url + "/-/ready", 2)[0] == 200

        wait_until(ready, timeout_s, 0.3, "prometheus /-/ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), 5)
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", (status, data)
        return data["data"]["result"]


@pytest.fixture(scope="module")
def scraped(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    binary = shutil.which("prometheus")
    if binary is None:
        if _in_ci():
            pytest.fail("prometheus not found on PATH in CI: install Debian's `prometheus` package "
                        "(make deps-system)")
        pytest.skip("prometheus not found (install Debian's `prometheus` package: make deps-system); "
                    "CI is not set")
    suffix = secrets.token_hex(4)
    app_id = f"fwtest-prom-{suffix}"
    tmp = tmp_path_factory.mktemp("prom")
    parts = {**INPUT_PARTITIONS, **OUTPUT_PARTITIONS}
    topics = {role: f"fw-{role.replace('_', '-')}-{suffix}" for role in parts}
    asyncio.run(create_topics(kafka_bootstrap, {topics[r]: n for r, n in parts.items()}))
    pool = WorkerPool(tmp)
    prom: PrometheusServer | None = None
    try:
        w = pool.start("w1", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                        data_dir=tmp / "w1"))
        w.wait_ready(45)
        prom = PrometheusServer(binary, tmp / "prometheus", [f"127.0.0.1:{w.port}"])
        prom.start()
        prom.wait_ready(30)
        produce_scenario(kafka_bootstrap, topics, INPUT_PARTITIONS, BASIC, seed=7)
        w.wait_json("/funnel", lambda b: b.get("windows") == expected_report()["windows"], 60)
        yield SimpleNamespace(worker=w, prom=prom, app_id=app_id)
    finally:
        if prom is not None:
            prom.stop()
        pool.stop_all()
        try:
            asyncio.run(delete_topics(kafka_bootstrap, list(topics.values())))
        except Exception:  # noqa: BLE001 - best effort
            pass
        delete_app_topics(kafka_bootstrap, app_id)


def _expected_sums(columns: dict[str, str]) -> dict[tuple[str, str, str], float]:
    """``{(tenant, channel, label): Σ over windows of report[column]}``."""
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for row in expected_report()["windows"]:
        for label, col in columns.items():
            out[(row["tenant"], row["channel"], label)] += row[col]
    return dict(out)


def _wait_query(prom: PrometheusServer, promql: str, labels: tuple[str, ...],
                expected: dict[tuple[str, ...], float], timeout_s: float = 45) -> None:
    """Poll an instant query until its vector, keyed by ``labels``, equals ``expected``
    (series absent from ``expected`` must be 0)."""
    last: dict = {}

    def matches() -> bool:
        got = {tuple(r["metric"].get(lb, "") for lb in labels): float(r["value"][1])
               for r in prom.query(promql)}
        last.clear()
        last.update(got)
        return {k: v for k, v in got.items() if v or k in expected} == expected

    try:
        wait_until(matches, timeout_s, 1.0, promql)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\ngot      {sorted(last.items())}\nexpected {sorted(expected.items())}\n"
                             f"prometheus log:\n{prom.log_tail(20)}") from None


def test_worker_target_is_up(scraped) -> None:
    def up() -> bool:
        res = scraped.prom.query('up{job="funnelwatch"}')
        return len(res) == 1 and res[0]["value"][1] == "1"

    wait_until(up, 30, 1.0, 'up{job="funnelwatch"} == 1')


def test_stage_reached_sums_equal_report(scraped) -> None:
    expected = _expected_sums({c: c for c in STAGE_COLUMNS})
    assert sum(expected.values()) > 0
    _wait_query(scraped.prom, "sum by (tenant, channel, stage) (funnel_stage_reached_total)",
                ("tenant", "channel", "stage"), expected)


def test_engagement_sums_equal_report(scraped) -> None:
    expected = _expected_sums(ENGAGEMENT_COLUMNS)
    _wait_query(scraped.prom, "sum by (tenant, channel, type) (funnel_engagement_total)",
                ("tenant", "channel", "type"), expected)


GRAFANA_DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "funnelwatch.json"
# Grafana's variables, as a query at "All" over the last hour would expand them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$tenant": ".*", "$channel": ".*"}


def _grafana_targets() -> list[tuple[str, str, bool]]:
    """``(panel title, PromQL, core)`` of every panel target, variables expanded."""
    out = []
    for panel in json.loads(GRAFANA_DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(var, value)
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr, "[core" in panel.get("description", "")))
    return out


def test_grafana_dashboard_queries_run_and_core_panels_have_data(scraped) -> None:
    """Every PromQL of deploy/grafana/funnelwatch.json parses and runs on a real Prometheus
    scraping a real worker fed with the golden scenario (catches renamed metrics); the core
    panels return data. The template variables' label queries return the scenario's values."""
    targets = _grafana_targets()
    assert len(targets) >= 15 and sum(core for *_, core in targets) >= 5
    for title, expr, _ in targets:
        scraped.prom.query(expr)  # asserts status success
    missing: list[str] = []

    def core_have_data() -> bool:
        missing[:] = [f"{title}: {expr}" for title, expr, core in targets if core and not scraped.prom.query(expr)]
        return not missing

    try:
        wait_until(core_have_data, 45, 1.0, "data in every core panel")
    except TimeoutError:
        raise AssertionError(f"core panels without data: {missing}") from None
    for label in ("tenant", "channel"):
        status, body = http_get(f"{scraped.prom.url}/api/v1/label/{label}/values?"
                                + urllib.parse.urlencode({"match[]": "funnel_stage_reached_total"}), 5)
        values = json.loads(body)["data"]
        assert status == 200 and values, (label, body[:300])
        assert {r[label] for r in expected_report()["windows"]} <= set(values)
