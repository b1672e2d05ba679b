"""The dashboard (``GET /``) in headless Chromium, driven by Playwright, against a live worker
fed the golden scenario: no console errors, the scenario's funnel numbers per channel, the
period and tenant selectors, the stuck alert, dead letters, and the message search; fed the
campaign scenario (SPEC §11): the campaign table equals ``campaigns.expected.json``, sorts, and
filters the page by a click; the trend chart has one point per window and channel; the
latency panel shows ``histogram_quantile`` of the scraped histogram. Screenshots are kept in
``.test-artifacts/`` (``FUNNELWATCH_TEST_ARTIFACTS`` to put them elsewhere).

Needs Debian's ``chromium`` (``apt-get install -y --no-install-recommends chromium``); the
Playwright-downloaded browsers are not used. Skipped when chromium or playwright is missing,
unless ``CI`` is set (then it fails).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.worker_harness import (
    BASIC,
    WorkerPool,
    expected_report,
    fresh_app_topics,
    http_get,
    produce_scenario,
    wait_until,
    worker_env,
)

pytestmark = [pytest.mark.kafka, pytest.mark.browser, pytest.mark.timeout(90)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
INPUT_PARTITIONS = {"activity_sync": 3, "altcraft": 2}
OUTPUT_PARTITIONS = {"dead_letters": 1, "alerts": 1, "funnel_windows": 1}
TOKEN = "dash-" + secrets.token_hex(8)
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUNNELWATCH_TEST_ARTIFACTS") or REPO / ".test-artifacts")
CAMPAIGNS = REPO.parent / "shared" / "scenarios" / "campaigns.jsonl"
CAMPAIGNS_EXPECTED = REPO.parent / "shared" / "scenarios" / "campaigns.expected.json"
STAGES = ("queued", "sent", "delivered", "opened", "clicked", "failed")


def _require_browser() -> None:
    problems = []
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        problems.append(f"{CHROMIUM} missing (apt-get install -y --no-install-recommends chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("python package playwright missing (pip install -e '.[test]')")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))


def _api(base: str, path: str) -> tuple[int, Any]:
    status, body = http_get(base + path, timeout_s=10, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _by_channel(rows: list[dict[str, Any]], tenant: str | None = None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if tenant is None or r["tenant"] == tenant:
            for f in ("entered", *STAGES):
                out[r["channel"]][f] += r[f]
    return {ch: dict(v) for ch, v in out.items()}


def _shown(page: Any) -> dict[str, dict[str, int]]:
    """Channel -> {entered, stage: count} as the dashboard shows them (data attributes)."""
    return page.evaluate("""() => {
        const out = {};
        for (const card of document.querySelectorAll('#funnel .card')) {
            const v = { entered: Number(card.dataset.entered) };
            for (const row of card.querySelectorAll('.row')) v[row.dataset.stage] = Number(row.dataset.count);
            out[card.dataset.channel] = v;
        }
        return out;
    }""")


@contextlib.contextmanager
def _dashboard_worker(kafka_bootstrap: str, tmp_path: Path, scenario: Path) -> Iterator[Any]:
    """A worker with a web token on topics of its own, ready, with ``scenario`` produced."""
    with fresh_app_topics(kafka_bootstrap, "fwdash", {**INPUT_PARTITIONS, **OUTPUT_PARTITIONS}) as (app_id, topics):
        with WorkerPool(tmp_path) as pool:
            w = pool.start("w1", worker_env(app_id=app_id, bootstrap=kafka_bootstrap, topics=topics,
                                            data_dir=tmp_path / "w1", extra={"FUNNELWATCH_WEB_TOKEN": TOKEN}))
            wait_until(lambda: w.check_alive() or "Worker ready" in w.log_text(), 60, 0.3, "worker ready")
            produce_scenario(kafka_bootstrap, topics, INPUT_PARTITIONS, scenario)
            yield w


def _new_page(p: Any, w: Any, errors: list[str], foreign: list[str]) -> tuple[Any, Any]:
    """Chromium and a page that records console errors, failed requests, and requests to any
    other host than the worker's (the dashboard loads no external resource)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("request", lambda r: foreign.append(r.url)
            if urlsplit(r.url).netloc not in ("", urlsplit(w.base_url).netloc)
            and not r.url.startswith("data:") else None)
    return browser, page


