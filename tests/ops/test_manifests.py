"""The Kubernetes manifests, checked against their schemas and against the code:
every TAXI_* variable is a real setting, probe paths are real routes, the KEDA queue
and the RabbitMQ policy patterns are the topology's names, commands are the
package's entry points (the artefacts and validators: `tests/ops/deploy_files.py`)."""

import base64
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import pytest

from dispatcher.__main__ import parse_args
from dispatcher.worker import SHUTDOWN_GRACE_SECONDS
from shared.broker import COMMAND_DELIVERY_LIMIT, DEAD_LETTER_BACKLOG, gateway_queue_arguments
from shared.settings import Settings, SettingsError
from shared.topology import Topology
from tests.ops.deploy_files import (
    APP_SECRET,
    CONFIG_MAP,
    DISPATCHER,
    DISPATCHER_PATHS,
    EXPECTED_FILES,
    GATEWAY,
    GATEWAY_METRICS_PATHS,
    K8S_DIR,
    MANIFESTS,
    NAMESPACE,
    POSTGRES,
    SECRET_SETTINGS,
    Manifest,
    config_data,
    container_port,
    dockerfile_user,
    entry_points,
    find,
    manifest_id,
    of_kind,
    only_container,
    pod_spec,
    production_settings,
    rabbitmq_conf,
    schema_errors,
    secret_data,
    setting_names,
    workloads,
)

# --- Kubernetes: schemas ---------------------------------------------------------------


def test_every_expected_manifest_is_there() -> None:
    present = {path.name for path in K8S_DIR.glob("*.yaml")}
    assert present >= EXPECTED_FILES, f"missing: {sorted(EXPECTED_FILES - present)}"
    assert (K8S_DIR / "README.md").is_file()


@pytest.mark.parametrize("item", MANIFESTS, ids=manifest_id)
def test_manifest_matches_its_schema(item: tuple[str, Manifest]) -> None:
    _, doc = item
    assert schema_errors(doc) == []


def test_the_validators_refuse_what_they_should() -> None:
    """A validator that accepts anything would make every other schema test pass."""
    deployment = json.loads(json.dumps(find("Deployment", GATEWAY)))
    deployment["spec"]["replica"] = 2
    assert schema_errors(deployment), "a misspelt Deployment field passed kubernetes-validate"
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert schema_errors(unknown), "a kind without a schema passed"
    scaled = json.loads(json.dumps(find("ScaledObject", DISPATCHER)))
    scaled["spec"]["minReplicas"] = 1
    assert schema_errors(scaled), "a misspelt ScaledObject field passed"
    scaled = json.loads(json.dumps(find("ScaledObject", DISPATCHER)))
    scaled["metadata"]["labelz"] = {}
    assert schema_errors(scaled), "a misspelt metadata field passed"
    auth = json.loads(json.dumps(find("TriggerAuthentication", "taxi-rabbitmq")))
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert schema_errors(auth), "a secretTargetRef without its key passed"
    postgres = json.loads(json.dumps(find("Cluster", POSTGRES)))
    postgres["spec"]["postgresql"]["synchronous"]["dataDurabilty"] = "required"
    assert schema_errors(postgres), "a misspelt CloudNativePG Cluster field passed"


def test_everything_lives_in_the_namespace() -> None:
    assert [doc["metadata"]["name"] for doc in of_kind("Namespace")] == [NAMESPACE]
    for _, doc in MANIFESTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, manifest_id(("", doc))


def test_names_are_unique() -> None:
    keys = [(doc["kind"], doc["metadata"]["name"]) for _, doc in MANIFESTS]
    assert len(keys) == len(set(keys))


# --- Kubernetes: configuration ---------------------------------------------------------


def test_config_map_and_secret_hold_only_real_settings() -> None:
    real = setting_names()
    config = set(config_data())
    secret = set(secret_data())
    assert config <= real, f"not settings: {sorted(config - real)}"
    assert secret <= real, f"not settings: {sorted(secret - real)}"
    assert secret == SECRET_SETTINGS
    assert not config & SECRET_SETTINGS, "a secret in the ConfigMap"


