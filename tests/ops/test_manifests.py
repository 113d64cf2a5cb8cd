"""The deployment artefacts, checked against their schemas and against the code.

- `deploy/k8s/*.yaml`: Kubernetes' own kinds with kubernetes-validate in strict mode
  (unknown fields fail), KEDA's and CloudNativePG's kinds with jsonschema against
  their CRD schemas vendored in `tests/schemas/` (made strict the same way).
- `docker-compose.yml`: jsonschema against the compose-spec schema in `tests/schemas/`.
- `deploy/Dockerfile`: read as text (no Docker engine needed).

Then the cross-checks that keep them honest: every TAXI_* variable is a real setting,
probe paths are real routes, the KEDA queue and the RabbitMQ policy patterns are the
topology's names, commands are the package's entry points.

The validators are imported at module level on purpose: without them this module
fails to import and the run fails; nothing here is ever skipped.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from dispatcher.__main__ import parse_args
from dispatcher.metrics import health_app
from dispatcher.worker import SHUTDOWN_GRACE_SECONDS
from gateway.app import create_app
from shared.broker import COMMAND_DELIVERY_LIMIT, DEAD_LETTER_BACKLOG, gateway_queue_arguments
from shared.metrics import metrics_app
from shared.settings import Settings, SettingsError, env_name, postgres_hosts
from shared.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
SCHEMAS_DIR = ROOT / "tests" / "schemas"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

# The oldest Kubernetes the manifests claim to support, and the newest schemas bundled.
KUBERNETES_VERSIONS = ("1.29.0", latest_version())
NAMESPACE = "taxi"
CONFIG_MAP = "taxi-config"
APP_SECRET = "taxi-secrets"
GATEWAY = "taxi-gateway"
DISPATCHER = "taxi-dispatcher"
POSTGRES = "taxi-postgres"
# Settings whose values are secrets: they belong in the Secret, never in the ConfigMap.
SECRET_SETTINGS = frozenset({"TAXI_DATABASE_URL", "TAXI_AMQP_URL", "TAXI_JWT_SECRET"})
EXPECTED_FILES = frozenset(
    {
        "namespace.yaml",
        "config.yaml",
        "secret.example.yaml",
        "migrate-job.yaml",
        "rabbitmq-policies.yaml",
        "gateway.yaml",
        "dispatcher.yaml",
        "rabbitmq.yaml",
        "postgres.yaml",
    }
)
# Kinds of operators (KEDA, CloudNativePG): their CRDs' schemas, vendored.
CRD_SCHEMA_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentication_v1alpha1.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_cluster_v1.json",
}
# A JWT secret good enough for production, standing in for the operator's own.
REAL_JWT_SECRET = "x" * 48

Manifest = dict[str, Any]


# --- loading ---------------------------------------------------------------------------


def load_manifests() -> list[tuple[str, Manifest]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


MANIFESTS = load_manifests()


def manifest_id(item: tuple[str, Manifest]) -> str:
    filename, doc = item
    return f"{filename}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(kind: str, name: str) -> Manifest:
    matches = [
        doc for _, doc in MANIFESTS if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(matches)}"
    return matches[0]


def of_kind(kind: str) -> list[Manifest]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def workloads() -> list[Manifest]:
    """Every manifest that runs pods."""
    return [doc for _, doc in MANIFESTS if doc["kind"] in ("Deployment", "Job")]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Manifest) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    container: dict[str, Any] = containers[0]
    return container


def config_data() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", CONFIG_MAP)["data"]
    return data


def secret_data(name: str = APP_SECRET) -> dict[str, str]:
    secret = find("Secret", name)
    data: dict[str, str] = dict(secret.get("stringData", {}))
    for key, value in secret.get("data", {}).items():
        data[key] = base64.b64decode(value).decode()
    return data


def setting_names() -> set[str]:
    return {env_name(field.name) for field in fields(Settings)}


def production_settings() -> Settings:
    """The settings the pods get once the operator has put a real JWT secret in."""
    return Settings.from_env({**config_data(), **secret_data(), "TAXI_JWT_SECRET": REAL_JWT_SECRET})


def pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)


def entry_points() -> set[str]:
    return set(pyproject()["project"]["scripts"])


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"container {container['name']} has no port named {port!r}"
    return int(named[0])


@pytest.fixture(scope="module")
def gateway_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The gateway's routes (building the app opens no connection)."""
    app = create_app(Settings(media_dir=str(tmp_path_factory.mktemp("media"))))
    return {route.path for route in app.routes if hasattr(route, "path")}


