"""The deployment files: docker-compose.yml checked and its very commands run, k8s parsed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest
import yaml

from bench.stack import (
    AMQP_URL,
    REDIS_URL,
    ROOT,
    Stack,
    free_port,
    http,
    scratch_namespace,
    wait_until,
)
from services.cli import build_parser
from services.common.config import load_config
from services.common.models import TIERS
from services.common.settings import Settings
from services.common.topology import Names
from services.up import stack

COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
INFRA = {"rabbitmq", "redis", "postgres"}
IMAGE_BUILD = {"context": ".", "dockerfile": "deploy/Dockerfile"}
# Unset means "the built-in tier table", which is what the containers use.
OPTIONAL_SETTINGS = {"AGENTQ_CONFIG", "AGENTQ_API_KEYS_FILE"}  # files a user mounts


def interpolate(value: Any) -> Any:
    """Resolve compose's ${VAR:-default} / ${VAR-default} / ${VAR} / $$ with no variables set."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}",
                  lambda m: "$" if m.group(0) == "$$" else m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = interpolate(yaml.safe_load(COMPOSE.read_text()))
    assert isinstance(document, dict)
    return document


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name not in INFRA}


def settings_variables() -> set[str]:
    """Return the environment variable of every Settings field."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {str(field.validation_alias or f"{prefix}{name}").upper()
            for name, field in Settings.model_fields.items()}


def verb_lines() -> dict[str, list[str]]:
    """Return `agentq up`'s verb line per service (worker-1..3 all run `worker`)."""
    children = stack(Settings(), load_config(None, "", ""), workers=3, autoscale=False)
    lines: dict[str, list[str]] = {}
    for child in children:
        lines.setdefault(child.name.split("-")[0], child.args)
    return lines


def verbs() -> set[str]:
    parser = build_parser()
    return set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


# --- docker-compose.yml, structurally -----------------------------------------------------

def test_every_app_service_runs_the_one_image_with_an_agentq_verb(
        compose: dict[str, Any]) -> None:
    apps = app_services(compose)
    assert {s["image"] for s in apps.values()} == {"agentq:local"}
    lines = verb_lines()
    assert set(apps) == set(lines), "compose and `agentq up` run different services"
    # One service builds the image, so `compose build` builds it once, not once per service.
    builders = {name for name, service in apps.items() if "build" in service}
    assert builders == {"ingest"}, builders
    build = apps["ingest"]["build"]
    assert {k: build[k] for k in IMAGE_BUILD} == IMAGE_BUILD
    assert build["args"] == {"BASE_IMAGE": "python:3.11-slim"}
    for name, service in apps.items():
        assert service["command"][0] in verbs(), name
        assert service["command"] == lines[name], f"{name}: not the verb line of agentq up"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, rule in service["depends_on"].items():
            assert rule == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in compose["services"][dependency], dependency
        assert {"rabbitmq", "redis", "postgres"} <= set(service["depends_on"]), name
    assert apps["worker"]["deploy"] == {"mode": "replicated", "replicas": 3}
    # Every app drains on SIGTERM within its stop_grace_period (compose's default is 10 s).
    assert {name for name, s in apps.items() if "stop_grace_period" in s} \
        >= {"worker", "ingest", "dashboard"}
    assert "mockllm" in apps["worker"]["depends_on"]


def test_infrastructure_has_healthchecks_and_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in INFRA:
        assert services[name]["healthcheck"]["test"], name
    assert "management" in services["rabbitmq"]["image"]
    assert "0.0.0.0:15672:15672" in services["rabbitmq"]["ports"]
    named = set(compose["volumes"])
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
              for name in ("rabbitmq", "postgres")}
    assert mounts["rabbitmq"]["/var/lib/rabbitmq"] in named
    assert mounts["postgres"]["/var/lib/postgresql/data"] in named
    for source in mounts["rabbitmq"].values():
        assert source in named or (ROOT / source).is_file(), source


def test_published_ports_are_variables_with_todays_defaults() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    published = {name: s["ports"] for name, s in raw.items() if "ports" in s}
    assert published == {
        "rabbitmq": ["${AGENTQ_PUBLISH_ADDRESS:-0.0.0.0}:${RABBITMQ_MANAGEMENT_HOST_PORT:-15672}"
                     ":15672"],
        "ingest": ["${AGENTQ_PUBLISH_ADDRESS:-0.0.0.0}:${AGENTQ_INGEST_HOST_PORT:-8000}:8000"],
        "dashboard": ["${AGENTQ_PUBLISH_ADDRESS:-0.0.0.0}:${AGENTQ_DASHBOARD_HOST_PORT:-8080}"
                      ":8080"],
    }


