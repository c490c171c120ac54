"""Static checks of the container setup: Dockerfile, docker-compose.yaml, .env.example, .dockerignore.

No Docker engine runs on development or CI machines, so nothing is built or started here. The
compose file is parsed with PyYAML and its variables are substituted with the values of
``.env.example`` plus dummy secrets. The substitution knows only the forms the file uses
(``${VAR:-default}``, ``${VAR:?message}``, ``$$``) and refuses any other. When a compose CLI (v2)
is installed, ``docker compose config`` validates the file too; otherwise that test is skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"
DEV_DISTRIBUTION = "include/ihc_attribution_dev"

AIRFLOW_IMAGE = "apache/airflow:3.3.2"
AIRFLOW_HOME = "/opt/airflow"
POOL = "ihc_api"

# Airflow components started by `docker compose up` (profiles aside) and the services around them.
AIRFLOW_COMPONENTS = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
)
REQUIRED_SERVICES = ("postgres", "attribution-db", "redis", "statsd-exporter", *AIRFLOW_COMPONENTS)
# Development tools: only in the profile "dev", so that a production stack needs neither.
DEV_SERVICES = ("ihc-server", "demo-data")
HEALTHCHECKED_SERVICES = ("postgres", "attribution-db", "redis", "airflow-apiserver", "ihc-server")

# Names of settings that hold secrets: such values must come from a required variable.
SECRET_NAME = re.compile(r"PASSWORD(?!S_FILE)|SECRET|FERNET|API_KEY|TOKEN", re.IGNORECASE)
# Airflow config sections that belong to providers (not in the core config.yml).
PROVIDER_SECTIONS = {"celery"}


# --- compose variables ------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}|(?P<other>))"
)


class InterpolationError(ValueError):
    """A required variable is missing, or a ``$`` starts a form this file does not use."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as docker compose substitutes it: ``${VAR}``, ``${VAR:-default}`` (also when VAR
    is empty), ``${VAR:?message}`` (an error when VAR is unset or empty) and ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["name"] is None:
            raise InterpolationError(f"write $$, ${{VAR}}, ${{VAR:-default}} or ${{VAR:?message}} in {text!r}")
        value = env.get(match["name"], "")
        if match["op"] == "?" and not value:
            raise InterpolationError(f"required variable {match['name']} is missing: {match['arg']}")
        return value or (match["arg"] if match["op"] == "-" else "")

    return _VARIABLE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """A copy of a parsed YAML tree with every string value interpolated (keys are left alone,
    as compose does)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def variable_references(node: Any) -> Iterator[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable reference in the string values of a tree."""
    if isinstance(node, dict | list):
        for value in node.values() if isinstance(node, dict) else node:
            yield from variable_references(value)
    elif isinstance(node, str):
        for match in _VARIABLE.finditer(node):
            if match["name"]:
                yield match["name"], match["op"], match["arg"] or ""


# --- loading ------------------------------------------------------------------------------------------


def example_env() -> dict[str, str]:
    """KEY=VALUE lines of .env.example; comments and blank lines ignored, no quoting."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def filled_env() -> dict[str, str]:
    """``.env.example`` with its empty (secret) values filled by distinct dummies."""
    return {key: value or f"dummy-{key.strip('_').lower().replace('_', '-')}" for key, value in example_env().items()}


def secrets_only_env() -> dict[str, str]:
    """A .env that sets only the secrets, leaving everything else to the compose defaults."""
    return {key: value for key, value in filled_env().items() if SECRET_NAME.search(key)}


def without_secrets() -> dict[str, str]:
    return {key: value for key, value in example_env().items() if not SECRET_NAME.search(key)}


@functools.cache
def raw_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as stream:
        return yaml.safe_load(stream)


@functools.cache
def compose() -> dict[str, Any]:
    """The compose file as docker compose sees it with a .env made from .env.example."""
    return interpolate_tree(raw_compose(), filled_env())


def services() -> dict[str, Any]:
    return compose()["services"]


# The file writes environment and depends_on as mappings, volumes in the short syntax: another
# form fails these helpers loudly instead of slipping past the checks.
def environment(service: Mapping[str, Any]) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in (service.get("environment") or {}).items()}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in (service.get("depends_on") or {}).items()}


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source of a service's volumes."""
    return {target: source for source, target, *_ in (volume.split(":") for volume in service.get("volumes") or [])}


