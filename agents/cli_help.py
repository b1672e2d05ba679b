"""``funnelwatch --version`` and ``funnelwatch worker --help``: answered without settings,
a broker, topics or a faust app (used by ``agents.cli`` and ``agents.worker``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def funnelwatch_version() -> str:
    """The installed ``funnelwatch`` distribution's version, else pyproject.toml's (source checkout)."""
    v = _dist_version("funnelwatch")
    if v:
        return v
    try:
        import tomllib

        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def version_line() -> str:
    """``funnelwatch X (faust-streaming Y, aiokafka Z, Python P)``: metadata only, faust is not imported."""
    deps = ", ".join(f"{d} {_dist_version(d) or 'not installed'}" for d in ("faust-streaming", "aiokafka"))
    return f"funnelwatch {funnelwatch_version()} ({deps}, Python {sys.version.split()[0]})"


WORKER_HELP = """\
usage: funnelwatch worker [-h | --help] [--version] [FAUST WORKER OPTION ...]

Run one funnelwatch stream-processing worker (a faust-streaming worker): it reads the
Activity Sync and Altcraft input topics, keeps each message's lifecycle in a table,
publishes funnel rows (funnel-windows) and stuck-message alerts (message-alerts),
dead-letters rejected records (dead-letters), and serves the dashboard, JSON views,
/metrics and /health/* on its web server (default http://127.0.0.1:6066). Start more
workers with the same FUNNELWATCH_APP_ID to share the partitions.

On start it waits up to FUNNELWATCH_BROKER_WAIT_S seconds (default 30) for the broker at
FUNNELWATCH_BROKER_URL (default kafka://127.0.0.1:19092) and exits 3 if none answers;
then it creates the internal topics it needs and joins the consumer group.

Configuration is by environment variables with the FUNNELWATCH_ prefix (broker URL and
security, topic names, store, windows and SLAs, web host/port/tokens, HMAC key, log
level, ...), e.g. FUNNELWATCH_BROKER_URL=kafka://k1:9092,kafka://k2:9092 or
FUNNELWATCH_LOG_LEVEL=DEBUG. See the Configuration table in README.md for all of them.

Options read by funnelwatch itself (these never contact the broker):
  -h, --help            show this help and exit
  --version             print the funnelwatch, faust-streaming and aiokafka versions and exit

Every other argument is passed unchanged to faust's `worker` command, after
`--loglevel <FUNNELWATCH_LOG_LEVEL>` (a --loglevel given here wins). faust's options:
  --loglevel, -l LEVEL  crit, error, warn, info or debug
  --logfile, -f PATH    log to PATH instead of stderr
  --web-port, -p PORT   web server port (overrides FUNNELWATCH_WEB_PORT)
  --web-bind, -b ADDR   web server bind address (overrides FUNNELWATCH_WEB_HOST)
  --web-host HOST       host name in this worker's canonical URL, which the other workers
                        use to reach it (default FUNNELWATCH_WEB_HOST)
  --web-transport URL   web server transport
  --with-web/--without-web
                        enable/disable the web server (without it: no dashboard, views,
                        /metrics or health checks)
  --blocking-timeout S, --console-port PORT
                        faust debugging aids
Note: faust's short form -h of --web-host is not available here, because -h is help;
spell it --web-host HOST.

Examples:
  funnelwatch worker
  FUNNELWATCH_WEB_PORT=6067 FUNNELWATCH_DATA_DIR=.run/worker2 funnelwatch worker
  funnelwatch worker --loglevel debug --web-port 6067 --web-host worker2.internal
"""


def worker_own_options(argv: Sequence[str]) -> int | None:
    """Handle the options ``funnelwatch worker`` reads itself (help, version): an exit code, or
    None when the worker should start (argv then goes to faust). Nothing here reads settings,
    imports faust or touches the network."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-h", "--help"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if arg == "-h" and nxt is not None and not nxt.startswith("-"):
                # faust's `-h HOST` (= --web-host) from before -h meant help: don't print help
                # and exit 0 (a supervisor would think the worker finished), refuse clearly.
                print(f"funnelwatch worker: -h means --help here, not faust's --web-host; "
                      f"use --web-host {nxt} (see funnelwatch worker --help)", file=sys.stderr)
                return 2
            sys.stdout.write(WORKER_HELP)
            sys.stdout.flush()
            return 0
        if arg == "--version":
            print(version_line(), flush=True)
            return 0
    return None
