"""`funnelwatch --help / --version` and `funnelwatch worker --help / -h / --version`: answered at once,
with no broker (FUNNELWATCH_BROKER_URL points at an unused port, and the broker wait is 30 s, so any
attempt to reach it would show up as "waiting for Kafka", exit 3 and a long run), no faust import and
nothing created."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once the socket is


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELWATCH_")}
    env.update(FUNNELWATCH_BROKER_URL=f"kafka://127.0.0.1:{port}", FUNNELWATCH_BROKER_WAIT_S="30",
               FUNNELWATCH_DATA_DIR=str(tmp_path / "data"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def run(tmp_path: Path, *args: str, port: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    work = tmp_path / "cwd"
    work.mkdir()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agents.cli", *args], env=_env(tmp_path, port or _closed_port()),
                          cwd=work, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert "waiting for Kafka" not in out and "not reachable" not in out, out
    assert "Traceback" not in out, out
    assert list(work.iterdir()) == [] and not (tmp_path / "data").exists(), "the command created files"
    return proc, elapsed


def _installed(name: str) -> str:
    from importlib.metadata import version

    return version(name)


VERSION_RE = re.compile(r"^funnelwatch ([^\s,()]+) \(faust-streaming ([^\s,()]+), aiokafka ([^\s,()]+)[,)]")


@pytest.mark.parametrize("args", [["--version"], ["worker", "--version"]], ids=["top", "worker"])
def test_version(tmp_path: Path, args: list[str]) -> None:
    proc, elapsed = run(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 10
    m = VERSION_RE.match(proc.stdout)
    assert m, proc.stdout
    assert m.group(1) == PYPROJECT_VERSION
    assert m.group(2) == _installed("faust-streaming")
    assert m.group(3) == _installed("aiokafka")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_worker_help(tmp_path: Path, flag: str) -> None:
    proc, elapsed = run(tmp_path, "worker", flag)
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 10
    out = proc.stdout
    assert out.startswith("usage: funnelwatch worker")
    assert "FUNNELWATCH_" in out and "Configuration table in README.md" in out
    for opt in ("-h, --help", "--version", "--loglevel", "--web-port", "--web-host HOST"):
        assert opt in out, opt
    assert "spell it --web-host HOST" in out  # faust's -h (= --web-host) is ours; the long form passes through
    assert proc.stderr == ""


def test_worker_help_wins_anywhere_in_faust_args(tmp_path: Path) -> None:
    proc, elapsed = run(tmp_path, "worker", "--loglevel", "debug", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: funnelwatch worker")
    assert elapsed < 10


def test_worker_h_with_a_value_is_refused_not_treated_as_web_host(tmp_path: Path) -> None:
    """`-h HOST` was faust's --web-host: refuse it clearly (exit 2) rather than print help and exit 0."""
    proc, elapsed = run(tmp_path, "worker", "-h", "0.0.0.0")
    assert proc.returncode == 2
    assert elapsed < 10
    assert "--web-host 0.0.0.0" in proc.stderr
    assert proc.stdout == ""


def test_top_level_help(tmp_path: Path) -> None:
    proc, elapsed = run(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 10
    for word in ("replay", "worker", "generate", "--version", "funnelwatch worker --help"):
        assert word in proc.stdout, word


def test_help_and_version_never_connect(tmp_path: Path) -> None:
    """A listening decoy as the broker: not one connection attempt reaches it."""
    with socket.socket() as decoy:
        decoy.bind(("127.0.0.1", 0))
        decoy.listen(16)
        decoy.setblocking(False)
        port = decoy.getsockname()[1]
        for i, args in enumerate((["worker", "--help"], ["worker", "-h"], ["worker", "--version"], ["--version"])):
            sub = tmp_path / str(i)
            sub.mkdir()
            proc, elapsed = run(sub, *args, port=port)
            assert proc.returncode == 0 and elapsed < 10
        with pytest.raises(BlockingIOError):
            decoy.accept()


def test_no_faust_import_and_no_settings(tmp_path: Path) -> None:
    """Help and version build no faust App: faust and aiokafka are not even imported, and invalid
    settings do not matter (they are not read)."""
    code = (
        "import contextlib, io, sys\n"
        "from agents.cli import main\n"
        "import agents.worker as w\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rcs = [main(['worker', '--help']), main(['worker', '-h']), main(['worker', '--version']),\n"
        "           w.main(['--help']), w.main(['--version'])]\n"
        "print(rcs, sorted(m for m in ('faust', 'aiokafka', 'agents.pipeline') if m in sys.modules))\n"
    )
    env = _env(tmp_path, _closed_port())
    env["FUNNELWATCH_WINDOW_S"] = "not a number"  # get_settings() would raise
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 0, 0, 0] []"


def test_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.cli_help as cli

    real = cli._dist_version
    monkeypatch.setattr(cli, "_dist_version", lambda name: None if name == "funnelwatch" else real(name))
    assert cli.funnelwatch_version() == PYPROJECT_VERSION
    assert cli.version_line().startswith(f"funnelwatch {PYPROJECT_VERSION} (faust-streaming ")
