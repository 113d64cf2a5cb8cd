"""What the deployment tests share: the artefacts loaded, the settings they must name,
and the validators, made strict (unknown fields fail).

- `deploy/k8s/*.yaml`: Kubernetes' own kinds with kubernetes-validate in strict mode,
  KEDA's and CloudNativePG's kinds with jsonschema against their CRD schemas vendored
  in `tests/schemas/` (made strict the same way).
- `docker-compose.yml`: jsonschema against the compose-spec schema in `tests/schemas/`.
- `deploy/Dockerfile`: read as text (no Docker engine needed).

The validators are imported at module level on purpose: without them the tests fail
to import and the run fails; nothing is ever skipped.
"""

import base64
import json
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import latest_version

from dispatcher.metrics import health_app
from shared.metrics import metrics_app
from shared.settings import Settings, env_name

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


def rabbitmq_conf(text: str) -> dict[str, str]:
    """rabbitmq.conf's `key = value` lines (sysctl format)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


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
