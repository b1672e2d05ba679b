"""The deployment files describe a worker that starts and is probed as the README says:
pinned images, a liveness HEALTHCHECK on a path the worker serves, a non-root user, no web
views open to the network by accident, and a Kubernetes example (deploy/k8s/) whose probes,
scrape annotations, secrets and settings are the worker's own. No Docker or cluster needed
(parsed, not run); the served paths are read from a real worker app's routes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agents.preflight import exposure_problem
from agents.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


@pytest.fixture(scope="module")
def served() -> set[str]:
    """The paths a worker serves, from its web routes (app built, nothing started)."""
    from agents.pipeline import Pipeline

    app = Pipeline(Settings.isolated(store="memory://")).app
    return {r.resource.canonical for r in app.web.web_app.router.routes()}


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


def test_dockerfile_healthcheck_and_user(served: set[str]) -> None:
    text = (ROOT / "Dockerfile").read_text()
    hc = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.M | re.S)
    assert hc and "/health/live" in hc.group(0), "a HEALTHCHECK on /health/live"
    paths = set(re.findall(r"(/health/\w+)", hc.group(0)))
    assert paths and paths <= served
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")


def manifests() -> dict[str, dict]:
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def test_k8s_manifests_parse_and_cover_the_example() -> None:
    m = manifests()
    assert {"StatefulSet", "Service", "Secret", "PodDisruptionBudget"} <= m.keys()
    for d in m.values():
        assert d["apiVersion"] and d["metadata"]["name"] == "funnelwatch"


def test_k8s_probes_and_scrape_point_at_paths_the_worker_serves(served: set[str]) -> None:
    sts = manifests()["StatefulSet"]
    pod = sts["spec"]["template"]
    [c] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert int(env["FUNNELWATCH_WEB_PORT"]) == ports["web"]
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["path"] in served and ports[get["port"]] == ports["web"], probe
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] in served
    assert int(ann["prometheus.io/port"]) == ports["web"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert sts["spec"]["volumeClaimTemplates"], "stable state volume per worker"


def test_k8s_settings_and_secrets_are_the_workers_own() -> None:
    m = manifests()
    [c] = m["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    fields = Settings.model_fields
    for e in c["env"]:
        name = e["name"]
        assert name == "FUNNELWATCH_SECRETS_DIR" or name.removeprefix("FUNNELWATCH_").lower() in fields, name
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    secret_vol = next(v for v in m["StatefulSet"]["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    assert secret_vol["secret"]["secretName"] == m["Secret"]["metadata"]["name"]
    assert mounts[secret_vol["name"]] == env["FUNNELWATCH_SECRETS_DIR"]
    keys = set(m["Secret"]["stringData"])
    assert {"funnelwatch_web_token", "funnelwatch_ingest_token", "funnelwatch_hmac_key"} <= keys
    for key in keys:  # each file names a secret setting
        field = key.removeprefix("funnelwatch_")
        assert "SecretStr" in str(fields[field].annotation), key
    # bound to the pod's address (its canonical URL for peers), with the web token from the Secret
    host = next(e for e in c["env"] if e["name"] == "FUNNELWATCH_WEB_HOST")
    assert host["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_grafana_provisioning_matches_the_dashboard() -> None:
    import json

    dash = json.loads((ROOT / "deploy" / "grafana" / "funnelwatch.json").read_text())
    [ds] = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                          .read_text())["datasources"]
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])}
    assert uids == {ds["uid"]} and ds["url"] == "http://prometheus:9090"
    [prov] = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "funnelwatch.yml")
                            .read_text())["providers"]
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/funnelwatch.json"].startswith(prov["options"]["path"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Messages reaching each stage", "Conversion rates per channel", "Stage latency p50",
                   "Stage latency p95", "Stuck messages", "Alerts", "Dead letters by reason",
                   "Consumer lag (records not yet processed)", "Worker health"):
        assert needed in titles, needed