async def _never_ready() -> dict[str, bool]:
    return {}


DISPATCHER_PATHS = {route.path for route in health_app(_never_ready).routes}
# What the gateway serves on TAXI_METRICS_PORT, apart from its public port.
GATEWAY_METRICS_PATHS = {route.path for route in metrics_app().routes}


# --- schemas ---------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as kubernetes-validate's strict mode does.

    The API server prunes fields a CRD does not declare; here a misspelt field must fail.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            result[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            result[key] = strict(value)
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = strict(json.loads((SCHEMAS_DIR / CRD_SCHEMA_FILES[(api_version, kind)]).read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS_DIR / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(doc: Manifest) -> list[str]:
    """Every schema violation of one manifest, for every Kubernetes version targeted."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMA_FILES:
        errors = [
            f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in crd_validator(*key).iter_errors(doc)
        ]
        # The CRD schema leaves metadata open; hold it to Kubernetes' ObjectMeta.
        as_config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
        return errors + schema_errors(as_config_map)
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            errors.append(f"Kubernetes {version}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"Kubernetes {version}: {error.message}")
    return errors


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


def rabbitmq_conf(text: str) -> dict[str, str]:
    """rabbitmq.conf's `key = value` lines (sysctl format)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


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


# --- docker compose --------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def interpolate(value: Any) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR}, with nothing set in the shell."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda match: match.group(2) or "", str(value))


def compose_env(service: str) -> dict[str, str]:
    environment = compose()["services"][service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolate(value) for key, value in environment.items()}


def taxi_services() -> list[str]:
    return [
        name
        for name, service in compose()["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    ]


def healthcheck_url(service: str) -> str:
    test = compose()["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", "the image has python, not curl or wget"
    found = re.search(r"https?://[^'\"\s]+", " ".join(test))
    assert found, test
    return found.group(0)


def test_compose_file_matches_the_compose_spec() -> None:
    validator = compose_validator()
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose())
    ]
    assert errors == []
    # The spec's per-service constraint (image or build, build with a context).
    constraint = json.loads((SCHEMAS_DIR / "compose-spec.json").read_text())["definitions"][
        "constraints"
    ]["service"]
    for name, service in compose()["services"].items():
        assert list(jsonschema.Draft201909Validator(constraint).iter_errors(service)) == [], name
    broken = {"services": {"gateway": {"image": "x", "helthcheck": {}}}}
    assert list(validator.iter_errors(broken)), "the compose validator accepts anything"


def test_compose_runs_the_whole_system() -> None:
    services = compose()["services"]
    assert set(services) >= {"postgres", "rabbitmq", "migrate", "gateway", "dispatcher"}
    assert "management" in services["rabbitmq"]["image"]
    assert set(taxi_services()) == {"migrate", "gateway", "dispatcher"}
    assert len({services[name]["image"] for name in taxi_services()}) == 1, "one image"
    scripts = entry_points()
    for name in taxi_services():
        assert services[name]["command"][0] in scripts
    assert services["migrate"]["command"] == ["taxi-migrate"]
    assert services["gateway"]["command"] == ["taxi-gateway"]
    assert services["dispatcher"]["command"][0] == "taxi-dispatcher"


def test_compose_runs_a_three_node_rabbitmq_cluster_the_processes_list() -> None:
    services = compose()["services"]
    nodes = [name for name in services if name == "rabbitmq" or name.startswith("rabbitmq-")]
    assert nodes == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    config = compose()["configs"]["rabbitmq-cluster"]["content"]
    conf = rabbitmq_conf(config)
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = sorted(v for k, v in conf.items() if k.startswith("cluster_formation.classic_"))
    assert listed == [f"rabbit@{services[name]['hostname']}" for name in nodes]
    cookies = {compose_env(name)["RABBITMQ_ERLANG_COOKIE"] for name in nodes}
    assert len(cookies) == 1 and "" not in cookies, "one cookie for every node"
    volumes = [services[name]["volumes"][0].split(":")[0] for name in nodes]
    assert len(set(volumes)) == len(nodes), "a data volume of its own for each node"
    for name in nodes:
        assert services[name]["configs"][0]["source"] == "rabbitmq-cluster"
        assert compose_env(name) == compose_env("rabbitmq")
    urls = Settings.from_env(compose_env("gateway")).amqp_urls
    assert [urlsplit(url).hostname for url in urls] == [
        services[name]["hostname"] for name in nodes
    ]
    for name in taxi_services():
        if name != "migrate":
            assert set(services[name]["depends_on"]) >= set(nodes), name


def test_compose_runs_a_primary_and_a_synchronous_standby_the_processes_list() -> None:
    services = compose()["services"]
    primary = " ".join(services["postgres"]["command"])
    assert "synchronous_standby_names=ANY 1 (standby)" in primary
    standby = services["postgres-standby"]
    assert "pg_basebackup --host=postgres" in standby["command"][0]
    assert "cluster_name=standby" in standby["command"][0]
    assert standby["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    url = compose_env("migrate")["TAXI_DATABASE_URL"]
    assert postgres_hosts(url) == [("postgres", 5432), ("postgres-standby", 5432)]
    assert "target_session_attrs=read-write" in urlsplit(url).query


def test_compose_start_order_uses_health_and_completion() -> None:
    services = compose()["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("gateway", "dispatcher"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["rabbitmq"] == {"condition": "service_healthy"}
        assert depends["postgres"] == {"condition": "service_healthy"}
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"


def test_compose_healthchecks_hit_real_routes(gateway_paths: set[str]) -> None:
    gateway = urlsplit(healthcheck_url("gateway"))
    assert gateway.path == "/readyz" and gateway.path in gateway_paths
    assert gateway.port == int(compose_env("gateway")["TAXI_PORT"])
    dispatcher = urlsplit(healthcheck_url("dispatcher"))
    metrics_port = parse_args(compose()["services"]["dispatcher"]["command"][1:]).metrics_port
    assert dispatcher.path in DISPATCHER_PATHS
    assert dispatcher.port == metrics_port
    for name in ("postgres", "rabbitmq"):
        assert compose()["services"][name]["healthcheck"]["test"]


def test_compose_gateway_is_published_and_the_dispatcher_scales() -> None:
    services = compose()["services"]
    published = [str(port).split(":")[-2:] for port in services["gateway"]["ports"]]
    assert ["8000", compose_env("gateway")["TAXI_PORT"]] in published
    # The gateway's metrics: inside the compose network only, never on the host.
    metrics_port = Settings.from_env(compose_env("gateway")).metrics_port
    assert str(metrics_port) in services["gateway"]["expose"]
    assert all(container != str(metrics_port) for _, container in published)
    dispatcher = services["dispatcher"]
    assert "ports" not in dispatcher, "a fixed host port breaks --scale dispatcher=N"
    assert "container_name" not in dispatcher, "a fixed name breaks --scale dispatcher=N"


def test_compose_settings_are_real_and_valid() -> None:
    real = setting_names()
    for name in taxi_services():
        environment = compose_env(name)
        taxi = {key for key in environment if key.startswith("TAXI_")}
        assert taxi <= real, f"{name}: not settings: {sorted(taxi - real)}"
        Settings.from_env(environment)


def test_compose_credentials_match_the_services_that_create_them() -> None:
    environment = compose_env("gateway")
    database = urlsplit(environment["TAXI_DATABASE_URL"])
    postgres = compose_env("postgres")
    assert database.hostname == "postgres"
    assert database.username == postgres.get("POSTGRES_USER", "postgres")
    assert database.path.lstrip("/") == postgres.get("POSTGRES_DB", database.username)
    if postgres.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
        assert database.password == postgres["POSTGRES_PASSWORD"]
    amqp = urlsplit(environment["TAXI_AMQP_URL"])
    rabbitmq = compose_env("rabbitmq")
    assert amqp.hostname == "rabbitmq"
    assert amqp.username == rabbitmq["RABBITMQ_DEFAULT_USER"] != "guest", "guest is loopback-only"
    assert amqp.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]
    for name in taxi_services():
        assert compose_env(name)["TAXI_DATABASE_URL"] == environment["TAXI_DATABASE_URL"]
        assert compose_env(name)["TAXI_AMQP_URL"] == environment["TAXI_AMQP_URL"]


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), grouped by stage."""
    text = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "an instruction before the first FROM"
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def dockerfile_user() -> str:
    users = [args for name, args in dockerfile_stages()[-1] if name == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    return users[-1].split(":")[0]


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    user = dockerfile_user()
    assert user.isdigit() and int(user) != 0, "a numeric non-root UID (runAsNonRoot checks it)"


def wheel_stage() -> list[tuple[str, str]]:
    """The stage that builds the wheels (the one running `pip wheel`)."""
    (stage,) = [
        stage
        for stage in dockerfile_stages()
        if any(name == "RUN" and "pip wheel" in args for name, args in stage)
    ]
    return stage


def test_dockerfile_builds_the_map_from_the_lockfile_into_the_package() -> None:
    map_stage = dockerfile_stages()[0]
    copied = " ".join(args for name, args in map_stage if name == "COPY")
    assert "client-build/package-lock.json" in copied
    assert any(name == "RUN" and "npm ci" in args for name, args in map_stage)
    into_build = [args for name, args in wheel_stage() if name == "COPY" and "--from=map" in args]
    assert into_build == ["--from=map /vendor/leaflet gateway/client/vendor/leaflet"]


def test_dockerfile_builds_the_package_from_pyproject() -> None:
    project = pyproject()
    build = wheel_stage()
    copied = " ".join(args for name, args in build if name == "COPY").split()
    for needed in ("pyproject.toml", project["project"]["readme"]):
        assert needed in copied, needed
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.removesuffix("*")
        assert package in copied, f"package {package} is not copied into the build stage"
    runs = [args for name, args in build if name == "RUN"]
    assert any(re.search(r"pip wheel\b.*\s\.$", run) for run in runs), runs
    runtime = " ".join(args for name, args in dockerfile_stages()[-1] if name == "RUN")
    assert f"--no-index --find-links=/wheels {project['project']['name']}" in runtime


def test_dockerfile_entry_points_exist() -> None:
    scripts = entry_points()
    final = dockerfile_stages()[-1]
    commands = [json.loads(args) for name, args in final if name in ("CMD", "ENTRYPOINT")]
    assert commands and commands[-1][0] in scripts
    runtime = " ".join(args for name, args in final if name == "RUN")
    for script in ("taxi-gateway", "taxi-dispatcher", "taxi-migrate"):
        assert script in scripts
        assert f"command -v {script}" in runtime, f"the image build does not check {script}"


def test_dockerfile_package_data_check_passes_here() -> None:
    """The build's own check (browser client and migrations are installed) is sound."""
    runtime = " ".join(args for name, args in dockerfile_stages()[-1] if name == "RUN")
    check = re.search(r'python -c "([^"]+)"', runtime)
    assert check, "the runtime stage does not check the installed package"
    result = subprocess.run(
        [sys.executable, "-c", check.group(1)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_settings_are_real() -> None:
    real = setting_names()
    for name, args in dockerfile_stages()[-1]:
        if name == "ENV":
            for key in re.findall(r"(\w+)=", args):
                assert not key.startswith("TAXI_") or key in real, key
