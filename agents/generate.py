"""``funnelwatch generate``: realistic mixed traffic of both vendors (JSON Lines or Kafka).

Payloads are shaped like the vendors' own samples (including their PII fields, so the
pipeline's redaction is exercised). Deterministic for a given ``--seed``.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence

import orjson

from streams.timeparse import US_PER_S, format_ts_us, parse_ts_us

from .progress import Progress

_WORKFLOW = {
    "experienceContext": {"experienceId": "501b95b3-06d3-4398-9ad4-b2563e158308"},
    "flowContext": {"flowId": "b07a5e44-04e3-4698-a799-04c558b77147", "flowName": "My first flow", "flowVersion": 2},
    "nodeContext": {"nodeId": "node-e72ur", "nodeName": "", "outputName": "conversation_2"},
}
_CAMPAIGN_NAMES = ("Welcome", "Newsletter", "Black Friday", "Cart reminder", "Win-back", "Password reset",
                   "Order shipped", "Survey")


def _workflow(k: int) -> dict:
    """The workflow context of flow ``k`` (SPEC §11: a UUID flow id and its name)."""
    wf = dict(_WORKFLOW)
    wf["flowContext"] = {"flowId": f"f10a{k:04x}-04e3-4698-a799-04c558b77147",
                         "flowName": f"{_CAMPAIGN_NAMES[k % len(_CAMPAIGN_NAMES)]} flow {k}", "flowVersion": 2}
    return wf


@dataclass
class Mix:
    messages: int = 1000
    tenants: int = 5
    p_deliver: float = 0.85
    p_open: float = 0.4
    p_click: float = 0.3
    p_fail: float = 0.05
    p_stuck: float = 0.05
    p_duplicate: float = 0.02
    p_out_of_order: float = 0.1
    p_bad: float = 0.005
    p_late: float = 0.01  # events emitted after everything else (hours late, moving windows)
    altcraft_share: float = 0.4
    span_s: float = 1800.0
    seed: int = 1
    campaigns: int = 8  # flows / campaigns per source (SPEC §11); 0: the vendors' sample ones only


def _as(kind: str, tenant: str, ts: int, data: dict, pii: list[str] | None, workflow: dict = _WORKFLOW) -> dict:
    rec = {"version": "1.0", "timestamp": format_ts_us(ts), "tenantId": tenant, "workflowContext": workflow,
           "customContext": {}, "kind": kind, "data": data}
    if pii is not None:
        rec["pii"] = pii
    if kind == "message-failed":
        del rec["version"]  # as in the vendor's own sample
    return rec


def _ac(event_type: str, account: int, ts: int, mid: str, rnd: random.Random, extra: dict | None = None,
        campaign_id: int = 973) -> dict:
    ed = {"message_id": 17, "campaign_id": campaign_id, "segment_id": 0, "launch_id": "00000017000003cd5a9bf01a",
          "send_message_id": mid}
    if extra:
        ed.update(extra)
    return {"event_type": event_type, "event_date": format_ts_us(ts)[:-1] + f"{rnd.randrange(1000):03d}Z"
            if "." in format_ts_us(ts) else format_ts_us(ts), "_xxh": f"{rnd.getrandbits(64):016x}",
            "_md5": f"{rnd.getrandbits(128):032x}", "list_id": 111, "account_id": account, "is_test": False,
            "custom_data": {"email": f"user{rnd.randrange(10**6)}@example.org"}, "event_data": ed}


def generate(mix: Mix, now_us: int) -> Iterator[bytes]:
    """Yield raw records (bytes), roughly in time order with some out-of-order ones."""
    rnd = random.Random(mix.seed)
    crnd = random.Random(mix.seed * 7919 + 1)  # campaigns: a stream of their own (the rest is as before them)
    workflows = [_workflow(k) for k in range(mix.campaigns)] or [_WORKFLOW]
    out: list[tuple[int, bytes]] = []
    launched: set[tuple[int, int]] = set()
    for i in range(mix.messages):
        campaign = crnd.randrange(mix.campaigns) if mix.campaigns else None
        source = "altcraft" if rnd.random() < mix.altcraft_share else "activity_sync"
        t0 = now_us - int(rnd.random() * mix.span_s * US_PER_S)
        stuck = rnd.random() < mix.p_stuck
        evs: list[tuple[int, dict]] = []
        if source == "activity_sync":
            tenant = f"tenant-{rnd.randrange(mix.tenants)}"
            mid = f"as-{mix.seed}-{i}"
            wf = workflows[campaign or 0]
            channel = "sms" if rnd.random() < 0.5 else "email"
            if channel == "sms":
                evs.append((t0, _as("outbound-sms", tenant, t0, {
                    "usage": [{"uom": "sms-segments-au", "qty": 1}], "recipient": f"+614{rnd.randrange(10**8):08d}",
                    "body": "Thanks for signing up, John.", "messageId": mid}, ["body", "recipient"], wf)))
            else:
                evs.append((t0, _as("outbound-email", tenant, t0, {
                    "messageId": mid, "usage": [{"uom": "email-recipients", "qty": 1}],
                    "from": "company@appleseed.com", "replyTo": "company@appleseed.com",
                    "to": f"person{rnd.randrange(10**6)}@appleseed.com", "cc": [], "bcc": [],
                    "subject": "Thanks for registering with us.", "body": "Hello world!",
                    "plainTextBody": "Hello world!", "attachments": [{"filename": "welcomepack.pdf"}]}, None, wf)))
            t = t0
            steps = [("message-sent", "smtp: 225 Queued for delivery")]
            if stuck:
                steps = steps if rnd.random() < 0.5 else []
            elif rnd.random() < mix.p_fail:
                steps.append(("message-failed", "Failed message"))
            elif rnd.random() < mix.p_deliver:
                steps.append(("message-delivered", "Delivered message"))
                if channel == "email" and rnd.random() < mix.p_open:
                    steps.append(("message-opened", ""))
                if rnd.random() < mix.p_click:
                    steps.append(("message-link-clicked", ""))
            for kind, detail in steps:
                t += int(rnd.uniform(1, 60) * US_PER_S)
                evs.append((t, _as(kind, tenant, t, {"messageId": mid, "detail": detail}, ["detail"], wf)))
        else:
            account = 20 + rnd.randrange(mix.tenants)
            mid = f"{rnd.getrandbits(40):010x}_{i}.{mix.seed}"
            campaign_id = 973 if campaign is None else 1000 + campaign
            if campaign is not None and (account, campaign_id) not in launched:  # names it (SPEC §11)
                launched.add((account, campaign_id))
                launch_ts = t0 - int(crnd.uniform(60, 600) * US_PER_S)
                out.append((launch_ts, orjson.dumps({
                    "event_type": "campaign_launch", "event_date": format_ts_us(launch_ts), "account_id": account,
                    "is_test": False, "event_data": {
                        "campaign_id": campaign_id, "campaign_type": "broadcast", "campaign_sub_id": "x11",
                        "campaign_name": f"{_CAMPAIGN_NAMES[campaign % len(_CAMPAIGN_NAMES)]} {campaign_id}",
                        "data_type": "segment", "data_id": 1221, "launch_id": "000000a1000005c0584a834c",
                        "content": []}})))
            ch = rnd.choice(["", "_sms", "_push", "telegram"])
            names = {"": ("send", "deliv", "undeliv", "open", "click"),
                     "_sms": ("send_sms", "deliv_sms", "undeliv_sms", None, "click_sms"),
                     "_push": ("send_push", "deliv_push", None, "open_push", "click_push"),
                     "telegram": ("telegram_bot_send", "telegram_bot_deliv", "telegram_bot_undeliv", None,
                                  "telegram_bot_click")}[ch]
            t = t0
            seq = [names[0]]
            if not stuck:
                if names[2] and rnd.random() < mix.p_fail:
                    seq.append(names[2])
                elif rnd.random() < mix.p_deliver:
                    seq.append(names[1])
                    if names[3] and rnd.random() < mix.p_open:
                        seq.append(names[3])
                    if rnd.random() < mix.p_click:
                        seq.append(names[4])
            for n in seq:
                extra = {"ip": "10.9.0.14", "city": "Moscow"} if n.startswith(("open", "click")) else None
                evs.append((t, _ac(n, account, t, mid, rnd, extra, campaign_id)))
                t += int(rnd.uniform(1, 60) * US_PER_S)
        if rnd.random() < mix.p_duplicate:
            evs.append(evs[-1])
        for ts, rec in evs:
            jitter = -int(rnd.uniform(0, 120) * US_PER_S) if rnd.random() < mix.p_out_of_order else 0
            if rnd.random() < mix.p_late:
                jitter = now_us - ts + int(rnd.uniform(0, 60) * US_PER_S)  # arrives after the others
            out.append((ts + jitter, orjson.dumps(rec)))
        if rnd.random() < mix.p_bad:
            out.append((t0, b'{"kind": "outbound-sms", "tenantId": "foo", '))
    out.sort(key=lambda x: x[0])
    for _, raw in out:
        yield raw


async def produce(records: Sequence[bytes], bootstrap: str, topic_as: str, topic_ac: str, rate: float | None,
                  security: dict | None = None, progress: Progress | None = None) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024,
                                **(security or {}))
    await producer.start()
    try:
        start = time.monotonic()
        for i, raw in enumerate(records):
            topic = topic_ac if b'"event_type"' in raw else topic_as
            await producer.send(topic, raw)
            if progress is not None:
                progress.advance()
            if rate:
                ahead = i / rate - (time.monotonic() - start)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return len(records)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="funnelwatch generate", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--tenants", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stuck", type=float, default=0.05, help="share of messages that get stuck")
    p.add_argument("--duplicates", type=float, default=0.02)
    p.add_argument("--out-of-order", type=float, default=0.1)
    p.add_argument("--failures", type=float, default=0.05)
    p.add_argument("--deliver", type=float, default=0.85, help="probability a message is delivered")
    p.add_argument("--open", type=float, default=0.4, help="probability a delivered message is opened")
    p.add_argument("--click", type=float, default=0.3, help="probability a delivered message is clicked")
    p.add_argument("--late", type=float, default=0.01, help="share of events that arrive after all others")
    p.add_argument("--altcraft-share", type=float, default=0.4, help="share of Altcraft messages (rest: Activity Sync)")
    p.add_argument("--bad", type=float, default=0.005, help="share of messages followed by a malformed record")
    p.add_argument("--span-s", type=float, default=1800.0, help="spread message starts over this many seconds")
    p.add_argument("--now", default=None, help="end of the time span (RFC 3339; default: wall clock)")
    p.add_argument("--out", default="-", help="JSON Lines file (default stdout)")
    p.add_argument("--produce", action="store_true", help="produce to the input topics instead of writing lines")
    p.add_argument("--rate", type=float, default=None, help="events per second when producing")
    args = p.parse_args(argv)
    now = parse_ts_us(args.now) if args.now else time.time_ns() // 1000
    if now is None:
        print("funnelwatch generate: --now must be RFC 3339 with zone", file=sys.stderr)
        return 2
    mix = Mix(messages=args.messages, tenants=args.tenants, seed=args.seed, p_stuck=args.stuck,
              p_duplicate=args.duplicates, p_out_of_order=args.out_of_order, p_fail=args.failures,
              p_deliver=args.deliver, p_open=args.open, p_click=args.click, p_late=args.late,
              altcraft_share=args.altcraft_share, p_bad=args.bad, span_s=args.span_s)
    records = list(generate(mix, now))
    if args.produce:
        from .settings import get_settings

        s = get_settings()
        progress = Progress("funnelwatch generate", total=len(records), unit="records")  # terminal only
        n = asyncio.run(produce(records, s.bootstrap_servers, s.topic_activity_sync, s.topic_altcraft, args.rate,
                                s.aiokafka_security_kwargs(), progress if progress.enabled else None))
        progress.close()
        print(f"funnelwatch generate: produced {n} records to {s.topic_activity_sync} / {s.topic_altcraft} "
              f"at {s.bootstrap_servers}", file=sys.stderr)
        return 0
    fh = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")
    try:
        for raw in records:
            fh.write(raw + b"\n")
    finally:
        if fh is not sys.stdout.buffer:
            fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
