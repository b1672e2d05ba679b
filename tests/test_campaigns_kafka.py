"""SPEC §11 live, on a real broker: ``GET /funnel?by=campaign`` of two workers fed the shuffled
golden campaign scenario equals ``campaigns.expected.json`` (and replay), with its filters;
campaign names survive a restart that wipes the local state (they come back from the
campaign-names changelog); no campaign label reaches ``/metrics``."""
from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.worker_harness import (
    WorkerPool,
    expected_report,
    fresh_app_topics,
    produce_scenario,
    replay_json,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]

SHARED = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
CAMPAIGNS = SHARED / "campaigns.jsonl"
CAMPAIGNS_EXPECTED = SHARED / "campaigns.expected.json"
PARTITIONS = {"activity_sync": 3, "altcraft": 2}
OUTPUTS = {"dead_letters": 1, "alerts": 1, "funnel_windows": 1}


def _rows_equal(expected: list[dict]) -> Any:
    return lambda body: isinstance(body, dict) and body.get("campaigns") == expected


def _q(**params: str) -> str:
    return "/funnel?" + urllib.parse.urlencode({"by": "campaign", **params})


def test_two_workers_serve_the_golden_campaign_rows_and_names_survive_a_wiped_restart(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    expected = expected_report(CAMPAIGNS_EXPECTED)
    assert replay_json(CAMPAIGNS)["campaigns"] == expected["campaigns"]
    with fresh_app_topics(kafka_bootstrap, "fwcamp", {**PARTITIONS, **OUTPUTS}) as (app_id, topics):
        with WorkerPool(tmp_path) as pool:
            ws = [pool.start(n, worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                           data_dir=tmp_path / n)) for n in ("w1", "w2")]
            for w in ws:
                w.wait_ready(45)
            wait_until(lambda: all(w.get("/funnel", 5)[0] == 200 for w in ws), 45, 0.5, "both answer /funnel")
            produce_scenario(kafka_bootstrap, topics, PARTITIONS, CAMPAIGNS, seed=7)
            for w in ws:
                body = w.wait_json(_q(), _rows_equal(expected["campaigns"]), 60,
                                   f"{w.name} /funnel?by=campaign == campaigns.expected.json")
                assert body == {"campaigns": expected["campaigns"]}
                status, windows = w.get_json("/funnel")
                assert status == 200 and windows["windows"] == expected["windows"]

            # Filters: the same rows as filtering the expected ones.
            rows = expected["campaigns"]
            cases = [
                ({"tenant": "23"}, [r for r in rows if r["tenant"] == "23"]),
                ({"channel": "sms"}, [r for r in rows if r["channel"] == "sms"]),
                ({"campaign": "altcraft:501"}, [r for r in rows if r["campaign"] == "altcraft:501"]),
                ({"campaign": "null"}, [r for r in rows if r["campaign"] is None]),
                ({"tenant": "foo", "campaign": "flow:11111111-aaaa-4aaa-8aaa-000000000001"},
                 [r for r in rows if r["tenant"] == "foo" and r["campaign"] == "flow:11111111-aaaa-4aaa-8aaa-000000000001"]),
                ({"from": "2024-10-01T09:00:00Z"}, []),
                ({"to": "2024-10-01T09:00:00Z"}, rows),
                ({"campaign": "altcraft:999"}, []),
            ]
            for params, want in cases:
                status, body = ws[1].get_json(_q(**params))
                assert status == 200 and body == {"campaigns": want}, params
            # Each worker's part is partial; the parts add up to the whole.
            entered = 0
            for w in ws:
                status, body = w.get_json(_q(local="1"))
                assert status == 200 and body["partial"] is True
                entered += sum(r["entered"] for r in body["campaigns"])
            assert entered == sum(r["entered"] for r in rows)
            status, body = ws[0].get_json("/funnel?by=tenant")
            assert status == 400 and "by" in body["error"]
            # Metrics carry no campaign label (SPEC §11).
            status, text = ws[0].get("/metrics")
            assert status == 200 and b"campaign=" not in text and b"flow:" not in text
            for w in ws:
                w.stop()

        # A wiped restart: one new worker, empty data dir: rows and names from the changelogs.
        with WorkerPool(tmp_path / "again") as pool:
            w = pool.start("w3", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                            data_dir=tmp_path / "wiped", extra={"FUNNELWATCH_STORE": "rocksdict://"}))
            w.wait_ready(60)
            body = w.wait_json(_q(), _rows_equal(expected["campaigns"]), 60,
                               "after a wiped restart: /funnel?by=campaign == campaigns.expected.json")
            assert {r["campaign"]: r["campaign_name"] for r in body["campaigns"] if r["campaign"]} == {
                "altcraft:501": "Black Friday (resend)", "altcraft:502": None,
                "flow:22222222-bbbb-4bbb-8bbb-000000000002": "Newsletter",
                "flow:11111111-aaaa-4aaa-8aaa-000000000001": "Welcome v2"}
            assert "rebuilt derived state" in w.log_text()
