"""The deploy files through real validators, each shown able to fail on a broken copy.

* ``kubeconform -strict`` on every manifest in ``deploy/k8s`` and on ``kustomize build
  deploy/k8s``, against JSON schemas converted from the Kubernetes OpenAPI spec and KEDA's
  CRDs (``deploy/tools/k8s_schemas.py``): unknown fields and wrong types fail.
* ``compose-check`` (``deploy/tools/compose-check``, the Compose Spec's own loader, compose-go,
  which ``docker compose`` is built on) on ``docker-compose.yml`` with ``deploy/versions.env``.

``make deps`` builds the tools and schemas and lists them in ``.local/deps.env``. A missing
tool fails these tests with the command to run; they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
VERSIONS = ROOT / "deploy" / "versions.env"
DEPS_ENV = ROOT / ".local" / "deps.env"
EXPECTED_KINDS = {
    "ConfigMap",
    "Deployment",
    "PodDisruptionBudget",
    "ScaledObject",
    "Service",
    "TriggerAuthentication",
}

Document = dict[str, Any]


def _deps() -> dict[str, str]:
    if not DEPS_ENV.is_file():
        pytest.fail(f"{DEPS_ENV} missing: run `make deps` (installs the validators)")
    pairs = (
        line.split("=", 1)
        for line in DEPS_ENV.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    )
    return dict(pairs)


def _tool(key: str) -> str:
    path = _deps().get(key, "")
    if not (path and os.access(path, os.X_OK)):
        pytest.fail(f"{key} ({path or 'not listed'}) is not installed: run `make deps`")
    return path


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # a fixed environment: nothing from the developer's shell may make a check pass
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def kubeconform(*sources: Path, stdin: str | None = None) -> tuple[int, list[Document]]:
    """Run kubeconform (strict, no missing schema tolerated); return (exit code, resources)."""
    deps = _deps()
    schemas = Path(deps.get("K8S_SCHEMAS", ""))
    if not (schemas / "deployment-apps-v1.json").is_file():
        pytest.fail(f"no Kubernetes schemas in {schemas}: run `make deps`")
    location = str(schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    args = [_tool("KUBECONFORM"), "-strict", "-summary", "-verbose", "-output", "json"]
    args += ["-schema-location", location]
    args += ["-kubernetes-version", deps["KUBERNETES_VERSION"].removeprefix("v")]
    result = _run([*args, *(str(s) for s in sources)] if sources else [*args, "-"], stdin)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"kubeconform: {result.stdout}{result.stderr}") from None
    return result.returncode, list(report.get("resources") or [])


def kustomize_build(directory: Path) -> subprocess.CompletedProcess[str]:
    return _run([_tool("KUSTOMIZE"), "build", str(directory)])


def compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    return _run([_tool("COMPOSE_CHECK"), "-env-file", str(VERSIONS), str(path)])


def _manifests() -> list[Path]:
    """Every file in deploy/k8s except the Kustomization (which kustomize itself checks)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[Document]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _failures(resources: list[Document]) -> str:
    return "\n".join(
        f"{r.get('filename')}: {r.get('kind')} {r.get('status')}: {r.get('msg')}"
        for r in resources
        if r.get("status") != "statusValid"
    )


# ---- Kubernetes ------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _documents(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in _manifests()]
    assert set(p.suffix for p in K8S.iterdir()) == {".yaml"}, "validated files are *.yaml"


def test_every_manifest_passes_kubeconform() -> None:
    code, resources = kubeconform(*_manifests())
    assert code == 0, _failures(resources)
    expected = sum(len(_documents(p)) for p in _manifests())
    assert len(resources) == expected
    assert all(r["status"] == "statusValid" for r in resources), _failures(resources)
    assert {r["kind"] for r in resources} == EXPECTED_KINDS
    assert {r["filename"] for r in resources} == {str(p) for p in _manifests()}


def test_kustomize_output_passes_kubeconform() -> None:
    built = kustomize_build(K8S)
    assert built.returncode == 0, built.stderr
    documents = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert {d["kind"] for d in documents} == EXPECTED_KINDS
    for document in documents:  # the kustomization's common label reached every object
        assert document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kafka-dispatch"
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    code, resources = kubeconform(stdin=built.stdout)
    assert code == 0, _failures(resources)
    assert len(resources) == len(documents)
    assert all(r["status"] == "statusValid" for r in resources), _failures(resources)