def test_environment_covers_every_setting(compose: dict[str, Any]) -> None:
    needed = settings_variables() - OPTIONAL_SETTINGS
    example = (ROOT / ".env.example").read_text()
    for name, service in app_services(compose).items():
        missing = needed - set(service["environment"])
        assert not missing, f"{name} lacks {sorted(missing)}"
    for variable in settings_variables():
        assert re.search(rf"^#?\s*{variable}=", example, re.M), f".env.example lacks {variable}"
    env = app_services(compose)["worker"]["environment"]
    # The containers' values must parse as the settings they are.
    parsed = {k.lower().removeprefix("agentq_"): v for k, v in env.items()
              if k.startswith("AGENTQ_")}
    Settings.model_validate(parsed)


def test_rabbitmq_fits_the_slowest_allowed_call() -> None:
    conf = (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text()
    timeout_ms = int(re.search(r"^consumer_timeout\s*=\s*(\d+)", conf, re.M).group(1))  # type: ignore[union-attr]
    slowest_s = Settings().llm_timeout_s
    assert timeout_ms >= 2 * slowest_s * 1000, "a long call would be redelivered"
    assert "rabbitmq_management" in (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()
    infra = (K8S / "infra" / "rabbitmq.yaml").read_text()
    assert f"consumer_timeout = {timeout_ms}" in infra, "k8s and compose brokers differ"


def test_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and set(stages) == {"${BASE_IMAGE}"}
    # The public default base; tests/containers/ swaps it for a local stand-in.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["agentq"\]', text, re.M)
    assert "COPY --from=build" in text and "pip install" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_docker_compose_config_validates() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is missing in CI (make compose-deps installs it)")
        pytest.skip("docker-compose not installed (make compose-deps)")
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- docker-compose.yml, run: its own commands and environment on this machine -----------

class Localized:
    """Compose's services rewritten for this host: hostnames -> 127.0.0.1, free ports."""

    def __init__(self, compose: dict[str, Any], ns: str, database_url: str) -> None:
        self.compose = compose
        self.ns = ns
        self.database_url = database_url
        self.ports = {8000: free_port(), 8080: free_port(), 8100: free_port()}

    def port(self, port: int | None) -> int | None:
        return self.ports.get(port, port) if port is not None else None

    def url(self, value: str) -> str:
        url = urlparse(value)
        if url.hostname not in ("mockllm", "127.0.0.1", "localhost") or not url.port:
            return value
        return urlunparse(url._replace(netloc=f"127.0.0.1:{self.port(url.port)}"))

    def environment(self, service: dict[str, Any], metrics_port: int) -> dict[str, str]:
        env = {k: str(v) for k, v in service["environment"].items()}
        assert urlparse(env["AGENTQ_AMQP_URL"]).hostname == "rabbitmq"
        assert urlparse(env["AGENTQ_REDIS_URL"]).hostname == "redis"
        assert urlparse(env["AGENTQ_DATABASE_URL"]).hostname == "postgres"
        env.update({
            "AGENTQ_AMQP_URL": AMQP_URL, "AGENTQ_REDIS_URL": REDIS_URL,
            "AGENTQ_DATABASE_URL": self.database_url, "AGENTQ_NAMESPACE": self.ns,
            "AGENTQ_INGEST_PORT": str(self.port(int(env["AGENTQ_INGEST_PORT"]))),
            "AGENTQ_DASHBOARD_PORT": str(self.port(int(env["AGENTQ_DASHBOARD_PORT"]))),
            "AGENTQ_METRICS_PORT": str(metrics_port),
            "AGENTQ_MOCKLLM_URL": self.url(env["AGENTQ_MOCKLLM_URL"]),
        })
        if "AGENTQ_MOCK_HOST" in env:  # not every interface of a developer's machine
            env["AGENTQ_MOCK_HOST"] = "127.0.0.1"
        return env

    def command(self, service: dict[str, Any]) -> list[str]:
        return [str(self.port(int(a))) if a.isdigit() else a for a in service["command"]]

    def healthcheck(self, service: dict[str, Any], metrics_port: int) -> list[str]:
        kind, *argv = service["healthcheck"]["test"]
        assert kind == "CMD" and argv[0] == "python", argv
        rewritten = [sys.executable, *argv[1:]]
        for i, arg in enumerate(rewritten):
            if arg.startswith("http://"):
                url = urlparse(arg)
                port = self.ports.get(url.port or 80, metrics_port)
                rewritten[i] = urlunparse(url._replace(netloc=f"127.0.0.1:{port}"))
        return rewritten


@pytest.fixture
def composed(compose: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Stack, Localized]]:
    with scratch_namespace(tmp_path) as (ns, database_url):
        local = Localized(compose, ns, database_url)
        running = Stack({}, tmp_path)
        checks: dict[str, list[str]] = {}
        try:
            for name, service in app_services(compose).items():
                replicas = service.get("deploy", {}).get("replicas", 1)
                for i in range(1, replicas + 1):
                    process = f"{name}-{i}" if replicas > 1 else name
                    metrics = free_port()
                    running.start(process, *local.command(service),
                                  env=local.environment(service, metrics))
                    checks[process] = local.healthcheck(service, metrics)
            for process, check in checks.items():
                wait_until(lambda c=check, p=process: _passes(c) or _dead(running, p), 90,
                           f"the healthcheck of {process}")
                assert running.alive(process), running.log(process)[-3000:]
            yield running, local
        finally:
            running.stop_all()
            running.print_logs()


def _passes(check: list[str]) -> bool:
    return subprocess.run(check, capture_output=True, timeout=10).returncode == 0


def _dead(running: Stack, process: str) -> bool:
    return not running.alive(process)


@pytest.mark.database
def test_the_compose_commands_run_the_pipeline(composed: tuple[Stack, Localized]) -> None:
    running, local = composed
    ingest = f"http://127.0.0.1:{local.ports[8000]}"
    tasks = [{"prompt": f"compose {i} {uuid.uuid4()}", "kind": kind}
             for i, kind in enumerate(["classify", "summarize", "reason"] * 10)]
    status, accepted = http("POST", f"{ingest}/v1/tasks", tasks)
    assert status == 202, accepted
    ids = [item["id"] for item in accepted]
    done: dict[str, Any] = {}

    def all_done() -> bool:
        for task_id in ids:
            if task_id not in done:
                code, body = http("GET", f"{ingest}/v1/tasks/{task_id}")
                if code == 200 and body["status"] in ("succeeded", "failed"):
                    done[task_id] = body["result"]
        return len(done) == len(ids)

    wait_until(all_done, 90, f"{len(ids)} tasks", interval=0.2)
    assert {r["status"] for r in done.values()} == {"succeeded"}
    assert {r["tier"] for r in done.values()} == {"cheap", "standard", "premium"}
    # The provider that answered is compose's mockllm, the default without an OpenAI key.
    stats = http("GET", f"http://127.0.0.1:{local.ports[8100]}/stats")[1]
    assert stats["completed"] >= len(ids), stats
    # Three worker replicas share each tier's queue.
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ok = connection.channel().queue_declare(Names(local.ns).work_queue("cheap"), passive=True)
    connection.close()
    assert ok.method.consumer_count == 3
    assert http("GET", f"http://127.0.0.1:{local.ports[8080]}/")[0] == 200
    for name in list(running.processes):
        assert running.alive(name), running.log(name)[-2000:]


# --- Kubernetes manifests -------------------------------------------------------------------

def manifests(directory: Path = K8S) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["_file"] = path
                docs.append(doc)
    return docs


def of_kind(kind: str, directory: Path = K8S) -> list[dict[str, Any]]:
    return [d for d in manifests(directory) if d.get("kind") == kind]


def test_every_kustomization_lists_its_files() -> None:
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert {p.parent for p in kustomizations} >= {K8S, K8S / "overlays/no-keda", K8S / "infra"}
    for path in kustomizations:
        spec = yaml.safe_load(path.read_text())
        listed = set()
        for entry in spec.get("resources", []):
            target = (path.parent / entry).resolve()
            assert target.exists(), f"{path}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), entry
            else:
                listed.add(target)
        own = {p.resolve() for p in path.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert own == listed, f"{path} does not list exactly {sorted(p.name for p in own)}"


def test_every_workload_has_probes_resources_and_runs_unprivileged() -> None:
    workloads = of_kind("Deployment") + of_kind("StatefulSet")
    assert len(workloads) >= 12
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"{workload['_file'].name}: {container['name']}"
            assert container.get("readinessProbe"), where
            assert container.get("livenessProbe"), where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), where
            if container["image"].startswith("agentq"):
                assert pod["securityContext"]["runAsNonRoot"] is True, where


def test_every_app_deployment_has_its_service_pdb_and_verb_line() -> None:
    lines = verb_lines()
    services, pdbs = of_kind("Service"), of_kind("PodDisruptionBudget")
    config = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "agentq")
    secret = next(d for d in of_kind("Secret") if d["metadata"]["name"] == "agentq")
    llm_timeout = float(config["data"]["AGENTQ_LLM_TIMEOUT_S"])
    names = {}
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        if not container["image"].startswith("agentq"):
            continue
        name, args = deployment["metadata"]["name"], container["args"]
        names[name] = args
        labels = pod["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert any(s["spec"]["selector"].items() <= labels.items() for s in services), name
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items()
                   for p in pdbs), name
        assert {e.get("configMapRef", e.get("secretRef"))["name"]
                for e in container["envFrom"]} == {"agentq"}, name
        if name.startswith("worker-"):
            tier = name.removeprefix("worker-")
            assert args[:3] == ["worker", "--tiers", tier], name
            grace = float(args[args.index("--grace") + 1])
            assert llm_timeout < grace < pod["spec"]["terminationGracePeriodSeconds"], name
        else:
            assert args == lines[name], name
    assert set(names) == {n for n in lines if n != "worker"} | {f"worker-{t}" for t in TIERS}
    covered = set(config["data"]) | set(secret["stringData"])
    assert not (settings_variables() - OPTIONAL_SETTINGS) - covered


