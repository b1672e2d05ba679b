"""The deployment files describe a worker that starts and is probed as the README says:
pinned images, a liveness HEALTHCHECK on a path the worker serves, a non-root user, and no
web views open to the network by accident. No Docker needed (parsed, not run)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from agents.preflight import exposure_problem
from agents.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVED = {"/health/live", "/health/ready", "/metrics", "/funnel", "/alerts", "/stats", "/"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_images_are_pinned() -> None:
    for name, svc in compose()["services"].items():
        if "image" not in svc:
            assert "build" in svc, name
            continue
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (name, image)


def test_compose_worker_is_not_open_by_accident() -> None:
    env = {k.lower().removeprefix("funnelwatch_"): str(v) for k, v in compose()["services"]["worker"]["environment"].items()}
    s = Settings.isolated(**{k: v for k, v in env.items() if k in Settings.model_fields})
    assert exposure_problem(s) is None  # the worker starts with this environment
    for svc in compose()["services"].values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port  # published on loopback only


def test_dockerfile_healthcheck_and_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    hc = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.M | re.S)
    assert hc and "/health/live" in hc.group(0), "a HEALTHCHECK on /health/live"
    paths = set(re.findall(r"(/health/\w+)", hc.group(0)))
    assert paths <= SERVED
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
