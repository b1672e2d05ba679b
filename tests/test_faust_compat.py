"""Contract of agents/faust_compat.py: every private faust/aiokafka attribute the worker relies
on exists (a test per name, so an upgrade that drops one fails by name), the pins in
pyproject are the versions the module is tested on, and the worker's consumer is the
commit-point subclass installed through the public transport setter."""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from agents import faust_compat
from agents.faust_compat import REQUIRED, REQUIRED_INSTANCE, TESTED_AIOKAFKA, TESTED_FAUST

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path,attr", [(p, a) for p, attrs in REQUIRED.items() for a in attrs],
                         ids=lambda x: str(x))
def test_private_attribute_exists(path: str, attr: str) -> None:
    obj = faust_compat._resolve(path)
    assert hasattr(obj, attr), f"{path}.{attr} is gone: agents/faust_compat.py needs it"


def test_missing_names_nothing() -> None:
    assert faust_compat.missing() == []


@pytest.fixture()
def pipeline(monkeypatch: pytest.MonkeyPatch):
    for k in [k for k in os.environ if k.startswith("FUNNELWATCH_")]:
        monkeypatch.delenv(k)
    from agents.pipeline import Pipeline
    from agents.settings import Settings

    return Pipeline(Settings())


def _instance(pipeline, what: str):
    if what == "consumer":
        return pipeline.app.consumer
    if what == "web":
        return pipeline.app.web
    if what == "agent":
        return next(iter(pipeline.app.agents.values()))
    if what == "supervisor":
        from mode import OneForOneSupervisor

        return OneForOneSupervisor()
    if what == "aiokafka_consumer":
        import asyncio

        from aiokafka import AIOKafkaConsumer

        async def make() -> AIOKafkaConsumer:  # it wants a running loop; never started: no connection
            return AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")

        return asyncio.run(make())
    raise AssertionError(what)


@pytest.mark.parametrize("what,attr", [(w, a) for w, attrs in REQUIRED_INSTANCE.items() for a in attrs],
                         ids=lambda x: str(x))
def test_instance_attribute_exists(pipeline, what: str, attr: str) -> None:
    assert hasattr(_instance(pipeline, what), attr), f"{what}.{attr} is gone: agents/faust_compat.py needs it"


def test_worker_consumer_commits_from_the_commit_point(pipeline) -> None:
    consumer = pipeline.app.consumer
    assert isinstance(consumer, faust_compat.CommitPointConsumer)
    assert consumer.commit_point is pipeline.commit
    # installed by subclassing: nothing rebound on the instance
    assert "_new_offset" not in vars(consumer) and "_filter_tps_with_pending_acks" not in vars(consumer)


def test_web_driver_is_the_hardened_one(pipeline) -> None:
    assert isinstance(pipeline.app.web, faust_compat.HardenedWeb)
    assert isinstance(pipeline.app.web._runner, faust_compat.HardenedAppRunner)


def test_agent_error_hook_is_a_subclass_method(pipeline) -> None:
    assert isinstance(pipeline.app, faust_compat.WorkerApp)
    assert "_on_agent_error" not in vars(pipeline.app)
    assert pipeline.health.on_agent_error in pipeline.app.agent_error_hooks


def _pin(deps: list[str], dist: str) -> str:
    [spec] = [d for d in deps if re.match(rf"{re.escape(dist)}\b", d)]
    return spec


def test_pyproject_pins_the_tested_versions() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert _pin(deps, "faust-streaming") == "faust-streaming==" + TESTED_FAUST[-1]
    assert _pin(deps, "aiokafka") == "aiokafka==" + TESTED_AIOKAFKA[-1]
    assert faust_compat.versions() == {"faust-streaming": TESTED_FAUST[-1], "aiokafka": TESTED_AIOKAFKA[-1]}


def test_no_private_faust_api_outside_the_compat_module() -> None:
    """Private faust/aiokafka names appear in agents/faust_compat.py only."""
    names = {a for attrs in [*REQUIRED.values(), *REQUIRED_INSTANCE.values()] for a in attrs if a.startswith("_")}
    pattern = re.compile(r"\.(%s)\b" % "|".join(map(re.escape, sorted(names))))
    offenders = []
    for path in sorted((ROOT / "agents").rglob("*.py")):
        if path.name == "faust_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or "faust.streams import _" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
