"""Progress lines on stderr (agents/progress.py): only on a terminal; `replay` output and
pipes unchanged. No broker."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from agents.cli import main as cli_main
from agents.progress import Progress
from tests.worker_harness import BASIC as GOLDEN

ROOT = Path(__file__).resolve().parent.parent


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_count_rate_and_eta_on_a_terminal() -> None:
    t = [0.0]
    out = Tty()
    p = Progress("replay", total=1000, stream=out, interval_s=0.2, clock=lambda: t[0])
    for _ in range(4):
        t[0] += 0.25
        p.advance(10, 100)
    p.close()
    text = out.getvalue()
    assert "replay: 40 lines, 40 lines/s, 40%, ETA 0:00:01" in text and text.endswith("\n")


def test_progress_writes_nothing_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress("replay", total=10, stream=out, interval_s=0)
    p.advance(5, 5)
    p.close()
    assert out.getvalue() == ""


def test_replay_on_a_terminal_shows_progress_and_the_same_report(tmp_path: Path, monkeypatch, capsysbinary) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(GOLDEN.read_bytes() * 200)
    monkeypatch.setattr(Progress, "DEFAULT_INTERVAL_S", 0.0)
    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli_main(["replay", "--json", str(big)]) == 0
    shown = capsysbinary.readouterr().out
    assert "lines/s" in err.getvalue() and "ETA" in err.getvalue()
    plain = subprocess.run([sys.executable, "-m", "agents.cli", "replay", "--json", str(big)], capture_output=True,
                           cwd=ROOT, timeout=120)
    assert plain.returncode == 0 and plain.stderr == b"" and plain.stdout == shown  # piped: nothing extra