def test_every_worker_tier_scales_on_its_queue_and_lanes() -> None:
    namespace = next(d for d in of_kind("ConfigMap")
                     if d["metadata"]["name"] == "agentq")["data"]["AGENTQ_NAMESPACE"]
    names = Names(namespace)
    secret = next(d for d in of_kind("Secret") if d["metadata"]["name"] == "agentq")
    auths = {d["metadata"]["name"]: d["spec"] for d in of_kind("TriggerAuthentication")}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d["spec"] for d in of_kind("ScaledObject")}
    assert set(scaled) == {f"worker-{t}" for t in TIERS}
    every_queue = [*names.queues(), names.work, *(names.lane_queue(t, tenant) for t in TIERS
                                                  for tenant in ("acme", "a.b-c_1", "x"))]
    for tier in TIERS:
        spec = scaled[f"worker-{tier}"]
        trigger = spec["triggers"][0]
        metadata = trigger["metadata"]
        assert trigger["type"] == "rabbitmq"
        # The tier's backlog is its own queue plus every tenant lane: a regex, summed, which
        # KEDA reads only through the management API (http), its URL from the Secret.
        assert metadata["useRegex"] == "true" and metadata["operation"] == "sum"
        assert metadata["protocol"] == "http"
        assert int(metadata["pageSize"]) == 500  # the management API's largest page
        selected = re.compile(metadata["queueName"])
        mine = [names.work_queue(tier), *(names.lane_queue(tier, tenant)
                                          for tenant in ("acme", "a.b-c_1", "x"))]
        assert [q for q in every_queue if selected.search(q)] == mine, tier
        assert not selected.search(f"{names.work_queue(tier)}x")  # no tier is a prefix
        assert not selected.search(f"{names.work_queue(tier)}.")
        assert metadata["mode"] == "QueueLength"
        auth = auths[trigger["authenticationRef"]["name"]]
        (host,) = [r for r in auth["secretTargetRef"] if r["parameter"] == "host"]
        assert host["name"] == "agentq"
        management = urlparse(secret["stringData"][host["key"]])
        assert management.scheme in ("http", "https") and management.port == 15672
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["cooldownPeriod"] > 0
    overlay = K8S / "overlays" / "no-keda"
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d["spec"]
            for d in of_kind("HorizontalPodAutoscaler", overlay)}
    assert set(hpas) == set(scaled)
    for spec in hpas.values():
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
    deleted = yaml.safe_load((overlay / "kustomization.yaml").read_text())["patches"]
    removed = {(p["kind"], p["metadata"]["name"])
               for p in (yaml.safe_load(d["patch"]) for d in deleted)}
    assert {("ScaledObject", name) for name in scaled} <= removed