def test_every_setting_is_configured() -> None:
    """A new setting must be added to config.yaml (or the Secret) with its default."""
    missing = setting_names() - set(config_data()) - set(secret_data())
    assert not missing, f"add to deploy/k8s/config.yaml: {sorted(missing)}"


def test_config_values_are_the_defaults_except_deployment_specific_ones() -> None:
    defaults = Settings().to_env()
    deployment_specific = {"TAXI_ENV", "TAXI_HOST", "TAXI_MEDIA_DIR"}
    differing = {
        name
        for name, value in config_data().items()
        if name not in deployment_specific and str(value) != defaults[name]
    }
    assert not differing, f"differ from the README defaults: {sorted(differing)}"


def test_production_settings_are_valid_and_the_example_secret_is_refused() -> None:
    assert config_data()["TAXI_ENV"] == "production"
    settings = production_settings()
    assert settings.env == "production"
    # Probes reach the pod IP, so both HTTP servers must listen on every interface.
    assert settings.host == "0.0.0.0"
    with pytest.raises(SettingsError, match="TAXI_JWT_SECRET"):
        Settings.from_env({**config_data(), **secret_data()})


def test_workloads_load_the_config_and_the_secret() -> None:
    for workload in workloads():
        container = only_container(workload)
        if container["name"] == "install-policies":
            continue
        sources = container.get("envFrom", [])
        assert {"configMapRef": {"name": CONFIG_MAP}} in sources, workload["metadata"]["name"]
        assert {"secretRef": {"name": APP_SECRET}} in sources, workload["metadata"]["name"]


