"""Web hardening without a broker: numbers in range or a 400 naming the parameter, the
ingress rate limit, and the refusal to serve views to everyone by accident."""
from __future__ import annotations


import pytest

from agents.preflight import exposure_problem
from agents.settings import Settings
from agents.settings_broker import is_loopback
from agents.web.ingress import RateLimiter
from agents.web.params import BadParam, int_param
from tests.test_worker_config import run_worker



@pytest.mark.parametrize(("raw", "want"), [
    (None, 100), ("", 100), ("1", 1), ("1000", 1000), ("0007", 7),
])
def test_int_param_in_range(raw: str | None, want: int) -> None:
    q = {} if raw is None else {"limit": raw}
    assert int_param(q, "limit", 100, 1, 1000) == want


@pytest.mark.parametrize("raw", [
    "0", "1001", "-1", "99999999999999999999", "1e3", "1.0", " 5", "5 ", "+5", "٣", "0x10", "abc",
    "9" * 5000, "-", "--1", "\x00",
])
def test_int_param_out_of_range_names_the_parameter_not_the_value(raw: str) -> None:
    with pytest.raises(BadParam) as exc:
        int_param({"limit": raw}, "limit", 100, 1, 1000)
    assert "'limit'" in str(exc.value) and "1 to 1000" in str(exc.value)
    if len(raw.strip()) > 2:
        assert raw not in str(exc.value)


def test_rate_limiter_bucket_per_address() -> None:
    now = [0.0]
    rl = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [rl.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.allow("a") == pytest.approx(0.5)  # empty: one token in 0.5 s
    assert rl.allow("b") == 0.0  # another address has its own bucket
    now[0] = 0.5
    assert rl.allow("a") == 0.0
    assert rl.allow("a") > 0
    now[0] = 100.0
    assert [rl.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled to the burst, not beyond
    assert rl.allow("a") > 0


def test_rate_limiter_remembers_a_bounded_number_of_addresses() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, clock=lambda: 0.0, max_clients=100)
    for i in range(1000):
        rl.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(rl._buckets) <= 100


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("192.168.1.2", False), ("example.org", False),
    ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("overrides", "refused"), [
    ({}, False),
    ({"web_host": "0.0.0.0"}, True),
    ({"web_host": "0.0.0.0", "web_token": "t0k3n-xyz"}, False),
    ({"web_host": "0.0.0.0", "web_allow_anonymous": True}, False),
    ({"web_host": "10.1.2.3"}, True),
    ({"web_host": "::1"}, False),
    ({"web_host": "127.0.0.1", "web_allow_anonymous": True}, False),
])
def test_exposure_problem(overrides: dict, refused: bool) -> None:
    problem = exposure_problem(Settings.isolated(**overrides))
    assert (problem is not None) is refused
    if refused:
        assert "FUNNELWATCH_WEB_TOKEN" in problem and "FUNNELWATCH_WEB_ALLOW_ANONYMOUS" in problem
        assert "\n" not in problem


def test_worker_on_a_public_address_without_token_refuses_to_start() -> None:
    """Regression: FUNNELWATCH_WEB_HOST=0.0.0.0 without a token used to start silently."""
    proc, elapsed = run_worker(FUNNELWATCH_WEB_HOST="0.0.0.0")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "FUNNELWATCH_WEB_TOKEN" in lines[0], proc.stderr
    assert "waiting for Kafka" not in proc.stderr and elapsed < 20  # before anything connects


def test_worker_on_a_public_address_allowed_anonymous_goes_on_to_the_broker() -> None:
    proc, _ = run_worker(FUNNELWATCH_WEB_HOST="0.0.0.0", FUNNELWATCH_WEB_ALLOW_ANONYMOUS="true",
                         FUNNELWATCH_BROKER_WAIT_S="1")
    assert proc.returncode == 3 and "not reachable" in proc.stderr  # past the check, no broker here
