#!/usr/bin/env python3
"""The minimal faust app of ``bench_pipeline.py`` phases (f) and (g): faust's delivery floor.

One agent per input topic doing only ``async for batch in stream.take_events(1000,
within=0.05): pass`` — no decoding, no state, no output — with the app settings of the
worker (``agents/app.py`` ``build_app``: memory store, 4 partitions, ``broker_max_poll_records``
2000, stream buffer 8192, producer linger and batch size, session timeout and heartbeat,
``earliest``). Whatever this app spends per record is faust's own cost of fetching,
delivering and acking it; the worker cannot be faster than this on the same input.

``--consumer faust`` (phase f) runs faust's stock aiokafka consumer; ``--consumer funnelwatch``
(phase g) installs the worker's transport (``agents.faust_compat.CommitPointConsumer``, with
no commit point attached, so faust's own offsets are committed): the difference between the
two is what that consumer class changes in per-record delivery.

    .venv/bin/python bench/faust_floor.py --bootstrap 127.0.0.1:19092 --topics a,b \\
        --app-id fwbench-floor --data-dir /tmp/floor [--consumer funnelwatch]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after a `--rev` export's PYTHONPATH, if any


def build(args: argparse.Namespace):
    import faust

    from agents.app import faust_settings
    from agents.settings import Settings

    s = Settings.isolated(app_id=args.app_id, broker_url=f"kafka://{args.bootstrap}", store="memory://",
                          data_dir=args.data_dir, topic_partitions=args.partitions, web_port=args.web_port)
    app = faust.App(s.app_id, **faust_settings(s))  # a worker's (web middlewares and log format aside)
    if args.consumer == "funnelwatch":
        from agents.faust_compat import install_commit_transport

        install_commit_transport(app)  # CommitPointConsumer, no commit point: faust's offsets

    def add_agent(i: int, name: str) -> None:
        topic = app.topic(name, key_type=bytes, value_type=bytes, allow_empty=True,
                          key_serializer="raw", value_serializer="raw")

        async def drain(stream):  # noqa: ANN001
            async for _batch in stream.take_events(s.batch_max_events, within=s.batch_within_s):
                pass

        app.agent(topic, name=f"floor-{i}")(drain)

    for i, name in enumerate(args.topics.split(",")):
        add_agent(i, name)
    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topics", required=True, help="input topics, comma-separated")
    p.add_argument("--app-id", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--web-port", type=int, default=0)
    p.add_argument("--consumer", choices=("faust", "funnelwatch"), default="faust")
    args = p.parse_args()
    app = build(args)
    sys.argv = ["faust-floor", "worker", "--loglevel", "warn"]
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
