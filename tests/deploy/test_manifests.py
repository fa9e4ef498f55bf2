"""What the deploy files must agree on, checked by parsing them (no Docker engine here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from service import health
from service.config import parse_config
from service.config.model import ServiceConfig
from service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_PATH = "/etc/kafka-dispatch/service.yaml"
OVERRIDES = {
    "KAFKA_BOOTSTRAP_SERVERS": "broker-a:9092,broker-b:9092",
    "SCHEMA_REGISTRY_URL": "http://other-registry:8080/apis/ccompat/v7",
    "KAFKA_SASL_USERNAME": "svc-user",
    "KAFKA_SASL_PASSWORD": "svc-password",
}
BUILTIN_SERIES = {"up"}
METRIC = re.compile(r"\b(kafka_dispatch_[a-z_]+|up)\b")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _k8s() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/k8s by kind (one object of each kind)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document and document.get("kind") != "Kustomization":
                assert document["kind"] not in objects, f"two {document['kind']} objects"
                objects[document["kind"]] = document
    return objects


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return _k8s()


def _compose_config_text(compose: dict[str, Any]) -> str:
    mounts = [
        volume.split(":")
        for volume in compose["services"]["consumer"]["volumes"]
        if volume.split(":")[1] == CONFIG_PATH
    ]
    assert len(mounts) == 1, "the consumer mounts one config at " + CONFIG_PATH
    return (ROOT / mounts[0][0]).read_text(encoding="utf-8")


def _k8s_config_text(k8s: dict[str, dict[str, Any]]) -> str:
    volumes = k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]
    (config,) = [v for v in volumes if "configMap" in v]
    assert config["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    mount = next(m for m in _container(k8s)["volumeMounts"] if m["name"] == config["name"])
    assert f"{mount['mountPath']}/service.yaml" == CONFIG_PATH
    return str(k8s["ConfigMap"]["data"]["service.yaml"])


def _container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _configs() -> dict[str, str]:
    return {
        "compose": _compose_config_text(_yaml(ROOT / "docker-compose.yml")),
        "k8s": _k8s_config_text(_k8s()),
    }


@pytest.fixture(scope="module", params=["compose", "k8s"])
def config(request: pytest.FixtureRequest) -> ServiceConfig:
    """The mounted config, through the service's own validator, with its own values."""
    return parse_config(yaml.safe_load(_configs()[request.param]), {}, request.param)


