"""The ``funnelwatch`` command.

``replay`` runs the pure domain core offline (no Kafka, no network, no faust import);
``worker`` starts a faust worker; ``generate`` writes or produces sample traffic.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from .cli_help import version_line, worker_own_options
from .progress import Progress, lines_with_progress


def _replay(args: argparse.Namespace) -> int:
    from streams.report import Replay, dumps_report, format_table
    from streams.timeparse import parse_ts_us

    now_us = None
    if args.now is not None:
        now_us = parse_ts_us(args.now)
        if now_us is None:
            print(f"funnelwatch replay: --now {args.now!r} is not an RFC 3339 timestamp with zone",
                  file=sys.stderr)
            return 2
    if args.window <= 0:
        print("funnelwatch replay: --window must be a positive number of seconds", file=sys.stderr)
        return 2
    rp = Replay(window_s=args.window, max_event_bytes=args.max_event_bytes)
    progress = Progress("funnelwatch replay", total=_total_bytes(args.files))  # stderr, terminal only

    def feed(fh: Any) -> None:
        rp.feed_stream(lines_with_progress(fh, progress) if progress.enabled else fh)

    for path in args.files:
        if path == "-":
            feed(sys.stdin.buffer)
            continue
        try:
            with open(path, "rb") as fh:
                feed(fh)
        except FileNotFoundError:
            print(f"funnelwatch replay: no such file: {path}", file=sys.stderr)
            return 2
        except IsADirectoryError:
            print(f"funnelwatch replay: is a directory: {path}", file=sys.stderr)
            return 2
        except PermissionError:
            print(f"funnelwatch replay: permission denied: {path}", file=sys.stderr)
            return 2
    progress.close()
    report = rp.report(now_us)
    out = sys.stdout.buffer
    if args.json:
        from streams.report import dumps_report

        out.write(dumps_report(report))
    else:
        out.write(format_table(report, by=args.by).encode())
    out.flush()
    return 0


def _total_bytes(paths: list[str]) -> int | None:
    """Bytes of all the files (None with stdin or a file that can't be sized): the ETA's total."""
    import os

    try:
        return sum(os.path.getsize(p) for p in paths) if "-" not in paths else None
    except OSError:
        return None


def _worker(args: argparse.Namespace) -> int:
    from agents.worker import main as worker_main

    return worker_main(args.extra)


def _generate(args: argparse.Namespace) -> int:
    from agents.generate import main as generate_main

    return generate_main(args.extra)


_DESCRIPTION = """\
Live delivery funnel and stuck-message alerts from messaging-vendor event feeds
(Activity Sync, Altcraft) on Kafka; the same funnel report offline with `replay`."""

_EPILOG = """\
`funnelwatch worker --help` and `funnelwatch generate --help` show those commands' own
options; `funnelwatch --version` (or `funnelwatch worker --version`) prints the funnelwatch,
faust-streaming and aiokafka versions. Configuration is by FUNNELWATCH_* environment
variables: see the Configuration table in README.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="funnelwatch", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line(),
                   help="print the funnelwatch, faust-streaming and aiokafka versions and exit")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="offline funnel report from JSON Lines files (SPEC §9)")
    r.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines file, or - for stdin")
    r.add_argument("--json", action="store_true", help="print the exact SPEC §9 JSON report")
    r.add_argument("--window", type=int, default=3600, metavar="SECONDS", help="cohort window size (3600)")
    r.add_argument("--by", choices=("window", "campaign"), default="window",
                   help="rows of the table: per window, tenant and channel (default), or also per campaign/flow (SPEC §11)")
    r.add_argument("--now", default=None, metavar="ISO",
                   help="clock for stuck detection (default: latest applied lifecycle timestamp)")
    r.add_argument("--max-event-bytes", type=int, default=1 << 20, help=argparse.SUPPRESS)
    r.set_defaults(func=_replay)
    w = sub.add_parser("worker", add_help=False,
                       help="run a stream-processing worker (needs Kafka; see `funnelwatch worker --help`)")
    w.add_argument("extra", nargs=argparse.REMAINDER)
    w.set_defaults(func=_worker)
    g = sub.add_parser("generate", help="generate mixed sample traffic", add_help=False)
    g.add_argument("extra", nargs=argparse.REMAINDER)
    g.set_defaults(func=_generate)
    return p


_PASSTHROUGH = {"worker": "agents.worker", "generate": "agents.generate"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:  # their own argument parsers (faust's, generate's)
        import importlib

        if argv[0] == "worker":  # help / version: before agents.worker (settings, faust) is imported
            rc = worker_own_options(argv[1:])
            if rc is not None:
                return rc

        try:
            return importlib.import_module(_PASSTHROUGH[argv[0]]).main(argv[1:])
        except KeyboardInterrupt:
            return 130
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
