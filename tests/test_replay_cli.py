"""`funnelwatch replay` end to end (subprocess): the golden scenario, our own hand-checked
scenarios (tests/scenarios), stdin, errors, --window / --now, and no PII in the output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.timeparse import parse_ts_us

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "scenarios" / "basic.jsonl"
COMPARE = SHARED / "tools" / "compare_report.py"
OWN = REPO / "tests" / "scenarios"
CAMPAIGNS = SHARED / "scenarios" / "campaigns.jsonl"
SCENARIOS = [GOLDEN, CAMPAIGNS] + sorted(OWN.glob("*.jsonl"))
TS_KEYS = {"window_start", "since", "deadline"}

# SPEC §8, transcribed
PII_FIELDS = {"recipient", "sender", "body", "plainTextBody", "to", "cc", "bcc", "from", "replyTo", "subject",
              "attachments", "detail", "outcomeReason", "matchedIntentKey", "matchedPart", "custom_data", "_xxh",
              "_md5", "ip", "lat", "lon", "city", "postal_code", "user_agent", "link_url", "bounce_message", "content"}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "agents.cli", "replay", *args], input=stdin, capture_output=True,
                          cwd=REPO, env=env, timeout=120)


def replay_json(*args: str, stdin: bytes | None = None) -> dict:
    p = run("--json", *args, stdin=stdin)
    assert p.returncode == 0, p.stderr.decode()
    assert b"Traceback" not in p.stderr
    return json.loads(p.stdout)


def norm(obj):
    """Timestamps compared as instants (epoch microseconds)."""
    if isinstance(obj, dict):
        return {k: (parse_ts_us(v) if k in TS_KEYS else norm(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [norm(x) for x in obj]
    return obj


def expected_of(scenario: Path) -> dict:
    return json.loads(scenario.with_name(scenario.name.replace(".jsonl", ".expected.json")).read_text())


def as_expected(report: dict, expected: dict) -> dict:
    """The report in the shape of ``expected``: reports written before SPEC §11 have no
    ``campaigns`` (their campaign rows are checked by :func:`assert_campaigns_add_up`)."""
    return report if "campaigns" in expected else {k: v for k, v in report.items() if k != "campaigns"}


def assert_campaigns_add_up(report: dict) -> None:
    """SPEC §11: per (window_start, tenant, channel) the campaign rows add up to the windows row."""
    sums: dict = {}
    for r in report["campaigns"]:
        assert r["entered"] > 0
        acc = sums.setdefault((r["window_start"], r["tenant"], r["channel"]), {})
        for f, v in r.items():
            if f not in ("window_start", "tenant", "channel", "campaign", "campaign_name"):
                acc[f] = acc.get(f, 0) + v
    assert sums == {(r["window_start"], r["tenant"], r["channel"]): {
        f: v for f, v in r.items() if f not in ("window_start", "tenant", "channel")} for r in report["windows"]}
    keys = [(r["window_start"], r["tenant"], r["channel"], r["campaign"] is not None, r["campaign"] or "")
            for r in report["campaigns"]]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_shared_folder_is_beside_the_repo():
    assert GOLDEN.is_file() and COMPARE.is_file(), f"expected ../shared beside the repo at {SHARED}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.stem for s in SCENARIOS])
def test_scenario_report(scenario, tmp_path):
    p = run("--json", str(scenario))
    assert p.returncode == 0, p.stderr.decode()
    got = tmp_path / "got.json"
    got.write_bytes(p.stdout)
    exp_path = scenario.with_name(scenario.name.replace(".jsonl", ".expected.json"))
    cmp = subprocess.run([sys.executable, str(COMPARE), str(got), str(exp_path)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout
    report = json.loads(p.stdout)
    assert norm(as_expected(report, expected_of(scenario))) == norm(expected_of(scenario))
    assert set(report) == {"input", "windows", "stuck", "campaigns"}
    assert_campaigns_add_up(report)
    # timestamps are UTC with Z
    for r in report["windows"]:
        assert r["window_start"].endswith("Z")
    for s in report["stuck"]:
        assert s["since"].endswith("Z") and s["deadline"].endswith("Z")


def test_own_scenarios_exist():
    names = {p.stem for p in OWN.glob("*.jsonl")}
    assert {"moves", "outcomes", "rejections", "stuck"} <= names
    for n in names:
        assert (OWN / f"{n}.expected.json").is_file()


def test_output_is_deterministic_bytes():
    a, b = run("--json", str(GOLDEN)), run("--json", str(GOLDEN))
    assert a.stdout == b.stdout


def test_stdin_dash():
    via_stdin = replay_json("-", stdin=GOLDEN.read_bytes())
    assert norm(as_expected(via_stdin, expected_of(GOLDEN))) == norm(expected_of(GOLDEN))


def test_several_files_are_one_stream():
    both = replay_json(str(GOLDEN), str(OWN / "moves.jsonl"))
    a, b = expected_of(GOLDEN), expected_of(OWN / "moves.jsonl")
    assert both["input"]["lines"] == a["input"]["lines"] + b["input"]["lines"]
    assert both["input"]["applied"] == a["input"]["applied"] + b["input"]["applied"]
    assert len(both["windows"]) == len(a["windows"]) + len(b["windows"])


def test_file_and_stdin_mixed():
    got = replay_json(str(OWN / "stuck.jsonl"), "-", stdin=(OWN / "moves.jsonl").read_bytes())
    assert got["input"]["lines"] == 19 + 16


@pytest.mark.parametrize("path", ["/nonexistent/events.jsonl", "missing-file.jsonl"])
def test_missing_file_fails_cleanly(path):
    p = run("--json", path)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert "no such file" in err and path in err
    assert "Traceback" not in err
    assert p.stdout == b""


def test_directory_fails_cleanly():
    p = run("--json", str(OWN))
    assert p.returncode != 0 and b"Traceback" not in p.stderr and b"directory" in p.stderr


@pytest.mark.parametrize("args", [["--now", "yesterday"], ["--now", "2024-08-27T13:00:00"], ["--window", "0"],
                                  ["--window", "-5"], ["--window", "abc"]])
def test_bad_options_fail_cleanly(args):
    p = run("--json", *args, str(GOLDEN))
    assert p.returncode != 0 and b"Traceback" not in p.stderr and p.stderr.strip()


def test_window_day():
    got = replay_json("--window", "86400", str(GOLDEN))
    exp = expected_of(GOLDEN)
    assert {r["window_start"] for r in got["windows"]} == {"2024-08-27T00:00:00Z"}
    # the same messages, regrouped: per (tenant, channel) the counts are the sums of the hourly rows
    hourly: dict = {}
    for r in exp["windows"]:
        acc = hourly.setdefault((r["tenant"], r["channel"]), {})
        for k, v in r.items():
            if isinstance(v, int):
                acc[k] = acc.get(k, 0) + v
    daily = {(r["tenant"], r["channel"]): {k: v for k, v in r.items() if isinstance(v, int)} for r in got["windows"]}
    assert daily == hourly
    assert got["input"] == exp["input"] and norm(got["stuck"]) == norm(exp["stuck"])


def test_window_quarter_hour_moves():
    got = replay_json("--window", "900", str(OWN / "moves.jsonl"))
    rows = [(r["window_start"], r["tenant"], r["channel"], r["entered"]) for r in got["windows"]]
    assert rows == [
        ("2024-09-01T09:45:00Z", "acme", "sms", 1),      # mv1: late outbound at 09:55
        ("2024-09-01T10:15:00Z", "acme", "email", 1),    # mv6: outbound 10:29
        ("2024-09-01T10:15:00Z", "acme", "unknown", 1),  # mv2: 10:20
        ("2024-09-01T10:30:00Z", "acme", "email", 1),    # mv3: 10:40
        ("2024-09-01T10:45:00Z", "42", "push", 1),       # mv5: 10:59:59.999999 (ns truncated)
        ("2024-09-01T11:00:00Z", "acme", "sms", 2),      # mv4 (11:01), mv7 (11:10)
    ]


@pytest.mark.parametrize("now,stuck_ids", [
    ("2024-08-27T13:02:00Z", []),  # deadline of m3 is 13:02:00; stuck means now > deadline
    ("2024-08-27T15:02:00+02:00", []),
    ("2024-08-27T13:02:00.000001Z", ["m3"]),
    ("2024-08-27T12:00:00Z", []),
    ("2030-01-01T00:00:00Z", ["m3"]),  # nothing else in basic is at queued/sent without outcome
])
def test_now_is_honoured(now, stuck_ids):
    got = replay_json("--now", now, str(GOLDEN))
    assert [s["message_id"] for s in got["stuck"]] == stuck_ids
    assert got["windows"] == expected_of(GOLDEN)["windows"]


def test_now_late_makes_everything_pending_stuck():
    got = replay_json("--now", "2024-09-04T07:22:00.000001Z", str(OWN / "stuck.jsonl"))
    ids = [s["message_id"] for s in got["stuck"]]
    # a-em (deadline 07:20) and st4 (queued at 07:20, sms SLA 120 s) join the default-now list
    assert ids == ["st2", "a-sms", "a-push", "st1", "st6", "a-tg", "st3", "a-tg2", "a-em", "st4"]


def test_too_large_line(tmp_path):
    f = tmp_path / "big.jsonl"
    lines = GOLDEN.read_bytes().splitlines()
    f.write_bytes(b"\n".join(lines[:2]) + b"\n")
    got = replay_json("--max-event-bytes", "200", str(f))
    assert got["input"]["rejected"] == {"too_large": 2} and got["input"]["lines"] == 2


def test_default_max_event_bytes_is_one_mib(tmp_path):
    f = tmp_path / "big.jsonl"
    pad = b" " * ((1 << 20) - 2)
    f.write_bytes(b"{}" + pad + b"\n" + b"{}" + pad + b" \n")
    got = replay_json(str(f))
    assert got["input"]["rejected"] == {"too_large": 1, "unknown_source": 1}


def test_blank_lines_and_crlf(tmp_path):
    f = tmp_path / "crlf.jsonl"
    f.write_bytes(b"\r\n\r\n" + b"\r\n".join(GOLDEN.read_bytes().splitlines()) + b"\r\n  \r\n\n")
    assert norm(as_expected(replay_json(str(f)), expected_of(GOLDEN))) == norm(expected_of(GOLDEN))


def test_empty_input():
    got = replay_json("-", stdin=b"")
    assert got == {"input": {"lines": 0, "applied": 0, "duplicates": 0, "rejected": {}, "ignored": {},
                             "non_lifecycle": {}}, "windows": [], "stuck": [], "campaigns": []}


def test_table_output():
    p = run(str(GOLDEN))
    assert p.returncode == 0
    out = p.stdout.decode()
    assert "input: 28 lines, 20 applied, 1 duplicates" in out and "stuck: 1" in out and "m3" in out


def _pii_values(obj, declared: set[str], out: set[str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in PII_FIELDS or k in declared:
                _leaves(v, out)
            else:
                _pii_values(v, declared, out)
    elif isinstance(obj, list):
        for v in obj:
            _pii_values(v, declared, out)


def _leaves(v, out: set[str]) -> None:
    if isinstance(v, dict):
        for x in v.values():
            _leaves(x, out)
    elif isinstance(v, list):
        for x in v:
            _leaves(x, out)
    elif isinstance(v, str):
        if v.strip():
            out.add(v)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        out.add(json.dumps(v))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.stem for s in SCENARIOS])
def test_no_pii_value_in_the_output(scenario):
    values: set[str] = set()
    for line in scenario.read_bytes().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        declared = set(obj.get("pii") or []) if isinstance(obj, dict) else set()
        _pii_values(obj, {d for d in declared if isinstance(d, str)}, values)
    assert values, "the scenario should carry PII to check"
    outputs = [run("--json", str(scenario)).stdout.decode(), run(str(scenario)).stdout.decode()]
    for out in outputs:
        leaked = sorted(v for v in values if (v if len(v) > 3 else f'"{v}"') in out)
        assert not leaked, leaked