def command_args(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(arg) for arg in cmd]


def command_text(service: Mapping[str, Any]) -> str:
    cmd = service.get("command") or ""
    return cmd if isinstance(cmd, str) else "\n".join(str(arg) for arg in cmd)


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def named_mount_for(service: Mapping[str, Any], path: str) -> str | None:
    """The named volume that holds ``path`` in the service, if any."""
    path = PurePosixPath(path)
    for target, source in mounts(service).items():
        if is_named_volume(source) and (path == PurePosixPath(target) or PurePosixPath(target) in path.parents):
            return source
    return None


def ihc_server_port() -> int:
    args = command_args(services()["ihc-server"])
    return int(args[args.index("--port") + 1])


def connection(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = environment(raw_compose()["services"]["airflow-worker"])[f"AIRFLOW_CONN_{name.upper()}"]
    return json.loads(interpolate(raw, filled_env() if env is None else env))


def worker_env() -> dict[str, str]:
    return environment(services()["airflow-worker"])


def airflow_package_dir() -> Path | None:
    spec = importlib.util.find_spec("airflow")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --- compose: structure -------------------------------------------------------------------------------


def test_compose_file_parses_into_services_and_volumes():
    assert isinstance(raw_compose().get("services"), dict)
    assert isinstance(raw_compose().get("volumes"), dict)
    assert "x-airflow-common" in raw_compose(), "keep the official x-airflow-common anchor"


@pytest.mark.parametrize("name", REQUIRED_SERVICES)
def test_required_service_exists_and_starts_by_default(name):
    assert name in services()
    assert not services()[name].get("profiles"), f"{name} must start without a profile"


@pytest.mark.parametrize("name", DEV_SERVICES)
def test_dev_tools_start_only_in_the_dev_profile(name):
    assert services()[name].get("profiles") == ["dev"]


def test_dags_plugins_and_config_are_bind_mounted_as_in_the_official_file():
    for name in AIRFLOW_COMPONENTS:
        targets = set(mounts(services()[name]))
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/config"} <= targets, name
    assert (ROOT / "config").is_dir()


def test_depends_on_targets_exist_and_their_conditions_can_be_met():
    svc = services()
    for name, service in svc.items():
        for target, condition in depends_on(service).items():
            assert target in svc, f"{name} depends on unknown service {target}"
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}, name
            if condition == "service_healthy":
                assert svc[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"
            if condition == "service_completed_successfully":
                assert svc[target].get("restart", "no") == "no", f"{target} must run once to complete"
            if not service.get("profiles"):
                assert not svc[target].get("profiles"), f"{name} depends on {target}, hidden in a profile"


@pytest.mark.parametrize("name", HEALTHCHECKED_SERVICES)
def test_service_has_a_healthcheck(name):
    test = services()[name].get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, test


def test_components_wait_for_init_and_backends():
    svc = services()
    for name in AIRFLOW_COMPONENTS:
        deps = depends_on(svc[name])
        assert deps.get("postgres") == deps.get("redis") == deps.get("attribution-db") == "service_healthy", name
        if name != "airflow-init":
            assert deps.get("airflow-init") == "service_completed_successfully", name
    assert "ihc-server" not in depends_on(svc["airflow-worker"]), "a production stack runs without the dev double"


def test_airflow_services_share_the_common_image_and_environment():
    common = raw_compose()["x-airflow-common"]
    common_env = environment(common)
    for name, service in raw_compose()["services"].items():
        if not (name.startswith("airflow-") or name == "flower"):
            continue
        assert service.get("image") == common["image"], name
        env = environment(service)
        missing = {key for key, value in common_env.items() if env.get(key) != value}
        assert not missing, f"{name} lost common settings (merge the anchor): {sorted(missing)}"
        assert service.get("user") in {common["user"], "0:0"}, name


def test_pulled_images_are_pinned():
    for name, service in services().items():
        if service.get("build"):
            continue
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag not in {"latest", "edge"}, f"{name}: pin the image tag of {image}"


def test_ports_are_published_on_localhost_only():
    for name, service in services().items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_named_volumes_are_declared_and_used():
    declared = set(compose()["volumes"])
    used = set()
    for name, service in services().items():
        for source in mounts(service).values():
            if is_named_volume(source):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert {"attribution-data", "attribution-output", "postgres-db-volume", "attribution-db-volume"} <= declared
    assert declared <= used, f"declared but unused: {sorted(declared - used)}"


# --- compose: Airflow configuration -----------------------------------------------------------------


def test_executor_is_celery_with_redis_broker_and_postgres_backends():
    env = worker_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert metadata.scheme.startswith("postgresql") and metadata.hostname == "postgres"
    postgres_env = environment(services()["postgres"])
    assert (metadata.username, metadata.password, metadata.path) == (
        postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"], f"/{postgres_env['POSTGRES_DB']}"
    )
    result_backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert result_backend.scheme == "db+postgresql" and result_backend.hostname == "postgres"
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis" and broker.port == 6379


def test_execution_api_points_at_the_api_server():
    url = urlsplit(worker_env()["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver" and url.path == "/execution/"
    published = [str(port).rsplit(":", 1)[-1] for port in services()["airflow-apiserver"]["ports"]]
    assert str(url.port) in published
    assert worker_env()["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_auth_manager_is_simple_auth_manager_with_an_admin():
    env = worker_env()
    module = env["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")[0]
    assert module == "airflow.api_fastapi.auth.managers.simple.simple_auth_manager"
    airflow_dir = airflow_package_dir()
    if airflow_dir is not None:
        source = airflow_dir.parent / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{module} is not part of the installed Airflow"
    users = dict(user.split(":")[:2] for user in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    init_env = environment(services()["airflow-init"])
    assert users.get(init_env["_AIRFLOW_WWW_USER_USERNAME"]) == "admin"
    directory = str(PurePosixPath(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).parent)
    api_mounts, init_mounts = mounts(services()["airflow-apiserver"]), mounts(services()["airflow-init"])
    assert directory in api_mounts and api_mounts[directory] == init_mounts.get(directory), (
        "the API server must see the passwords file airflow-init writes"
    )


def test_statsd_metrics_go_to_the_exporter():
    env = worker_env()
    assert env["AIRFLOW__METRICS__STATSD_ON"].lower() == "true"
    assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    exporter = services()["statsd-exporter"]
    assert exporter["image"].startswith("prom/statsd-exporter:")
    listen = [arg for arg in command_args(exporter) if arg.startswith("--statsd.listen-udp=")]
    assert listen and listen[0].rsplit(":", 1)[1] == env["AIRFLOW__METRICS__STATSD_PORT"]


def test_airflow_settings_in_the_environment_exist():
    airflow_dir = airflow_package_dir()
    if airflow_dir is None:
        pytest.skip("apache-airflow is not installed")
    with (airflow_dir / "config_templates" / "config.yml").open() as stream:
        options = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    known = {(section, option) for section, spec in options.items() for option in spec["options"]}
    for name, service in raw_compose()["services"].items():
        for key in environment(service):
            if not key.startswith("AIRFLOW__"):
                continue
            section, _, option = key.removeprefix("AIRFLOW__").lower().partition("__")
            if section not in PROVIDER_SECTIONS:
                assert (section, option) in known, f"{name}: {key} is no Airflow setting"


# --- compose: the pipeline's connections, pool, outputs and the IHC server ------------------------


def test_attribution_db_connection_is_the_postgres_service():
    conn = connection("attribution_db")
    assert conn["conn_type"] == "postgres"
    assert conn["host"] == "attribution-db" and conn["port"] == 5432
    db_env = environment(services()["attribution-db"])
    assert (conn["login"], conn["password"], conn["schema"]) == (
        db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"], db_env["POSTGRES_DB"]
    )
    assert mounts(services()["attribution-db"]).get("/var/lib/postgresql/data") == "attribution-db-volume"
    demo = services()["demo-data"]
    script = command_text(demo)
    assert "ihc_attribution_dev.pg_load" in script and "--host attribution-db" in script
    assert depends_on(demo).get("attribution-db") == "service_healthy"


@pytest.mark.parametrize("env_name", ["env_example", "defaults"])
def test_ihc_api_connection_reaches_the_local_ihc_server(env_name):
    conn = connection("ihc_api", filled_env() if env_name == "env_example" else secrets_only_env())
    assert conn["conn_type"] == "ihc"
    assert conn["host"] == "ihc-server" and conn["port"] == ihc_server_port() and conn["schema"] == "http"
    assert conn["password"] in environment(services()["ihc-server"])["IHC_API_KEYS"].split(",")
    extra = conn["extra"]
    assert extra["conv_type_id"]
    for limit in ("max_journeys_per_request", "max_sessions_per_request"):
        assert isinstance(extra[limit], int) and extra[limit] > 0, limit


def test_ihc_api_extras_are_known_to_the_hook():
    from ihc_attribution.ihc.settings import KNOWN_EXTRAS

    unknown = set(connection("ihc_api")["extra"]) - set(KNOWN_EXTRAS)
    assert not unknown, f"the hook rejects unknown extras: {sorted(unknown)}"


def test_ihc_api_connection_can_point_at_another_service():
    env = {
        **filled_env(),
        "IHC_API_SCHEMA": "https",
        "IHC_API_HOST": "ihc.example.com",
        "IHC_API_PORT": "443",
        "IHC_MAX_SESSIONS_PER_REQUEST": "200",
    }
    conn = connection("ihc_api", env)
    assert (conn["schema"], conn["host"], conn["port"]) == ("https", "ihc.example.com", 443)
    assert conn["extra"]["max_sessions_per_request"] == 200


def test_connections_need_the_api_key():
    with pytest.raises(InterpolationError, match="IHC_API_KEY"):
        connection("ihc_api", {**filled_env(), "IHC_API_KEY": ""})


def test_output_dir_is_on_the_output_volume():
    for name in ("airflow-worker", "airflow-init"):
        out = environment(services()[name])["ATTRIBUTION_OUTPUT_DIR"]
        assert named_mount_for(services()[name], out) == "attribution-output", name


def test_ihc_server_runs_the_local_double_from_the_same_image():
    server = services()["ihc-server"]
    assert server["image"] == services()["airflow-worker"]["image"]
    assert server["build"]["args"]["INSTALL_DEV"] == "true", "the server is a dev tool: only the dev image holds it"
    args = command_args(server)
    port = str(ihc_server_port())
    assert args[:7] == ["python", "-m", "ihc_attribution_dev.server", "--host", "0.0.0.0", "--port", port]
    options = dict(zip(args[7::2], args[8::2], strict=True))
    assert options.get("--conv-type-id") == connection("ihc_api")["extra"]["conv_type_id"]
    assert options.get("--profile") in {"standard", "free"}
    probe = urlsplit(next(arg for arg in server["healthcheck"]["test"] if "://" in arg))
    assert (probe.hostname, probe.port, probe.path) == ("localhost", int(port), "/health")
    env = environment(server)
    assert env["IHC_API_KEYS"]
    leaked = {key for key in env if key.startswith("AIRFLOW") or (SECRET_NAME.search(key) and key != "IHC_API_KEYS")}
    assert not leaked, f"the IHC server needs no Airflow settings or secrets: {sorted(leaked)}"


def test_init_migrates_creates_the_pool_and_users():
    init = services()["airflow-init"]
    script = command_text(init)
    assert "airflow db migrate" in script
    created = set(re.findall(r"airflow pools set (\S+) \S+", script))
    assert POOL in created, f"pool {POOL} is not created"
    pattern = re.compile(r"""\b(?:pool|[A-Z_]*POOL)\s*=\s*["']([^"']+)["']""")
    used = {name for folder in ("dags", "include") for path in (ROOT / folder).rglob("*.py")
            for name in pattern.findall(path.read_text(encoding="utf-8"))}
    assert used <= created, "every pool the DAG uses must be created"
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script and "_AIRFLOW_WWW_USER_PASSWORD" in script
    assert "demo_data" not in script, "demo data belong to the dev profile"
    assert init.get("user") == "0:0" and init.get("restart", "no") == "no"


# --- variables and secrets -----------------------------------------------------------------------------


def test_every_variable_is_documented_in_env_example_and_vice_versa():
    used = {name for name, _, _ in variable_references(raw_compose())}
    documented = set(example_env())
    assert used - documented == set(), "document these in .env.example"
    assert documented - used == set(), ".env.example documents variables the compose file ignores"


def test_env_example_values_are_the_compose_defaults():
    defaults: dict[str, set[str]] = {}
    for name, op, arg in variable_references(raw_compose()):
        if op == "-":
            defaults.setdefault(name, set()).add(arg)
    example = example_env()
    for name, values in defaults.items():
        assert values == {example[name]}, f".env.example and the compose defaults of {name} differ: {sorted(values)}"


def test_env_example_commits_no_secret_value():
    for key, value in example_env().items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example must leave {key} empty"


def test_secret_variables_are_required_without_default():
    for name, op, _ in variable_references(raw_compose()):
        if SECRET_NAME.search(name):
            assert op == "?", f"${{{name}}} must be written ${{{name}:?message}}"


def test_compose_refuses_to_start_without_secrets():
    with pytest.raises(InterpolationError, match="required variable"):
        interpolate_tree(raw_compose(), without_secrets())


def test_secret_settings_come_from_secret_variables():
    secrets = {value for key, value in filled_env().items() if SECRET_NAME.search(key)}
    for name, service in services().items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert value in secrets, f"{name}: {key} must come from a secret variable"
            passwords = [urlsplit(url).password for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", value)]
            if key.startswith("AIRFLOW_CONN_"):
                passwords.append(json.loads(value).get("password"))
            assert all(not password or password in secrets for password in passwords), f"{name}: {key} has a literal password"


_LITERAL_SECRET = re.compile(
    r"""(?ix)(password|passwd|secret|api[_-]?keys?|token|fernet[_-]?key)["']?\s*[:=]\s*["']?(?P<value>[^\s"'$?]\S*)"""
)


def literal_secrets(text: str) -> list[str]:
    """Lines of ``text`` that assign a literal value to a secret-looking name."""
    return [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#") and _LITERAL_SECRET.search(line)]


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("POSTGRES_PASSWORD: airflow", True),
        ('"password": "hunter2",', True),
        ("IHC_API_KEYS=k1,k2", True),
        ('POSTGRES_PASSWORD: "${POSTGRES_PASSWORD:?set it}"', False),
        ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE: /opt/airflow/auth/x.json", False),
    ],
)
def test_literal_secret_scanner(line, flagged):
    assert bool(literal_secrets(line)) is flagged


@pytest.mark.parametrize("path", [COMPOSE_FILE, DOCKERFILE], ids=lambda path: path.name)
def test_no_literal_secrets(path):
    assert literal_secrets(path.read_text()) == []


# --- docker compose itself -----------------------------------------------------------------------------


@functools.cache
def compose_cli() -> tuple[str, ...] | None:
    """The command of a compose v2 CLI, if one is installed (it validates without a daemon)."""
    for candidate in (("docker", "compose"), ("docker-compose",)):
        if shutil.which(candidate[0]) is None:
            continue
        try:
            version = subprocess.run([*candidate, "version", "--short"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and not version.stdout.strip().lstrip("v").startswith("1"):
            return candidate
    return None


def run_compose_config(env: Mapping[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no docker compose v2 CLI installed")
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    # Only the env file may supply variables: the caller's shell must not hide a missing one.
    process_env = {key: value for key, value in os.environ.items() if key in {"PATH", "HOME", "DOCKER_CONFIG"}}
    return subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "-q"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=process_env,
    )


def test_docker_compose_config_accepts_the_file(tmp_path):
    result = run_compose_config(filled_env(), tmp_path)
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_missing_secrets(tmp_path):
    result = run_compose_config(without_secrets(), tmp_path)
    assert result.returncode != 0 and "in .env" in result.stderr, result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------------


@functools.cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def dockerfile_copies() -> dict[str, str]:
    """Source -> destination of the COPY instructions, trailing slashes dropped."""
    copies = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            parts = [part for part in shlex.split(args) if not part.startswith("--")]
            copies.update({source.rstrip("/"): parts[-1].rstrip("/") for source in parts[:-1]})
    return copies


def test_dockerfile_extends_the_pinned_official_image():
    keyword, args = dockerfile_instructions()[0]
    assert (keyword, args.split()[0]) == ("FROM", AIRFLOW_IMAGE)
    pins = re.findall(r"^apache-airflow==(\S+)$", REQUIREMENTS.read_text(), re.MULTILINE)
    assert pins == [AIRFLOW_IMAGE.rpartition(":")[2]], "the image and requirements.txt must pin the same Airflow"


def test_dockerfile_installs_the_pinned_requirements_and_the_package_as_the_airflow_user():
    user, installs = "airflow", []
    for keyword, args in dockerfile_instructions():
        if keyword == "USER":
            user = args.split(":")[0]
        elif keyword == "RUN" and "pip install" in args:
            installs.append((user, args))
    copied = dockerfile_copies()
    project = copied.get("pyproject.toml", "")
    assert project and copied.get("requirements.txt") == project, "requirements and project together"
    assert copied.get("include") == f"{project}/include", "the package's code is built into the image"
    assert (ROOT / DEV_DISTRIBUTION / "pyproject.toml").is_file()
    assert installs, "nothing is installed with pip"
    for run_user, args in installs:
        assert run_user == "airflow", "the official image wants pip run as the airflow user"
        assert "--no-cache-dir" in args and f"-r {project}/requirements.txt" in args, args
        assert f'pip install --no-cache-dir "apache-airflow==${{AIRFLOW_VERSION}}" {project}' in args, (
            "the package itself, with pip kept from changing the Airflow version"
        )
        branches = re.search(r'if \[ "\$\{INSTALL_DEV\}" = "true" \]; then\s+(.*);\s+else\s+(.*);\s+fi$', args)
        assert branches, "the development tools only on request (INSTALL_DEV=true)"
        dev, production = branches.groups()
        assert f"{project}/{DEV_DISTRIBUTION}" in dev.split()
        assert production.split()[-1] == project and "ihc_attribution_dev" not in production
    assert user == "airflow", "the image must not end as root"


def test_dockerfile_copies_the_dags_and_plugins_and_needs_no_pythonpath():
    copies = dockerfile_copies()
    for folder in ("dags", "plugins"):
        assert copies.get(folder) == f"{AIRFLOW_HOME}/{folder}", f"{folder}/ is not copied to {AIRFLOW_HOME}"
        assert (ROOT / folder).is_dir(), f"{folder}/ is missing from the build context (track a file in it)"
    env_args = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "ENV")
    assert "PYTHONPATH" not in env_args, "the package is installed: nothing needs the source tree on the path"


# --- .dockerignore ------------------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stop at ``/``, ``**`` does not."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
    return re.compile(regex)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context: a rule matches the path or
    one of its parent directories, and the last matching rule wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if rule and not rule.startswith("#"):
            regex = _dockerignore_regex(rule.removeprefix("!").strip("/"))
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not rule.startswith("!")
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".venv/bin/python",
        ".git/HEAD",
        "output/report.csv",
        "data/challenge.db",
        "tests/test_x.py",
        "include/ihc_attribution/__pycache__/db.cpython-311.pyc",
        "include/challenge.db",
        "include/.env",
    ],
)
def test_dockerignore_keeps_out(path):
    assert dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        "requirements.txt",
        "pyproject.toml",
        "README.md",
        "dags/ihc_attribution_dag.py",
        "include/ihc_attribution/sql/challenge_schema.sql",
        "include/ihc_attribution_dev/pyproject.toml",
        "include/ihc_attribution_dev/server/app.py",
        "plugins/README.md",
    ],
)
def test_dockerignore_lets_in(path):
    assert not dockerignore_excludes(path)


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    for source in dockerfile_copies():
        assert not dockerignore_excludes(source), f"COPY {source}: .dockerignore keeps it out of the build context"
        assert (ROOT / source).exists(), source