def _trend_points(page: Any) -> dict[str, list[str]]:
    return page.evaluate("""() => {
        const out = {};
        for (const c of document.querySelectorAll('#trend circle.point'))
            (out[c.dataset.channel] = out[c.dataset.channel] || []).push(c.dataset.window);
        return out;
    }""")


def _windows_by_channel(rows: list[dict[str, Any]], tenant: str | None = None) -> dict[str, list[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if tenant is None or r["tenant"] == tenant:
            out[r["channel"]].add(r["window_start"])
    return {ch: sorted(ws) for ch, ws in out.items()}


def _campaign_table(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('#campaigns tbody tr.campaign')).map((tr) => ({
        tenant: tr.dataset.tenant, campaign: tr.dataset.campaign || null, channel: tr.dataset.channel,
        name: tr.querySelector('td.name').textContent, entered: Number(tr.dataset.entered),
        delivered: Number(tr.dataset.delivered), opened: Number(tr.dataset.opened),
        clicked: Number(tr.dataset.clicked), failed: Number(tr.dataset.failed),
        rates: ['delivered', 'opened', 'clicked', 'failed'].map((f) => tr.querySelector('td.rate-' + f).textContent),
    }))""")


def _histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile, transcribed (linear within the bucket; +Inf: highest finite bound)."""
    bounds = sorted(buckets)
    rank = q * buckets[bounds[-1]]
    prev_le = prev_n = 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / (buckets[le] - prev_n) if buckets[le] > prev_n else le
        prev_le, prev_n = le, buckets[le]
    raise AssertionError("no bucket")


def _scraped_latency(text: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(channel, "from→to") -> (p50, p95, count) from a /metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        if fam.name == "funnel_stage_latency_seconds":
            for smp in fam.samples:
                if smp.name.endswith("_bucket"):
                    key = (smp.labels["channel"], smp.labels["from_stage"] + "→" + smp.labels["to_stage"])
                    buckets[key][float(smp.labels["le"])] = smp.value
    return {k: (_histogram_quantile(0.5, b), _histogram_quantile(0.95, b), int(b[float("inf")]))
            for k, b in buckets.items() if b[float("inf")] > 0}


def _rate(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "–"


def test_dashboard_campaigns_trend_and_latency_in_headless_chromium(kafka_bootstrap: str, tmp_path: Path) -> None:
    _require_browser()
    from playwright.sync_api import sync_playwright

    expected = expected_report(CAMPAIGNS_EXPECTED)
    with _dashboard_worker(kafka_bootstrap, tmp_path, CAMPAIGNS) as w:
        wait_until(lambda: _api(w.base_url, "/funnel?by=campaign") == (200, {"campaigns": expected["campaigns"]}),
                   40, 0.5, "/funnel?by=campaign == campaigns.expected.json")
        status, metrics_text = http_get(w.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        scraped = _scraped_latency(metrics_text.decode())
        assert ("sms", "queued→sent") in scraped and ("email", "sent→delivered") in scraped

        errors: list[str] = []
        foreign: list[str] = []
        with sync_playwright() as p:
            browser, page = _new_page(p, w, errors, foreign)
            try:
                resp = page.goto(f"{w.base_url}/?token={TOKEN}", wait_until="load")
                assert resp is not None and resp.status == 200
                page.wait_for_selector("#status[data-loaded=ok]", timeout=15000)
                page.wait_for_selector("#campaigns tbody tr.campaign")
                assert not page.is_visible("#campaign-filter")  # no campaign chosen: no filter chip

                # The campaign table's numbers are campaigns.expected.json's (one window here, so
                # the period's sum per campaign and channel is the expected row itself).
                assert len({r["window_start"] for r in expected["campaigns"]}) == 1
                shown = _campaign_table(page)
                key = lambda r: (r["tenant"], r["campaign"] or "", r["channel"])  # noqa: E731
                want = {key(r): r for r in expected["campaigns"]}
                assert sorted(map(key, shown)) == sorted(want)
                for row in shown:
                    exp = want[key(row)]
                    for f in ("entered", "delivered", "opened", "clicked", "failed"):
                        assert row[f] == exp[f], (key(row), f)
                    assert row["rates"] == [_rate(exp[f], exp["entered"]) for f in
                                            ("delivered", "opened", "clicked", "failed")]
                    assert row["name"] == (exp["campaign_name"] or ("(no name)" if exp["campaign"] else "(no campaign)"))
                assert page.inner_text("#campaigns-total") == str(len({(r["tenant"], r["campaign"])
                                                                        for r in expected["campaigns"]}))
                # Sorted by entered (descending) by default; a click on a header sorts by it, again reverses.
                assert [r["entered"] for r in shown] == sorted((r["entered"] for r in shown), reverse=True)
                page.click('#campaigns th[data-sort="name"]')
                names = [r["name"].lower() for r in _campaign_table(page)]
                assert names == sorted(names)
                page.click('#campaigns th[data-sort="name"]')
                assert [r["name"].lower() for r in _campaign_table(page)] == sorted(names, reverse=True)
                page.click('#campaigns th[data-sort="delivered"]')
                rates = [r["delivered"] / r["entered"] for r in _campaign_table(page)]
                assert rates == sorted(rates, reverse=True)

                # The trend chart: one point per window and channel.
                assert _trend_points(page) == _windows_by_channel(expected["windows"])

                # Latency p50/p95 per channel: what histogram_quantile gives for the scraped buckets.
                lat = page.evaluate("""() => Array.from(document.querySelectorAll('#latency tbody tr[data-channel]'))
                    .map((tr) => [tr.dataset.channel, tr.dataset.pair, Number(tr.dataset.p50), Number(tr.dataset.p95)])""")
                assert {(c, pr) for c, pr, _, _ in lat} == set(scraped)
                for c, pr, p50, p95 in lat:
                    assert abs(p50 - scraped[(c, pr)][0]) < 1e-9 and abs(p95 - scraped[(c, pr)][1]) < 1e-9

                # A click on a campaign shows only it: the funnel cards are its rows.
                page.click('#campaigns tbody tr.campaign[data-campaign="altcraft:501"]')
                page.wait_for_selector("#campaign-filter:not([hidden])")
                page.wait_for_function("() => document.querySelectorAll('#funnel .card').length === 1")
                row = want[("23", "altcraft:501", "email")]
                assert _shown(page) == {"email": {f: row[f] for f in ("entered", *STAGES)}}
                assert "Black Friday (resend)" in page.inner_text("#campaign-filter")
                assert page.input_value("#tenant") == "23"
                assert _trend_points(page) == {"email": [row["window_start"]]}
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard-campaign-filter.png"), full_page=True)
                page.click("#campaign-clear")
                page.wait_for_selector("#campaign-filter", state="hidden")
                want23 = _by_channel(expected["windows"], "23")  # the tenant stays chosen
                page.wait_for_function(f"() => document.querySelectorAll('#funnel .card').length === {len(want23)}")
                assert _shown(page) == want23

                page.select_option("#tenant", "")
                page.wait_for_function("() => document.querySelectorAll('#funnel .card').length === 3")
                shot = ARTIFACTS / "dashboard-campaigns.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
            finally:
                browser.close()
        assert errors == []
        assert foreign == []


def test_dashboard_in_headless_chromium(kafka_bootstrap: str, tmp_path: Path) -> None:
    _require_browser()
    from playwright.sync_api import sync_playwright

    expected = expected_report()
    with _dashboard_worker(kafka_bootstrap, tmp_path, BASIC) as w:
        wait_until(lambda: _api(w.base_url, "/funnel") == (200, {"windows": expected["windows"]}),
                   40, 0.5, "funnel == replay report")
        want_stuck = [(s["tenant"], s["message_id"]) for s in expected["stuck"]]
        wait_until(lambda: [(a["tenant"], a["message_id"]) for a in _api(w.base_url, "/alerts")[1]["alerts"]]
                   == want_stuck, 30, 0.5, "the scenario's stuck alert")

        errors: list[str] = []
        foreign: list[str] = []
        with sync_playwright() as p:
            browser, page = _new_page(p, w, errors, foreign)
            try:
                resp = page.goto(f"{w.base_url}/?token={TOKEN}", wait_until="load")
                assert resp is not None and resp.status == 200
                assert "default-src 'none'" in resp.headers["content-security-policy"]
                page.wait_for_selector("#status[data-loaded=ok]", timeout=15000)
                assert "token" not in page.url  # moved to sessionStorage, out of the address bar

                # Funnel per channel, all tenants, all retained windows (the default period).
                want = _by_channel(expected["windows"])
                assert _shown(page) == want
                email = page.locator('#funnel .card[data-channel="email"]')
                assert f"{want['email']['entered']} entered" in email.locator("h3").inner_text()
                assert "100.0%" in email.locator('.row[data-stage="sent"]').inner_text()

                # Dead letters by reason and the open stuck alert.
                assert page.inner_text("#dlq-total") == str(sum(expected["input"]["rejected"].values()))
                for reason, n in expected["input"]["rejected"].items():
                    assert page.inner_text(f'#dlq tr[data-reason="{reason}"] td.num') == str(n)
                assert page.inner_text("#alerts-total") == "1"
                assert "m3" in page.inner_text("#alerts tbody")

                # Tenant selector.
                page.select_option("#tenant", "23")
                page.wait_for_function("() => document.querySelectorAll('#funnel .card').length === 2")
                assert _shown(page) == _by_channel(expected["windows"], "23")
                page.select_option("#tenant", "")
                page.wait_for_function("() => document.querySelectorAll('#funnel .card').length === 3")

                # Period selector: the last hour holds none of the 2024 events; a custom range does.
                page.select_option("#period", "1")
                page.wait_for_selector("#funnel .empty")
                page.select_option("#period", "custom")
                page.fill("#from", "2024-08-27T13:00:00")
                page.fill("#to", "2024-08-27T14:00:00")
                page.click("#refresh")
                page.wait_for_function("() => document.querySelectorAll('#funnel .card').length === 3")
                assert _shown(page) == want
                page.fill("#from", "2024-08-27T14:00:00")
                page.fill("#to", "2024-08-27T15:00:00")
                page.click("#refresh")
                page.wait_for_selector("#funnel .empty")
                page.select_option("#period", "all")
                page.wait_for_function("() => document.querySelectorAll('#funnel .card').length === 3")

                # Message search.
                page.select_option("#l-source", "activity_sync")
                page.fill("#l-tenant", "foo")
                page.fill("#l-id", "m2")
                page.click("#l-go")
                page.wait_for_selector('#message-found[data-message-id="m2"]', timeout=10000)
                assert page.inner_text("#message-outcome") == "delivered"
                found = page.inner_text("#message-found")
                assert "email" in found and "2024-08-27T13:40:00Z" in found and "2 / 1" in found

                # A click on the stuck alert looks that message up.
                page.click("#alerts tbody a.msg")
                page.wait_for_selector('#message-found[data-message-id="m3"]', timeout=10000)
                assert "STUCK NOW" in page.inner_text("#message-found")

                # The trend chart: one point per window and channel.
                assert _trend_points(page) == _windows_by_channel(expected["windows"])

                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
            finally:
                browser.close()
        assert errors == []
        assert foreign == []
