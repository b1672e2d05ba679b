"""``funnelwatch worker``: preflight checks, then a faust worker for the pipeline."""
from __future__ import annotations

import logging
import socket
import sys
import time
from typing import Any, Callable, Sequence

from .settings import Settings


def wait_for_broker(settings: Settings, timeout_s: float) -> bool:
    """True once a bootstrap server accepts TCP connections; prints a clear waiting message."""
    deadline = time.monotonic() + timeout_s
    servers = [hp.rsplit(":", 1) for hp in settings.bootstrap_servers.split(",")]
    announced = False
    while True:
        for host, port in servers:
            try:
                with socket.create_connection((host, int(port)), timeout=2):
                    return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        if not announced:
            print(f"funnelwatch: waiting for Kafka at {settings.bootstrap_servers} "
                  f"(up to {timeout_s:.0f} s; start it with `make kafka-up`)", file=sys.stderr, flush=True)
            announced = True
        time.sleep(1)


def main(argv: Sequence[str] | None = None, *, make_pipeline: Callable[[Settings], Any] | None = None) -> int:
    """Run a worker; ``make_pipeline`` builds its :class:`~agents.pipeline.Pipeline` (the seam
    through which ``tests/fault_worker.py`` passes components with faults)."""
    argv = list(argv or [])
    from .cli_help import worker_own_options

    rc = worker_own_options(argv)  # -h/--help, --version: no settings, broker, topics or faust app
    if rc is not None:
        return rc
    from .preflight import load_settings, startup_problems

    settings, error = load_settings()
    problems = [error] if settings is None else startup_problems(settings)
    if problems or settings is None:  # refused before anything connects
        for problem in problems:
            print(f"funnelwatch: {problem}", file=sys.stderr)
        return 2
    wait_s = settings.broker_wait_s
    if not wait_for_broker(settings, wait_s):
        print(f"funnelwatch: Kafka is not reachable at {settings.bootstrap_servers} after {wait_s:.0f} s. "
              f"Start a broker (`make kafka-up`) or set FUNNELWATCH_BROKER_URL.", file=sys.stderr)
        return 3
    from .faust_compat import check_versions
    from .pipeline import Pipeline

    check_versions()
    pipeline = (make_pipeline or Pipeline)(settings)
    app = pipeline.app
    from .topics import ensure_topics_blocking

    ensure_topics_blocking(settings, pipeline.internal_topics())
    if settings.faust_prometheus_sensor:
        from faust.sensors.prometheus import setup_prometheus_sensors

        setup_prometheus_sensors(app, pattern="/faust-metrics")
    level = {"warning": "warn", "critical": "crit"}.get(settings.log_level.lower(), settings.log_level.lower())
    # JSON logs: faust's banner and spinner (not log records) would break one object per line.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    sys.argv = ["funnelwatch", *quiet, "worker", "--loglevel", level, *argv]
    # faust's and aiokafka's DEBUG lines print record values: dead letters are raw PII (SPEC §8).
    # faust's worker also sets the *root* logger to DEBUG for its spinner, which made every
    # produced record build a debug LogRecord (3-5% of worker CPU): pin the libraries' levels.
    lib_level = max(logging.INFO, logging.getLevelName(settings.log_level.upper()))
    for name in ("faust", "mode", "aiokafka", "faust.topics", "faust.transport.drivers.aiokafka",
                 "faust.transport.consumer", "aiokafka.producer"):
        logging.getLogger(name).setLevel(lib_level)
    app.main()
    return 0