def _wrong_type(docs: list[Document]) -> None:
    docs[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"


def _unknown_container_field(docs: list[Document]) -> None:
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    container["imagePulPolicy"] = "Always"  # misspelt imagePullPolicy


def _unknown_keda_field(docs: list[Document]) -> None:
    docs[0]["spec"]["pollInterval"] = 15  # misspelt pollingInterval


def _wrong_keda_type(docs: list[Document]) -> None:
    docs[0]["spec"]["maxReplicaCount"] = "six"


def _unknown_crd_metadata_field(docs: list[Document]) -> None:
    docs[0]["metadata"]["label"] = {"team": "payments"}  # not ObjectMeta's labels


BROKEN_MANIFESTS: dict[str, tuple[str, Callable[[list[Document]], None], str]] = {
    "wrong-type": (
        "deployment.yaml",
        _wrong_type,
        "'/spec/template/spec/terminationGracePeriodSeconds': got string, want integer",
    ),
    "unknown-field": (
        "deployment.yaml",
        _unknown_container_field,
        "'/spec/template/spec/containers/0': additional properties 'imagePulPolicy'",
    ),
    "keda-unknown-field": (
        "scaledobject.yaml",
        _unknown_keda_field,
        "'/spec': additional properties 'pollInterval'",
    ),
    "keda-wrong-type": (
        "scaledobject.yaml",
        _wrong_keda_type,
        "'/spec/maxReplicaCount': got string, want integer",
    ),
    "crd-metadata": (
        "scaledobject.yaml",
        _unknown_crd_metadata_field,
        "'/metadata': additional properties 'label'",
    ),
}


def _broken_copy(directory: Path, case: str) -> Path:
    """Copy deploy/k8s into ``directory`` with one manifest broken as ``case`` says."""
    name, breaks, _ = BROKEN_MANIFESTS[case]
    shutil.copytree(K8S, directory)
    docs = _documents(K8S / name)
    breaks(docs)
    (directory / name).write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return directory / name


@pytest.mark.parametrize("case", sorted(BROKEN_MANIFESTS))
def test_broken_manifest_fails_kubeconform(tmp_path: Path, case: str) -> None:
    broken = _broken_copy(tmp_path / "k8s", case)
    _, _, error = BROKEN_MANIFESTS[case]
    code, resources = kubeconform(broken)
    assert code == 1
    invalid = [r for r in resources if r["status"] == "statusInvalid"]
    assert invalid and error in invalid[0]["msg"], resources
    # the same break reaches the check through the kustomize output too
    built = kustomize_build(tmp_path / "k8s")
    assert built.returncode == 0, built.stderr
    code, resources = kubeconform(stdin=built.stdout)
    assert code == 1 and any(error in r["msg"] for r in resources), resources


def _numeric_target_port(docs: list[Document]) -> None:
    docs[0]["spec"]["ports"][0]["targetPort"] = 9100  # int-or-string: the number form


def _numeric_quantities(docs: list[Document]) -> None:
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    container["resources"] = {"requests": {"cpu": 1, "memory": 134217728}}


VALID_VARIANTS: dict[str, tuple[str, Callable[[list[Document]], None]]] = {
    "int-or-string": ("service.yaml", _numeric_target_port),
    "numeric-quantity": ("deployment.yaml", _numeric_quantities),
}


@pytest.mark.parametrize("case", sorted(VALID_VARIANTS))
def test_valid_variants_pass_kubeconform(tmp_path: Path, case: str) -> None:
    """The converted schemas are not stricter than the API server where it accepts both forms."""
    name, changes = VALID_VARIANTS[case]
    docs = _documents(K8S / name)
    changes(docs)
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    code, resources = kubeconform(path)
    assert code == 0, _failures(resources)


def test_broken_kustomization_fails_kustomize(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / "kustomization.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "commonLabelz: {a: b}\n")
    built = kustomize_build(tmp_path / "k8s")
    assert built.returncode != 0
    assert "commonLabelz" in built.stderr


# ---- Compose ---------------------------------------------------------------------------


def test_compose_file_passes_the_compose_spec_loader() -> None:
    result = compose_check(COMPOSE)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert f"({len(services)} services)" in result.stdout


def _compose_invalid_service_key(compose: Document) -> None:
    compose["services"]["consumer"]["restart_policy"] = "always"  # belongs under deploy:


def _compose_invalid_top_level_key(compose: Document) -> None:
    compose["networkz"] = {"default": {}}


def _compose_undefined_dependency(compose: Document) -> None:
    compose["services"]["consumer"]["depends_on"]["zookeeper"] = {"condition": "service_healthy"}


BROKEN_COMPOSE: dict[str, tuple[Callable[[Document], None], str]] = {
    "invalid-service-key": (_compose_invalid_service_key, "services.consumer.restart_policy"),
    "invalid-top-level-key": (_compose_invalid_top_level_key, "networkz"),
    "undefined-dependency": (_compose_undefined_dependency, 'undefined service "zookeeper"'),
}


def _compose_copy(tmp_path: Path, breaks: Callable[[Document], None] | None) -> Path:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    if breaks is not None:
        breaks(compose)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False), encoding="utf-8")
    return path


def test_unbroken_compose_copy_passes(tmp_path: Path) -> None:
    """The broken copies below fail for their break, not for being copies."""
    result = compose_check(_compose_copy(tmp_path, None))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", sorted(BROKEN_COMPOSE))
def test_broken_compose_fails_the_compose_spec_loader(tmp_path: Path, case: str) -> None:
    breaks, error = BROKEN_COMPOSE[case]
    result = compose_check(_compose_copy(tmp_path, breaks))
    assert result.returncode == 1
    assert error in result.stderr, result.stderr


def test_compose_variables_must_be_set(tmp_path: Path) -> None:
    def unset_variable(compose: Document) -> None:
        compose["services"]["consumer"]["image"] = "kafka-dispatch:${NO_SUCH_VERSION}"

    result = compose_check(_compose_copy(tmp_path, unset_variable))
    assert result.returncode == 1
    assert '"NO_SUCH_VERSION" variable is not set' in result.stderr
