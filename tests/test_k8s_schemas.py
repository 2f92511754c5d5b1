"""deploy/k8s against real schemas and a security lint (deploy/ci/k8s-check), and proof that
the check fails where it should."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from bench.stack import ROOT

CHECK = ROOT / "deploy" / "ci" / "k8s-check"
# A cold run installs the tools from PyPI first (about 1-2 minutes); later runs take ~10 s.
INSTALL_TIMEOUT_S = 900


def load_check() -> ModuleType:
    """Import deploy/ci/k8s-check (a script without .py) as a module."""
    loader = importlib.machinery.SourceFileLoader("k8s_check", str(CHECK))
    spec = importlib.util.spec_from_loader("k8s_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_check()


def run_check(*directories: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), *map(str, directories)], cwd=ROOT,
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)


def scaled_objects() -> list[dict[str, Any]]:
    documents = yaml.safe_load_all((ROOT / "deploy/k8s/base/keda.yaml").read_text())
    return [d for d in documents if d and d["kind"] == "ScaledObject"]


# --- the real check, with its tools -------------------------------------------------------

@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_every_rendered_object_validates_and_passes_the_security_lint() -> None:
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("deploy_k8s", "deploy_k8s_overlays_no-keda", "deploy_k8s_infra"):
        assert f"k8s-check: {label}: " in result.stdout, result.stdout
    assert "0 unexplained" in result.stdout


BROKEN = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  replicas: "three"
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: broken
          image: busybox
          securityContext: {privileged: true}
---
apiVersion: v1
kind: Service
metadata: {name: broken}
spec:
  selectr: {app: broken}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: broken}
spec:
  scaleTargetRef: {name: broken}
  triggers:
    - type: rabbitmq
      metadata: {queueName: q}
      authRef: {name: rabbitmq-management}
"""


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_the_check_rejects_broken_manifests(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [broken.yaml]\n")
    (tmp_path / "broken.yaml").write_text(BROKEN)
    result = run_check(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()

    def reported(*parts: str) -> bool:
        return any(all(part in line for part in parts) for line in lines)

    for version in ("1.30", "1.37"):
        assert reported("SCHEMA", "Deployment", version, "spec.replicas", "'three'"), lines
        assert reported("SCHEMA", "Service", version, "'selectr' was unexpected"), lines
    assert reported("SCHEMA", "ScaledObject", "'authRef' was unexpected"), lines
    assert reported("CHECKOV", "CKV_K8S_16", "Deployment.default.broken"), lines  # privileged


# --- the same validation functions, without the tools -------------------------------------

def test_the_scaled_objects_validate_against_the_vendored_keda_schema(
        check: ModuleType) -> None:
    validators = check.keda_validators()
    objects = scaled_objects()
    assert len(objects) == 3
    for obj in objects:
        assert check.object_errors(obj, validators) == [], obj["metadata"]["name"]


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "triggers", 0, "authRef"), {"name": "x"}, "'authRef' was unexpected"),
    (("spec", "triggers", 0, "metadata"), {"queueName": 5}, "5 is not of type 'string'"),
    (("spec", "minReplicaCount"), "one", "'one' is not of type 'integer'"),
    (("spec", "advanced", "horizontalPodAutoscalerConfig", "behaviour"), {},
     "'behaviour' was unexpected"),
    (("kind",), "ScaledJobs", "no vendored KEDA schema"),
])
def test_a_broken_scaled_object_is_rejected(check: ModuleType, path: tuple[Any, ...],
                                            value: Any, expected: str) -> None:
    obj = copy.deepcopy(scaled_objects()[0])
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = check.object_errors(obj, check.keda_validators())
    assert any(expected in error for error in errors), errors


def test_a_scaled_object_missing_its_target_is_rejected(check: ModuleType) -> None:
    obj = copy.deepcopy(scaled_objects()[0])
    del obj["spec"]["scaleTargetRef"]
    errors = check.object_errors(obj, check.keda_validators())
    assert any("'scaleTargetRef' is a required property" in e for e in errors), errors


def test_findings_are_explained_only_by_a_matching_skip(check: ModuleType) -> None:
    skips = [{"check": "CKV_K8S_43", "resources": ["*"], "reason": "r"},
             {"check": "CKV_K8S_40", "resources": ["StatefulSet.agentq.postgres"],
              "reason": "r"},
             {"check": "CKV_K8S_22", "resources": ["StatefulSet.agentq.rabbitmq"],
              "reason": "r"}]
    findings = [{"check_id": "CKV_K8S_43", "resource": "Deployment.agentq.router"},
                {"check_id": "CKV_K8S_40", "resource": "StatefulSet.agentq.postgres"},
                {"check_id": "CKV_K8S_40", "resource": "StatefulSet.agentq.rabbitmq"}]
    unexplained, unused = check.triage(findings, skips)
    assert unexplained == [findings[2]]
    assert unused == [skips[2]]


def test_every_skip_names_resources_and_gives_its_reason(check: ModuleType) -> None:
    skips = check.load_skips()
    assert skips
    for skip in skips:
        assert skip["check"].startswith(("CKV_K8S_", "CKV2_K8S_")), skip
        assert len(skip["reason"].split()) >= 15, f"{skip['check']}: explain it"


def test_the_strict_schema_rejects_unknown_fields_but_keeps_open_maps(
        check: ModuleType) -> None:
    schema = check.strict({"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "string"}}},
        "items": {"type": "array", "items": {"type": "object",
                                             "properties": {"b": {"type": "string"}}}}}})
    assert schema["additionalProperties"] is False
    assert schema["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema["properties"]["raw"]
    assert schema["properties"]["items"]["items"]["additionalProperties"] is False
