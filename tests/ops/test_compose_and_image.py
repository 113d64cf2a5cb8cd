"""The compose file and the image, checked against their schemas and against the code
(the artefacts and validators: `tests/ops/deploy_files.py`)."""

import json
import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from dispatcher.__main__ import parse_args
from shared.settings import Settings, postgres_hosts
from tests.ops.deploy_files import (
    COMPOSE_FILE,
    DISPATCHER_PATHS,
    SCHEMAS_DIR,
    compose_validator,
    dockerfile_stages,
    dockerfile_user,
    entry_points,
    pyproject,
    rabbitmq_conf,
    setting_names,
)

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
