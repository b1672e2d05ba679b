"""`funnelwatch worker` with no broker: a clear message and a non-zero exit, no traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once the socket is


def test_worker_without_broker_fails_clearly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELWATCH_")}
    env.update(FUNNELWATCH_BROKER_URL=f"kafka://127.0.0.1:{_closed_port()}", FUNNELWATCH_BROKER_WAIT_S="1")
    proc = subprocess.run([sys.executable, "-m", "agents.cli", "worker"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert "Kafka is not reachable at 127.0.0.1:" in proc.stderr
    assert "make kafka-up" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