def _metric_names() -> set[str]:
    """Every series name service/metrics.py exposes (counters with _total, histogram parts)."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


# ---- the mounted configs ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_mounted_config_is_valid_with_and_without_env_overrides(where: str) -> None:
    document = yaml.safe_load(_configs()[where])
    own = parse_config(document, {}, where)
    assert own.kafka.bootstrap_servers and "localhost" not in own.kafka.bootstrap_servers
    assert own.registry is not None and "localhost" not in own.registry.url
    assert own.runtime.metrics_host == "0.0.0.0", (  # noqa: S104
        "probes and scrapes come from outside"
    )
    overridden = parse_config(document, OVERRIDES, where)
    assert overridden.kafka.bootstrap_servers == OVERRIDES["KAFKA_BOOTSTRAP_SERVERS"]
    assert overridden.registry is not None
    assert overridden.registry.url == OVERRIDES["SCHEMA_REGISTRY_URL"]
    assert overridden.kafka.client["sasl.username"] == "svc-user"
    assert overridden.kafka.client["sasl.password"].reveal() == "svc-password"


def test_k8s_config_holds_no_credentials(k8s: dict[str, dict[str, Any]]) -> None:
    text = _k8s_config_text(k8s)
    assert "sasl.username" not in text and "sasl.password" not in text
    env = {e["name"]: e for e in _container(k8s)["env"]}
    for name, key in (("KAFKA_SASL_USERNAME", "username"), ("KAFKA_SASL_PASSWORD", "password")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "kafka-dispatch-sasl", "key": key}
    assert "Secret" not in k8s, "credentials are referenced, never committed"


def test_consumer_factory_reads_the_mounted_config(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    env = {e["name"]: e.get("value") for e in _container(k8s)["env"]}
    assert env["SERVICE_CONFIG"] == CONFIG_PATH
    for name in ("init", "consumer", "publisher"):
        assert compose["services"][name]["environment"]["SERVICE_CONFIG"] == CONFIG_PATH
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f'CMD ["run", "-c", "{CONFIG_PATH}"]' in dockerfile
    assert 'ENTRYPOINT ["kafka-dispatch"]' in dockerfile
    assert _container(k8s)["args"] == ["run", "-c", CONFIG_PATH]


# ---- ports and probes ------------------------------------------------------------------


def test_ports_agree_everywhere(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]], config: ServiceConfig
) -> None:
    port = config.runtime.metrics_port
    assert port == 9100
    # Kubernetes: container port, probes (by name), Service target, scrape annotation
    container = _container(k8s)
    (declared,) = container["ports"]
    assert declared["containerPort"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (port, declared["name"])
    (service_port,) = k8s["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in (port, declared["name"])
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    # compose: exposed port, healthchecks, prometheus scrape target
    consumer = compose["services"]["consumer"]
    assert [str(p) for p in consumer["expose"]] == [str(port)]
    assert f"127.0.0.1:{port}/healthz" in " ".join(consumer["healthcheck"]["test"])
    scrape = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "kafka-dispatch"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["consumer"] and sd["port"] == port
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # the image
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert f"127.0.0.1:{port}/healthz" in dockerfile


def test_probe_paths_are_real_endpoints(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    source = Path(health.__file__).read_text()
    endpoints = set(re.findall(r'"(/[a-z]+)":', source))
    assert {"/metrics", "/healthz", "/readyz"} <= endpoints
    container = _container(k8s)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    used = re.findall(r"/(?:healthz|readyz|metrics)\b", (DEPLOY / "Dockerfile").read_text())
    used += re.findall(r"/(?:healthz|readyz)\b", json.dumps(compose["services"]["consumer"]))
    assert used and set(used) <= endpoints


def test_grace_periods_exceed_shutdown_timeout(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]], config: ServiceConfig
) -> None:
    timeout = config.runtime.shutdown_timeout
    grace = k8s["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > timeout
    stop = compose["services"]["consumer"]["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) > timeout


# ---- replicas versus partitions --------------------------------------------------------


def test_replicas_never_exceed_partitions(
    compose: dict[str, Any], k8s: dict[str, dict[str, Any]]
) -> None:
    configs = _configs()
    compose_config = parse_config(yaml.safe_load(configs["compose"]), {}, "compose")
    k8s_config = parse_config(yaml.safe_load(configs["k8s"]), {}, "k8s")
    assert compose["services"]["consumer"]["deploy"]["replicas"] == 3
    assert compose["services"]["consumer"]["deploy"]["replicas"] <= compose_config.kafka.partitions
    scaled = k8s["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["maxReplicaCount"] <= k8s_config.kafka.partitions
    # KEDA owns the count: a replicas field would reset it on every `kubectl apply -k`
    assert "replicas" not in k8s["Deployment"]["spec"]
    assert "partition" in (DEPLOY / "k8s" / "scaledobject.yaml").read_text().lower()


def test_keda_trigger_watches_the_configured_group_and_topic(
    k8s: dict[str, dict[str, Any]],
) -> None:
    config = parse_config(yaml.safe_load(_k8s_config_text(k8s)), {}, "k8s")
    (trigger,) = k8s["ScaledObject"]["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == config.kafka.bootstrap_servers
    groups = {q.group_id: q for q in config.queues.values()}
    assert meta["consumerGroup"] in groups
    assert meta["topic"] in groups[meta["consumerGroup"]].topics
    assert int(meta["lagThreshold"]) > 0
    assert trigger["authenticationRef"]["name"] == k8s["TriggerAuthentication"]["metadata"]["name"]


def test_pdb_and_service_select_the_deployment_pods(k8s: dict[str, dict[str, Any]]) -> None:
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["Service"]["spec"]["selector"].items() <= labels.items()
    resources = _container(k8s)["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]


# ---- compose start order ---------------------------------------------------------------


def test_compose_starts_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # images default to the official ones, at the versions deploy/versions.env names
    assert services["kafka"]["image"].startswith("${KAFKA_IMAGE:-apache/kafka:${KAFKA_VERSION")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["registry"]["image"].startswith(
        "${REGISTRY_IMAGE:-apicurio/apicurio-registry:${APICURIO_VERSION"
    )
    for name in ("kafka", "registry", "consumer"):
        assert services[name]["healthcheck"]["test"], f"{name} has a healthcheck"
    init = services["init"]
    assert init["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "registry": {"condition": "service_healthy"},
    }
    assert "topics create" in init["command"][0] and "schemas register" in init["command"][0]
    assert services["consumer"]["depends_on"]["init"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["publisher"]["depends_on"]["consumer"]["condition"] == "service_healthy"
    assert "examples.payment_service.traffic" in services["publisher"]["command"][0]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in ("init", "consumer", "publisher"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    # every host file compose mounts exists
    for service in services.values():
        for volume in service.get("volumes", []):
            assert (ROOT / volume.split(":")[0]).exists(), volume


def test_compose_registry_url_uses_the_ccompat_api(compose: dict[str, Any]) -> None:
    config = parse_config(yaml.safe_load(_compose_config_text(compose)), {}, "compose")
    assert config.registry is not None
    assert config.registry.url == "http://registry:8080/apis/ccompat/v7"
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert compose["services"]["init"]["environment"]["SCHEMA_REGISTRY_URL"] == config.registry.url


# ---- dashboard and alerts --------------------------------------------------------------


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "kafka-dispatch.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def test_dashboard_queries_only_metrics_the_service_exports() -> None:
    known = _metric_names() | BUILTIN_SERIES
    exprs = _dashboard_exprs()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used - known == set()
    text = " ".join(exprs)
    for needed in (
        "kafka_dispatch_received_messages_total",  # throughput
        "kafka_dispatch_consumer_lag_messages",  # lag per partition
        "histogram_quantile(0.99",  # p99
        'outcome="failure"',  # errors
        'outcome="dead_lettered"',  # dead letters
        "kafka_dispatch_rebalances_total",  # rebalances
    ):
        assert needed in text


def test_dashboard_is_provisioned() -> None:
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "kafka-dispatch.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = sources["datasources"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "kafka-dispatch.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["uid"]}
    assert source["url"] == "http://prometheus:9090"


def test_alerts_reference_existing_metrics() -> None:
    known = _metric_names() | BUILTIN_SERIES
    rules = [r for g in _yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"] for r in g["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {
        "KafkaDispatchLagGrowing",
        "KafkaDispatchDeadLetters",
        "KafkaDispatchNoProgress",
        "KafkaDispatchInstanceDown",
    } <= names
    for rule in rules:
        used = set(METRIC.findall(rule["expr"]))
        assert used, f"{rule['alert']} references no metric"
        assert used <= known, f"{rule['alert']}: unknown {used - known}"
    scrape = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert any(j["job_name"] == "kafka-dispatch" for j in scrape["scrape_configs"])
    assert 'job="kafka-dispatch"' in " ".join(r["expr"] for r in rules)