def test_every_reference_resolves() -> None:
    for workload in workloads():
        spec = pod_spec(workload)
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    find("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    find("Secret", source["secretRef"]["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_data(ref["name"]), ref
            mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
            declared = {volume["name"] for volume in spec.get("volumes", [])}
            assert mounted <= declared, workload["metadata"]["name"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                find("ConfigMap", volume["configMap"]["name"])
            if "persistentVolumeClaim" in volume:
                find("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


# --- Kubernetes: the image and its pods ------------------------------------------------


def test_one_image_runs_every_workload() -> None:
    images = {c["image"] for w in workloads() for c in pod_spec(w)["containers"]}
    assert len(images) == 1, images
    (image,) = images
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), "pin a tag"


def test_commands_are_entry_points_of_the_package() -> None:
    scripts = entry_points()
    for workload in workloads():
        container = only_container(workload)
        command = container["command"]
        if container["name"] == "install-policies":
            assert command[:2] == ["python", "-c"]
        else:
            assert command[0] in scripts, command
    assert only_container(find("Deployment", GATEWAY))["command"] == ["taxi-gateway"]
    assert only_container(find("Deployment", DISPATCHER))["command"] == ["taxi-dispatcher"]
    assert only_container(find("Job", "taxi-migrate"))["command"] == ["taxi-migrate"]


def test_pods_run_as_the_image_user_and_not_as_root() -> None:
    image_user = dockerfile_user()
    for workload in workloads():
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert str(security["runAsUser"]) == image_user
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
            assert "resources" in container and container["resources"].get("requests")
            assert container["resources"].get("limits", {}).get("memory")


# --- Kubernetes: gateway ---------------------------------------------------------------


def test_gateway_probes_hit_real_routes_on_the_gateway_port(gateway_paths: set[str]) -> None:
    container = only_container(find("Deployment", GATEWAY))
    port = int(config_data()["TAXI_PORT"])
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in gateway_paths, get
        assert container_port(container, get["port"]) == port, probe


def test_gateway_metrics_are_scraped_on_their_own_port(gateway_paths: set[str]) -> None:
    """TAXI_METRICS_PORT, a container port named `metrics` that no Service exposes."""
    deployment = find("Deployment", GATEWAY)
    container = only_container(deployment)
    metrics_port = container_port(container, "metrics")
    assert metrics_port == int(config_data()["TAXI_METRICS_PORT"])
    assert metrics_port != int(config_data()["TAXI_PORT"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in GATEWAY_METRICS_PATHS
    assert annotations["prometheus.io/path"] not in gateway_paths, "not on the public port"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    for port in find("Service", GATEWAY)["spec"]["ports"]:
        assert container_port(container, port["targetPort"]) != metrics_port


def test_gateway_stops_gracefully() -> None:
    spec = pod_spec(find("Deployment", GATEWAY))
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # preStop, then the gateway's own graceful stop (uvicorn timeout_graceful_shutdown=10).
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 10


def test_gateway_service_and_disruption_budget_select_the_gateway_pods() -> None:
    deployment = find("Deployment", GATEWAY)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    dispatcher_labels = find("Deployment", DISPATCHER)["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find("Service", GATEWAY)
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert not selector.items() <= dispatcher_labels.items()
    container = only_container(deployment)
    for port in service["spec"]["ports"]:
        assert container_port(container, port["targetPort"]) == int(config_data()["TAXI_PORT"])
    budget = find("PodDisruptionBudget", GATEWAY)
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not budget["spec"]["selector"]["matchLabels"].items() <= dispatcher_labels.items()
    assert deployment["spec"]["replicas"] > 1, "a PodDisruptionBudget needs spare replicas"


def test_gateway_media_volume_is_the_media_dir() -> None:
    deployment = find("Deployment", GATEWAY)
    mounts = {m["mountPath"]: m["name"] for m in only_container(deployment)["volumeMounts"]}
    volume_name = mounts[config_data()["TAXI_MEDIA_DIR"]]
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == volume_name)
    claim = find("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    if deployment["spec"]["replicas"] > 1:
        assert "ReadWriteMany" in claim["spec"]["accessModes"], "replicas share the photos"
    assert pod_spec(deployment)["securityContext"]["fsGroup"] == int(dockerfile_user())


# --- Kubernetes: dispatcher and KEDA ---------------------------------------------------


def test_dispatcher_arguments_parse_and_probes_use_the_metrics_port() -> None:
    deployment = find("Deployment", DISPATCHER)
    container = only_container(deployment)
    args = parse_args(container["args"])
    assert args.metrics_port == 9100
    assert container_port(container, "metrics") == args.metrics_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in DISPATCHER_PATHS, get
        assert container_port(container, get["port"]) == args.metrics_port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in DISPATCHER_PATHS
    assert int(annotations["prometheus.io/port"]) == args.metrics_port


def test_dispatcher_replicas_belong_to_keda_and_shutdown_has_time() -> None:
    deployment = find("Deployment", DISPATCHER)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS


def test_keda_scales_the_dispatcher_on_the_command_queue() -> None:
    scaled = find("ScaledObject", DISPATCHER)["spec"]
    assert scaled["scaleTargetRef"]["name"] == DISPATCHER
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert scaled["minReplicaCount"] >= 1, "every worker runs the outbox relay: never zero"
    assert scaled["maxReplicaCount"] >= scaled["minReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    prefix = config_data()["TAXI_BROKER_PREFIX"]
    assert metadata["queueName"] == Topology(prefix).dispatcher_queue
    assert metadata["queueName"] == Topology("taxi").dispatcher_queue
    assert metadata["mode"] == "QueueLength"
    assert int(metadata["value"]) > 0
    assert "host" not in metadata, "the broker URL holds a password: use the Secret"
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert refs["host"]["name"] == APP_SECRET
    assert refs["host"]["key"] == "TAXI_AMQP_URL"
    assert refs["host"]["key"] in secret_data(refs["host"]["name"])
    assert metadata.get("protocol", "auto") in ("amqp", "auto")
    assert urlsplit(secret_data()["TAXI_AMQP_URL"]).scheme in ("amqp", "amqps")


# --- Kubernetes: RabbitMQ policies -----------------------------------------------------


def policies() -> dict[str, dict[str, Any]]:
    config_map = find("ConfigMap", "taxi-rabbitmq-definitions")
    definitions = json.loads(config_map["data"]["definitions.json"])
    assert set(definitions) == {"policies"}
    return {policy["name"]: policy for policy in definitions["policies"]}


def amqp_vhost() -> str:
    path = urlsplit(secret_data()["TAXI_AMQP_URL"]).path
    return unquote(path[1:]) or "/"


def policy_for(queue: str) -> str | None:
    """The policy RabbitMQ applies to a queue: the highest priority whose pattern matches."""
    matching = [
        p
        for p in policies().values()
        if re.search(p["pattern"], queue) and p["apply-to"] != "exchanges"
    ]
    if not matching:
        return None
    best = max(matching, key=lambda p: p["priority"])
    assert [p["priority"] for p in matching].count(best["priority"]) == 1, "ambiguous"
    return str(best["name"])


def test_gateway_queue_policy_matches_the_gateway_queues_and_their_bounds() -> None:
    prefix = config_data()["TAXI_BROKER_PREFIX"]
    for topology in (Topology(prefix), Topology("taxi")):
        assert policy_for(topology.gateway_queue("0cd57ad118b1")) == "taxi-gateway-queues"
        assert policy_for(topology.dispatcher_queue) != "taxi-gateway-queues"
        assert policy_for(topology.dead_letter_queue) != "taxi-gateway-queues"
    policy = policies()["taxi-gateway-queues"]
    assert policy["pattern"] == r"^taxi\.gateway\."
    # The policy repeats the queue arguments the gateway sets.
    expected = {key.removeprefix("x-"): value for key, value in gateway_queue_arguments().items()}
    assert policy["definition"] == expected


def test_dispatcher_policy_dead_letters_failing_commands_into_a_bounded_queue() -> None:
    topology = Topology(config_data()["TAXI_BROKER_PREFIX"])
    assert policy_for(topology.dispatcher_queue) == "taxi-dispatcher"
    assert policy_for(topology.gateway_queue("0cd57ad118b1")) != "taxi-dispatcher"
    assert policy_for(topology.dead_letter_queue) == "taxi-dead-letters"
    assert policies()["taxi-dead-letters"]["definition"] == {
        "max-length": DEAD_LETTER_BACKLOG,
        "overflow": "drop-head",
    }
    assert policies()["taxi-dispatcher"]["definition"] == {
        "dead-letter-exchange": topology.dead_letter_exchange,
        "delivery-limit": COMMAND_DELIVERY_LIMIT,
    }


def test_policies_are_for_the_virtual_host_of_the_amqp_url() -> None:
    for policy in policies().values():
        assert policy["vhost"] == amqp_vhost()
        assert policy["apply-to"] == "queues"


class FakeManagementApi(BaseHTTPRequestHandler):
    """Records what the policy job sends to RabbitMQ's management API."""

    requests: ClassVar[list[tuple[str, str, str, Any]]] = []
    status: ClassVar[int] = 204

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.requests.append((self.command, self.path, self.headers["authorization"], body))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def management_api() -> Iterator[tuple[str, type[FakeManagementApi]]]:
    FakeManagementApi.requests = []
    FakeManagementApi.status = 204
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeManagementApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://admin:s3cr%40t@127.0.0.1:{server.server_address[1]}/", FakeManagementApi
    finally:
        server.shutdown()
        server.server_close()


def run_policy_job(management_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    job = find("Job", "taxi-rabbitmq-policies")
    container = only_container(job)
    env = {item["name"]: item.get("value") for item in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "definitions")
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "definitions")
    assert volume["configMap"]["name"] == "taxi-rabbitmq-definitions"
    assert env["DEFINITIONS_FILE"] == f"{mount['mountPath']}/definitions.json"
    definitions = tmp_path / "definitions.json"
    data = find("ConfigMap", "taxi-rabbitmq-definitions")["data"]["definitions.json"]
    definitions.write_text(data)
    return subprocess.run(
        [sys.executable, *container["command"][1:]],
        env={"RABBITMQ_MANAGEMENT_URL": management_url, "DEFINITIONS_FILE": str(definitions)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_policy_job_puts_every_policy_through_the_management_api(
    management_api: tuple[str, type[FakeManagementApi]], tmp_path: Path
) -> None:
    url, api = management_api
    result = run_policy_job(url, tmp_path)
    assert result.returncode == 0, result.stderr
    auth = "Basic " + base64.b64encode(b"admin:s3cr@t").decode()
    expected = [
        (
            "PUT",
            f"/api/policies/%2F/{name}",
            auth,
            {key: policy[key] for key in ("pattern", "apply-to", "priority", "definition")},
        )
        for name, policy in policies().items()
    ]
    assert api.requests == expected


def test_policy_job_fails_when_the_broker_refuses(
    management_api: tuple[str, type[FakeManagementApi]], tmp_path: Path
) -> None:
    url, api = management_api
    api.status = 401
    result = run_policy_job(url, tmp_path)
    assert result.returncode != 0
    assert "HTTP 401" in result.stderr


# --- Kubernetes: the three-node RabbitMQ cluster ---------------------------------------

RABBITMQ = "taxi-rabbitmq"
RABBITMQ_NODES_SERVICE = "taxi-rabbitmq-nodes"
RABBITMQ_SECRET = "taxi-rabbitmq-cluster"


def rabbitmq_pod_labels() -> dict[str, str]:
    labels: dict[str, str] = find("StatefulSet", RABBITMQ)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_rabbitmq_is_three_nodes_that_find_each_other_through_a_headless_service() -> None:
    nodes = find("StatefulSet", RABBITMQ)
    spec = nodes["spec"]
    # Quorum queues serve while a majority runs: three nodes survive the loss of one.
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    labels = rabbitmq_pod_labels()
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    gateway_labels = find("Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    assert not spec["selector"]["matchLabels"].items() <= gateway_labels.items()
    headless = find("Service", spec["serviceName"])
    assert spec["serviceName"] == RABBITMQ_NODES_SERVICE
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True, "booting nodes must be found"
    assert headless["spec"]["selector"].items() <= labels.items()
    container = only_container(nodes)
    for port in headless["spec"]["ports"]:
        container_port(container, port["targetPort"])
    names = {port["name"] for port in headless["spec"]["ports"]}
    assert {"epmd", "cluster-rpc"} <= names
    config = find("ConfigMap", "taxi-rabbitmq-config")["data"]
    conf = rabbitmq_conf(config["rabbitmq.conf"])
    assert conf["cluster_formation.peer_discovery_backend"] == "rabbit_peer_discovery_k8s"
    assert "rabbitmq_peer_discovery_k8s" in config["enabled_plugins"]
    assert conf["cluster_formation.k8s.service_name"] == RABBITMQ_NODES_SERVICE
    suffix = f".{RABBITMQ_NODES_SERVICE}.{NAMESPACE}.svc.cluster.local"
    assert conf["cluster_formation.k8s.hostname_suffix"] == suffix
    env = {item["name"]: item for item in container["env"]}
    assert env["RABBITMQ_NODENAME"]["value"] == f"rabbit@$(MY_POD_NAME){suffix}"
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert env["MY_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # A network split pauses the minority rather than letting two halves diverge.
    assert conf["cluster_partition_handling"] == "pause_minority"
    mounted = {
        mount["mountPath"]: mount["subPath"]
        for mount in container["volumeMounts"]
        if mount["name"] == "config"
    }
    assert set(mounted.values()) == set(config)
    assert mounted["/etc/rabbitmq/enabled_plugins"] == "enabled_plugins"
    assert next(iter(spec["volumeClaimTemplates"]))["metadata"]["name"] in {
        mount["name"] for mount in container["volumeMounts"]
    }


def test_rabbitmq_peer_discovery_may_read_the_endpoints_and_nothing_else() -> None:
    pod = pod_spec(find("StatefulSet", RABBITMQ))
    account = pod["serviceAccountName"]
    find("ServiceAccount", account)
    assert pod["automountServiceAccountToken"] is True
    binding = find("RoleBinding", "taxi-rabbitmq-peer-discovery")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    role = find("Role", binding["roleRef"]["name"])
    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert ("endpoints", "get") in granted
    assert granted <= {("endpoints", "get"), ("events", "create")}


def test_rabbitmq_loses_at_most_one_node_at_a_time_and_never_two_on_one_machine() -> None:
    nodes = find("StatefulSet", RABBITMQ)
    replicas = nodes["spec"]["replicas"]
    budget = find("PodDisruptionBudget", RABBITMQ)["spec"]
    assert budget["selector"]["matchLabels"].items() <= rabbitmq_pod_labels().items()
    assert replicas - budget["maxUnavailable"] > replicas // 2, "a majority must stay up"
    (term,) = pod_spec(nodes)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= rabbitmq_pod_labels().items()


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    match = re.fullmatch(r"([\d.]+)\s*([A-Za-z]*)", quantity)
    assert match, quantity
    return float(match.group(1)) * units[match.group(2)]


def test_rabbitmq_blocks_publishers_before_its_memory_limit() -> None:
    container = only_container(find("StatefulSet", RABBITMQ))
    limit = mebibytes(container["resources"]["limits"]["memory"])
    assert (
        container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    )
    conf = rabbitmq_conf(find("ConfigMap", "taxi-rabbitmq-config")["data"]["rabbitmq.conf"])
    watermark = mebibytes(conf["vm_memory_high_watermark.absolute"])
    assert watermark <= 0.7 * limit, "the broker's own garbage collection needs headroom"


def test_rabbitmq_pods_meet_the_restricted_pod_security_standard() -> None:
    pod = pod_spec(find("StatefulSet", RABBITMQ))
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]["memory"]


def test_the_processes_reach_the_cluster_through_its_service() -> None:
    service = find("Service", RABBITMQ)
    assert service["spec"]["selector"].items() <= rabbitmq_pod_labels().items()
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    container = only_container(find("StatefulSet", RABBITMQ))
    for port in service["spec"]["ports"]:
        container_port(container, port["targetPort"])
    host = f"{RABBITMQ}.{NAMESPACE}.svc.cluster.local"
    cluster = secret_data(RABBITMQ_SECRET)
    assert set(cluster) == {
        "RABBITMQ_DEFAULT_USER",
        "RABBITMQ_DEFAULT_PASS",
        "RABBITMQ_ERLANG_COOKIE",
    }
    env = container["env"]
    refs = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for item in env
        if "valueFrom" in item and "secretKeyRef" in item["valueFrom"]
    }
    assert refs == set(cluster)
    for url, port in (
        (production_settings().amqp_urls[0], ports["amqp"]),
        (secret_data("taxi-rabbitmq-admin")["RABBITMQ_MANAGEMENT_URL"], ports["management"]),
    ):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (host, port), url
        assert parts.username == cluster["RABBITMQ_DEFAULT_USER"], url


def test_postgres_is_a_primary_and_a_synchronous_standby_on_two_machines() -> None:
    spec = find("Cluster", POSTGRES)["spec"]
    assert spec["instances"] == 2
    synchronous = spec["postgresql"]["synchronous"]
    assert synchronous["number"] == spec["instances"] - 1 and synchronous["method"] == "any"
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["affinity"]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["bootstrap"]["initdb"]["database"] == production_settings().database_name
    connections = int(spec["postgresql"]["parameters"]["max_connections"])
    assert connections > 217, "fewer connections than the workers and gateways open"


def test_the_processes_reach_the_postgres_primary_through_its_read_write_service() -> None:
    """CloudNativePG's `<cluster>-rw` Service follows the primary through a failover."""
    url = urlsplit(production_settings().database_url)
    assert (url.hostname, url.port) == (f"{POSTGRES}-rw.{NAMESPACE}.svc.cluster.local", 5432)
    owner = find("Cluster", POSTGRES)["spec"]["bootstrap"]["initdb"]["owner"]
    assert url.username == owner
