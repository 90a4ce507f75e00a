"""The scale-out recipes in deploy/: Kubernetes manifests and the one-host compose file.

The manifests must pass `kubernetes-validate --strict` (the API schemas, unknown fields
rejected) and agree with the service: probes on /health and /ready, a grace period above
the drain, the image's port and non-root user, a ConfigMap that loads into real settings.
HAProxy's config is run for real by tests/test_rolling_restart.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.http.shutdown import CANCEL_GRACE_S
from app.settings import Settings
from harness import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}  # their one home


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run([str(binary), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120)


def resources() -> dict[str, dict[str, Any]]:
    found = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def test_manifests_validate_strictly() -> None:
    assert {p.name for p in MANIFESTS} >= {"cutout.yaml", "redis.yaml", "config.yaml"}
    result = validate(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {
        "Deployment/cutout",
        "Service/cutout",
        "HorizontalPodAutoscaler/cutout",
        "PodDisruptionBudget/cutout",
        "StatefulSet/cutout-redis",
        "Service/cutout-redis",
        "ConfigMap/cutout-config",
    } <= set(resources())


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    manifest = (KUBERNETES / "cutout.yaml").read_text()
    broken.write_text(manifest.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"))
    assert validate(broken).returncode != 0


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_deployment_follows_the_service() -> None:
    found = resources()
    pod = found["Deployment/cutout"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"

    delay = float(env.get("CUTOUT_DRAIN_DELAY_S", DEFAULTS["drain_delay_s"]))
    timeout = float(env.get("CUTOUT_SHUTDOWN_TIMEOUT_S", DEFAULTS["shutdown_timeout_s"]))
    readiness = container["readinessProbe"]
    # Out of the endpoints (failed readiness) well before the replica starts refusing.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < delay < timeout
    assert pod["terminationGracePeriodSeconds"] > timeout + CANCEL_GRACE_S

    dockerfile = (ROOT / "Dockerfile").read_text()
    image_uid = int(re.search(r"^USER (\d+)", dockerfile, re.M).group(1))
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == image_uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    image_port = int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1))
    assert container["ports"][0]["containerPort"] == image_port

    # Jobs are admitted within the memory budget: the container's limit must sit above it.
    budget_mb = float(env.get("CUTOUT_MEMORY_BUDGET_MB", DEFAULTS["memory_budget_mb"]))
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and float(limit[:-2]) * 1024 > budget_mb + 256, (limit, budget_mb)

    # Threads for the CPUs the pod gets, not for every core of its node.
    assert env["CUTOUT_INTRA_OP_THREADS"] == str(container["resources"]["requests"]["cpu"])
    assert env["CUTOUT_REDIS_URL"].startswith("redis://cutout-redis:")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == env["CUTOUT_CONFIG_DIR"]
    assert found["HorizontalPodAutoscaler/cutout"]["spec"]["minReplicas"] >= 2


def test_configmap_loads_into_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = Settings()
    data = resources()["ConfigMap/cutout-config"]["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("CUTOUT_CONFIG_DIR", str(tmp_path))
    settings = Settings()
    assert settings.plans and settings.models, "files it leaves out come from the defaults"
    if "plans.toml" in data:
        assert set(settings.plans) == set(tomllib.loads(data["plans.toml"])["plans"])
        # A sample to edit, not a change: the plans as shipped, max_concurrent included.
        assert settings.plans == shipped.plans


def test_compose_replicas_are_haproxys_servers() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    replicas = {name for name in compose["services"] if name.startswith("cutout")}
    servers = set(re.findall(r"^\s*server (\S+) (\S+):8000\b", (ROOT / "deploy" / "haproxy.cfg").read_text(), re.M))
    assert {(name, name) for name in replicas} == servers
    for name in replicas:
        service = compose["services"][name]
        assert service["environment"]["CUTOUT_REDIS_URL"].startswith("redis://redis:")
        budget_mb = float(service["environment"].get("CUTOUT_MEMORY_BUDGET_MB", DEFAULTS["memory_budget_mb"]))
        assert service["mem_limit"].endswith("g") and float(service["mem_limit"][:-1]) * 1024 > budget_mb + 256
