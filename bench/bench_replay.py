#!/usr/bin/env python3
"""Replay throughput vs. bare JSON decoding, on one core.

Generates (deterministically, seeded) a JSON Lines file of mixed Activity Sync and Altcraft
events shaped like the vendors' samples — several events per message, some duplicates,
non-lifecycle and test events, a few rejects — into a temp dir, then times in the same run:

  (a) a bare loop of ``orjson.loads`` over the file's lines (the floor: decoding only);
  (b) ``streams.report.Replay`` over the same lines, including ``report()``.

and prints events/s for both and the ratio b/a (target >= 0.20).

    python bench/bench_replay.py [--events 200000] [--seed 7] [--repeat 3] [--profile] [--keep FILE]
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.report import Replay  # noqa: E402
from streams.timeparse import format_ts_us  # noqa: E402

S = 1_000_000
START = 1724716800 * S  # 2024-08-27T00:00:00Z
SPAN = 24 * 3600 * S
TENANTS = ["foo", "acme", "shop-eu", "shop-us", "bank", "telco", "retail-au", "travel"]
ACCOUNTS = [23, 42, 77, 161, 500, 9001]

WORKFLOW_CONTEXT = {
    "experienceContext": {"experienceId": "501b95b3-06d3-4398-9ad4-b2563e158308"},
    "flowContext": {"flowId": "b07a5e44-04e3-4698-a799-04c558b77147", "flowName": "My first flow", "flowVersion": 2},
    "nodeContext": {"nodeId": "node-e72ur", "nodeName": "", "outputName": "conversation_2"},
}


def _as_ts(ts_us: int, rng: random.Random) -> str:
    text = format_ts_us(ts_us - ts_us % 1000)  # the vendor sends milliseconds
    return text if rng.random() < 0.8 else text[:-1] + "+00:00"


def _ac_ts(ts_us: int, rng: random.Random) -> str:
    base = format_ts_us(ts_us - ts_us % S)[:-1]
    return f"{base}.{ts_us % S:06d}{rng.randrange(1000):03d}Z"  # RFC 3339 with nanoseconds


def activity_sync_message(rng: random.Random, n: int) -> list[dict]:
    tenant = rng.choice(TENANTS)
    mid = f"{rng.getrandbits(64):016x}-as-{n}"
    channel = "sms" if rng.random() < 0.5 else "email"
    t = START + rng.randrange(SPAN)
    phone = f"+614{rng.randrange(10**8):08d}"

    def ev(kind: str, ts: int, data: dict, pii: list[str] | None) -> dict:
        e = {"version": "1.0", "timestamp": _as_ts(ts, rng), "tenantId": tenant, "workflowContext": WORKFLOW_CONTEXT,
             "customContext": {}, "kind": kind, "data": data}
        if kind == "message-failed":
            del e["version"]  # the vendor's own quirk
        if pii is not None:
            e["pii"] = pii
        return e

    if channel == "sms":
        out = [ev("outbound-sms", t, {"usage": [{"uom": "sms-segments-au", "qty": 1}], "recipient": phone,
                                      "body": "Thanks for signing up, John.", "messageId": mid}, ["body", "recipient"])]
    else:
        out = [ev("outbound-email", t, {
            "messageId": mid, "usage": [{"uom": "email-recipients", "qty": 1}], "from": "company@appleseed.com",
            "replyTo": "company@appleseed.com", "to": f"user{n}@appleseed.com", "cc": [], "bcc": [],
            "subject": "Thanks for registering with us.", "body": "\n\n Hello world!\n \n",
            "plainTextBody": "\\n \\n Hello world!\\n \\n", "attachments": [{"filename": "welcomepack.pdf"}]}, None)]
    r = rng.random()
    t += rng.randrange(1, 30) * S
    if r < 0.04:
        out.append(ev("message-failed", t, {"messageId": mid, "detail": "Failed message"}, ["detail"]))
        return out
    if r < 0.08:
        return out  # stuck at queued
    out.append(ev("message-sent", t, {"messageId": mid, "detail": "smtp: 225 Queued for delivery"}, ["detail"]))
    if r < 0.14:
        return out  # stuck at sent
    t += rng.randrange(1, 120) * S
    out.append(ev("message-delivered", t, {"messageId": mid, "detail": "Delivered message"}, ["detail"]))
    if rng.random() < 0.45:
        t += rng.randrange(60, 7200) * S
        out.append(ev("message-opened", t, {"messageId": mid, "detail": ""}, ["detail"]))
        if rng.random() < 0.35:
            t += rng.randrange(5, 600) * S
            out.append(ev("message-link-clicked", t, {"messageId": mid, "detail": ""}, ["detail"]))
    return out


def altcraft_message(rng: random.Random, n: int) -> list[dict]:
    account = rng.choice(ACCOUNTS)
    smid = f"5a9bf01a17_3cd_11_6f_0_2.{rng.getrandbits(64):016x}{n}"
    suffix = rng.choice(["", "", "", "_sms", "_push", "telegram"])
    t = START + rng.randrange(SPAN)

    def name(base: str) -> str:
        if suffix == "telegram":
            return {"send": "telegram_bot_send", "deliv": "telegram_bot_deliv", "undeliv": "telegram_bot_undeliv",
                    "open": None, "click": "telegram_bot_click"}[base] or "telegram_bot_click"
        if suffix == "_push" and base == "undeliv":
            return "undeliv"
        return base + suffix

    def ev(event_type: str, ts: int, extra: dict | None = None) -> dict:
        ed = {"message_id": 17, "campaign_id": 973, "segment_id": 0, "launch_id": "00000017000003cd5a9bf01a",
              "send_message_id": smid}
        if extra:
            ed.update(extra)
        return {"event_type": event_type, "event_date": _ac_ts(ts, rng), "_xxh": "ad1850e0d1d9481e",
                "_md5": "145bb30f7ddf1184cb560bc4b7705646", "list_id": 111, "account_id": account,
                "is_test": False, "custom_data": {"email": f"user{n}@example.org"}, "event_data": ed}

    tracking = {"ip": "10.9.0.14", "country": ".ru", "city": "Moscow", "region": "Moskovskaya oblast",
                "tz": "Europe/Vaduz", "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:59.0) Gecko/20100101 Firefox/59.0",
                "os": "Linux x86_64", "browser": "Firefox", "device": "web"}
    out = [ev(name("send"), t)]
    r = rng.random()
    t += rng.randrange(1, 60) * S
    if r < 0.05:
        out.append(ev(name("undeliv"), t, {"bounce_code": 550, "bounce_message": "No such email"}))
        return out
    if r < 0.10:
        return out  # stuck at sent
    out.append(ev(name("deliv"), t))
    if suffix == "" and rng.random() < 0.03:
        out.append(ev(rng.choice(["sbounce", "complain", "unsub"]), t + S))
    if rng.random() < 0.5 and suffix != "telegram":
        t += rng.randrange(60, 7200) * S
        kind = "open" if suffix in ("", "_push") else "click"
        out.append(ev(name(kind), t, tracking))
        if kind == "open":
            out.append(ev("uopen" + suffix, t, tracking))
        if rng.random() < 0.3:
            t += rng.randrange(5, 600) * S
            out.append(ev(name("click"), t, dict(tracking, link_url="http://www.example.com")))
    return out


def noise(rng: random.Random, n: int) -> bytes:
    """Non-lifecycle, test and rejected records."""
    r = rng.random()
    t = START + rng.randrange(SPAN)
    if r < 0.35:
        return orjson.dumps({"version": "1.0", "timestamp": _as_ts(t, rng), "tenantId": rng.choice(TENANTS),
                             "workflowContext": WORKFLOW_CONTEXT, "customContext": {},
                             "kind": rng.choice(["experience-start", "experience-complete", "action"]),
                             "data": {}, "pii": []})
    if r < 0.6:
        return orjson.dumps({"event_type": rng.choice(["segs_add", "confirm", "promocode_attach"]),
                             "event_date": _ac_ts(t, rng), "account_id": rng.choice(ACCOUNTS), "is_test": False,
                             "event_data": {"campaign_id": 9, "segment_id": 80, "send_message_id": ""}})
    if r < 0.8:
        return orjson.dumps({"event_type": "send", "event_date": _ac_ts(t, rng), "account_id": 23, "is_test": True,
                             "event_data": {"send_message_id": f"t{n}"}})
    return rng.choice([
        b'{"kind": "outbound-sms", "tenantId": "foo", ',
        orjson.dumps({"version": "1.0", "timestamp": _as_ts(t, rng), "tenantId": "foo", "kind": "message-bounced",
                      "data": {"messageId": "x"}}),
        orjson.dumps({"version": "0.0", "timestamp": _as_ts(t, rng), "tenantId": "foo", "kind": "queued",
                      "data": {"messageId": "x"}}),
        orjson.dumps({"event_type": "deliv", "event_date": _ac_ts(t, rng), "account_id": 23, "event_data": {}}),
    ])


def generate(path: Path, n_events: int, seed: int) -> int:
    rng = random.Random(seed)
    lines: list[bytes] = []
    n = 0
    while len(lines) < n_events:
        n += 1
        r = rng.random()
        if r < 0.06:
            lines.append(noise(rng, n))
            continue
        evs = activity_sync_message(rng, n) if r < 0.53 else altcraft_message(rng, n)
        raw = [orjson.dumps(e) for e in evs]
        if rng.random() < 0.03:
            raw.append(rng.choice(raw))  # an at-least-once redelivery
        lines.extend(raw)
    # events arrive roughly in time order but shuffled locally (vendor batching, retries)
    window = 500
    for i in range(0, len(lines), window):
        chunk = lines[i:i + window]
        rng.shuffle(chunk)
        lines[i:i + window] = chunk
    del lines[n_events:]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


def bench_loads(lines: list[bytes]) -> float:
    loads, error = orjson.loads, orjson.JSONDecodeError
    t0 = time.perf_counter()
    for line in lines:
        try:
            loads(line)
        except error:  # the few invalid lines: a decoder must survive them too
            pass
    return time.perf_counter() - t0


def bench_replay(lines: list[bytes]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    rp = Replay()
    rp.feed_lines(lines)  # the bulk path, as `funnelwatch replay` uses it (feed_stream)
    report = rp.report()
    return time.perf_counter() - t0, report


def top_self_time(root, n: int) -> list[tuple[tuple[str, str], float]]:
    """Aggregate pyinstrument self time per function over the whole call tree."""
    agg: dict[tuple[str, str], float] = {}
    stack = [root]
    while stack:
        f = stack.pop()
        stack.extend(f.children)
        if f.is_synthetic:
            continue
        key = (f.function, f"{f.file_path_short}:{f.line_no}" if f.line_no else f.file_path_short)
        agg[key] = agg.get(key, 0.0) + f.total_self_time
    return sorted(agg.items(), key=lambda kv: -kv[1])[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs for each measurement")
    ap.add_argument("--profile", action="store_true", help="run pyinstrument over (b) and print the top of it")
    ap.add_argument("--keep", metavar="FILE", help="also copy the generated file here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="funnelwatch-bench-") as tmp:
        path = Path(tmp) / "events.jsonl"
        t0 = time.perf_counter()
        n = generate(path, args.events, args.seed)
        gen_s = time.perf_counter() - t0
        size = path.stat().st_size
        if args.keep:
            Path(args.keep).write_bytes(path.read_bytes())
        with path.open("rb") as fh:
            lines = [line.rstrip(b"\n") for line in fh]
    print(f"generated {n} events ({size / 1e6:.1f} MB, {size / n:.0f} B/event avg) in {gen_s:.1f}s, seed {args.seed}")
    if hasattr(os, "sched_getaffinity"):
        print(f"cpus available: {len(os.sched_getaffinity(0))} (the benchmark is single-threaded)")

    # (a) and (b) alternate, so that a noisy neighbour slows both alike; best time of each.
    a_runs, b_runs, report = [], [], {}
    for _ in range(args.repeat):
        gc.collect()
        a_runs.append(bench_loads(lines))
        gc.collect()
        t, report = bench_replay(lines)
        b_runs.append(t)
    a, b = min(a_runs), min(b_runs)
    pair_ratios = sorted(x / y for x, y in zip(a_runs, b_runs))
    inp = report["input"]
    print(f"report: {inp['lines']} lines, {inp['applied']} applied, {inp['duplicates']} duplicates, "
          f"{sum(inp['rejected'].values())} rejected, {sum(inp['ignored'].values())} ignored, "
          f"{sum(inp['non_lifecycle'].values())} non-lifecycle; {len(report['windows'])} window rows, "
          f"{len(report['stuck'])} stuck")
    print(f"(a) orjson.loads loop : {n / a:>12,.0f} events/s  ({a:.3f}s, best of {args.repeat})")
    print(f"(b) Replay + report() : {n / b:>12,.0f} events/s  ({b:.3f}s, best of {args.repeat})")
    ratio = a / b
    print(f"ratio b/a             : {ratio:.3f}  (target >= 0.20) {'OK' if ratio >= 0.20 else 'BELOW TARGET'}"
          f"; per round: {', '.join(f'{r:.3f}' for r in pair_ratios)}")

    if args.profile:
        from pyinstrument import Profiler
        from pyinstrument.renderers import ConsoleRenderer

        profiler = Profiler(interval=0.0005)
        profiler.start()
        bench_replay(lines)
        profiler.stop()
        session = profiler.last_session
        total = session.duration or 1.0
        print(f"\n--- pyinstrument over (b): {total:.2f}s with profiler overhead; top 20 by self time ---")
        for (func, where), t in top_self_time(session.root_frame(), 20):
            print(f"{100 * t / total:5.1f}%  {func:<28} {where}")
        tree = ConsoleRenderer(unicode=True, color=False, time="percent_of_total").render(session)
        print("--- call tree (top) ---")
        lines_out = tree.splitlines()
        first = next((i for i, ln in enumerate(lines_out) if ln.lstrip().startswith("100.0%")), 0)
        print("\n".join(ln for ln in lines_out[first:first + 40] if ln.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
