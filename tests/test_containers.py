"""Static checks of the container setup: Dockerfile, docker-compose.yaml, .env.example, .dockerignore.

No Docker engine runs on development or CI machines, so nothing is built or started here. The
compose file is parsed with PyYAML and its ``${...}`` variables are substituted the way
``docker compose`` does, with the values of ``.env.example`` plus dummy secrets. When a compose
CLI (v2) is installed, ``docker compose config`` validates the file too; otherwise that test is
skipped.
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


# --- compose variable substitution ---------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class InterpolationError(ValueError):
    """A required variable is missing, or a ``$`` starts no valid reference."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?e}``, ``${VAR?e}``,
    ``${VAR:+a}``, ``${VAR+a}`` and ``$$`` as docker compose does (unset plain variables become
    empty strings)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        name = match["braced"]
        if name is None:
            raise InterpolationError(f"invalid interpolation format in {text!r}")
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        is_set = value is not None and (value != "" or not (op or "").startswith(":"))
        if op is None:
            return value or ""
        if op.endswith("-"):
            return value if is_set else arg
        if op.endswith("?"):
            if not is_set:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return value
        return arg if is_set else ""  # "+" and ":+"

    return _VARIABLE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """A copy of a parsed YAML tree with every string value interpolated (keys are left alone,
    as compose does)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def variable_references(node: Any) -> Iterator[tuple[str, str | None, str]]:
    """Yield (name, operator, argument) of every variable reference in the string values of a tree."""
    if isinstance(node, dict):
        for value in node.values():
            yield from variable_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from variable_references(value)
    elif isinstance(node, str):
        for match in _VARIABLE.finditer(node):
            if match["braced"]:
                yield match["braced"], match["op"], match["arg"] or ""
            elif match["bare"]:
                yield match["bare"], None, ""


# --- loading --------------------------------------------------------------------------------------


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file; comments and blank lines ignored, no quoting."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


@functools.cache
def raw_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as stream:
        return yaml.safe_load(stream)


def example_env() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


def secrets_only_env() -> dict[str, str]:
    """A .env that sets only the secrets, leaving everything else to the compose defaults."""
    return {key: value for key, value in filled_env().items() if SECRET_NAME.search(key)}


def filled_env() -> dict[str, str]:
    """``.env.example`` with its empty (secret) values filled by distinct dummies."""
    return {
        key: value or f"dummy-{key.strip('_').lower().replace('_', '-')}"
        for key, value in example_env().items()
    }


@functools.cache
def compose() -> dict[str, Any]:
    """The compose file as docker compose sees it with a .env made from .env.example."""
    return interpolate_tree(raw_compose(), filled_env())


def services() -> dict[str, Any]:
    return compose()["services"]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_args(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(arg) for arg in cmd]


def command_text(service: Mapping[str, Any]) -> str:
    cmd = service.get("command") or ""
    return cmd if isinstance(cmd, str) else "\n".join(str(arg) for arg in cmd)


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source of a service's volumes (short or long syntax)."""
    result = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume["target"]
        result[target] = source
    return result


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def named_mount_for(service: Mapping[str, Any], path: str) -> str | None:
    """The named volume that holds ``path`` in the service, if any."""
    target_path = PurePosixPath(path)
    for target, source in mounts(service).items():
        if is_named_volume(source) and (
            target_path == PurePosixPath(target) or PurePosixPath(target) in target_path.parents
        ):
            return source
    return None


def ihc_server_port() -> int:
    args = command_args(services()["ihc-server"])
    return int(args[args.index("--port") + 1])


def connection(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    worker = raw_compose()["services"]["airflow-worker"]
    raw = environment(worker)[f"AIRFLOW_CONN_{name.upper()}"]
    return json.loads(interpolate(raw, filled_env() if env is None else env))


# --- compose: structure ---------------------------------------------------------------------------


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
            assert condition in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }, f"{name}: unknown condition {condition}"
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
        assert deps.get("postgres") == "service_healthy", name
        assert deps.get("redis") == "service_healthy", name
        assert deps.get("attribution-db") == "service_healthy", name
        if name != "airflow-init":
            assert deps.get("airflow-init") == "service_completed_successfully", name
    assert "ihc-server" not in depends_on(svc["airflow-worker"]), "a production stack runs without the dev double"


def test_airflow_services_share_the_common_image_and_environment():
    common = raw_compose()["x-airflow-common"]
    common_env = environment(common)
    raw_services = raw_compose()["services"]
    for name, service in raw_services.items():
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


# --- compose: Airflow configuration ---------------------------------------------------------------


def worker_env() -> dict[str, str]:
    return environment(services()["airflow-worker"])


def test_executor_is_celery_with_redis_broker_and_postgres_backends():
    env = worker_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert metadata.scheme.startswith("postgresql") and metadata.hostname == "postgres"
    postgres_env = environment(services()["postgres"])
    assert metadata.username == postgres_env["POSTGRES_USER"]
    assert metadata.password == postgres_env["POSTGRES_PASSWORD"]
    assert metadata.path == f"/{postgres_env['POSTGRES_DB']}"

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
    passwords_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    api_mounts = mounts(services()["airflow-apiserver"])
    init_mounts = mounts(services()["airflow-init"])
    directory = str(PurePosixPath(passwords_file).parent)
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


def airflow_package_dir() -> Path | None:
    spec = importlib.util.find_spec("airflow")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


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
            if section in PROVIDER_SECTIONS:
                continue
            assert (section, option) in known, f"{name}: {key} is no Airflow setting"


# --- compose: the pipeline's connections, pool, volumes and the IHC server ---------------------


def test_attribution_db_connection_is_the_postgres_service():
    conn = connection("attribution_db", filled_env())
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
    assert conn["host"] in services() and conn["host"] == "ihc-server"
    assert conn["port"] == ihc_server_port()
    assert conn["schema"] == "http"
    accepted = environment(services()["ihc-server"])["IHC_API_KEYS"].split(",")
    assert conn["password"] in accepted
    extra = conn["extra"]
    assert extra["conv_type_id"]
    assert isinstance(extra["max_journeys_per_request"], int) and extra["max_journeys_per_request"] > 0
    assert isinstance(extra["max_sessions_per_request"], int) and extra["max_sessions_per_request"] > 0


def test_ihc_api_extras_are_known_to_the_hook():
    from ihc_attribution.ihc_client import KNOWN_EXTRAS

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
    env = {**filled_env(), "IHC_API_KEY": ""}
    with pytest.raises(InterpolationError, match="IHC_API_KEY"):
        connection("ihc_api", env)


def test_output_dir_is_on_the_output_volume():
    for name in ("airflow-worker", "airflow-init"):
        out = environment(services()[name])["ATTRIBUTION_OUTPUT_DIR"]
        assert named_mount_for(services()[name], out) == "attribution-output", name


def test_ihc_server_runs_the_local_double_from_the_same_image():
    server = services()["ihc-server"]
    assert server["image"] == services()["airflow-worker"]["image"]
    args = command_args(server)
    assert args[:7] == [
        "python",
        "-m",
        "ihc_attribution_dev.server",
        "--host",
        "0.0.0.0",
        "--port",
        str(ihc_server_port()),
    ]
    options = dict(zip(args[7::2], args[8::2], strict=True))
    assert options.get("--conv-type-id") == connection("ihc_api")["extra"]["conv_type_id"]
    assert options.get("--profile") in {"standard", "free"}
    probe = urlsplit(next(arg for arg in server["healthcheck"]["test"] if "://" in arg))
    assert (probe.hostname, probe.port, probe.path) == ("localhost", ihc_server_port(), "/health")
    env = environment(server)
    assert env["IHC_API_KEYS"]
    leaked = {
        key for key in env if key.startswith("AIRFLOW") or (SECRET_NAME.search(key) and key != "IHC_API_KEYS")
    }
    assert not leaked, f"the IHC server needs no Airflow settings or secrets: {sorted(leaked)}"


def pools_used_by_dags() -> set[str]:
    pattern = re.compile(r"""\b(?:pool|[A-Z_]*POOL)\s*=\s*["']([^"']+)["']""")
    found = set()
    for folder in ("dags", "include"):
        for path in (ROOT / folder).rglob("*.py"):
            found.update(pattern.findall(path.read_text(encoding="utf-8")))
    return found


def test_init_migrates_creates_the_pool_and_users():
    init = services()["airflow-init"]
    script = command_text(init)
    assert "airflow db migrate" in script
    created = set(re.findall(r"airflow pools set (\S+) \S+", script))
    assert POOL in created, f"pool {POOL} is not created"
    assert pools_used_by_dags() <= created, "every pool the DAG uses must be created"
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script and "_AIRFLOW_WWW_USER_PASSWORD" in script
    assert "demo_data" not in script, "demo data belong to the dev profile"
    assert init.get("user") == "0:0" and init.get("restart", "no") == "no"


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


# --- variables and secrets ---------------------------------------------------------------------------


def test_every_variable_is_documented_in_env_example_and_vice_versa():
    used = {name for name, _, _ in variable_references(raw_compose())}
    documented = set(example_env())
    assert used - documented == set(), "document these in .env.example"
    assert documented - used == set(), ".env.example documents variables the compose file ignores"


def test_env_example_values_are_the_compose_defaults():
    defaults: dict[str, set[str]] = {}
    for name, op, arg in variable_references(raw_compose()):
        if op in {":-", "-"}:
            defaults.setdefault(name, set()).add(arg)
    example = example_env()
    for name, values in defaults.items():
        assert len(values) == 1, f"{name} has different defaults: {sorted(values)}"
        assert example[name] == next(iter(values)), f".env.example and the compose default of {name} differ"


def test_env_example_commits_no_secret_value():
    for key, value in example_env().items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example must leave {key} empty"


def test_secret_variables_are_required_without_default():
    for name, op, _ in variable_references(raw_compose()):
        if SECRET_NAME.search(name):
            assert op == ":?", f"${{{name}}} must be written ${{{name}:?message}}"


def test_compose_refuses_to_start_without_secrets():
    env = {key: value for key, value in example_env().items() if not SECRET_NAME.search(key)}
    with pytest.raises(InterpolationError):
        interpolate_tree(raw_compose(), env)


def secret_dummies() -> set[str]:
    """The dummy values that stand in for the secret variables of .env.example."""
    return {value for key, value in filled_env().items() if SECRET_NAME.search(key)}


def test_secret_settings_come_from_secret_variables():
    secrets = secret_dummies()
    for name, service in services().items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert value in secrets, f"{name}: {key} must come from a secret variable"
            for url in re.findall(r"[a-z][a-z0-9+.-]*://\S+", value):
                password = urlsplit(url).password
                assert not password or password in secrets, f"{name}: {key} has a literal password"
            if key.startswith("AIRFLOW_CONN_"):
                password = json.loads(value).get("password")
                assert not password or password in secrets, f"{name}: {key} has a literal password"


_LITERAL_SECRET = re.compile(
    r"""(?ix)(password|passwd|secret|api[_-]?keys?|token|fernet[_-]?key)["']?\s*[:=]\s*["']?(?P<value>[^\s"'$?]\S*)"""
)


def literal_secrets(text: str) -> list[str]:
    """Lines of ``text`` that assign a literal value to a secret-looking name."""
    return [
        line.strip()
        for line in text.splitlines()
        if not line.lstrip().startswith("#") and _LITERAL_SECRET.search(line)
    ]


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("POSTGRES_PASSWORD: airflow", True),
        ('"password": "hunter2",', True),
        ("IHC_API_KEYS=k1,k2", True),
        ("AIRFLOW__API_AUTH__JWT_SECRET: 'airflow_jwt_secret'", True),
        ('POSTGRES_PASSWORD: "${POSTGRES_PASSWORD:?set it}"', False),
        ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE: /opt/airflow/auth/x.json", False),
        ("# password: example in a comment", False),
    ],
)
def test_literal_secret_scanner(line, flagged):
    assert bool(literal_secrets(line)) is flagged


@pytest.mark.parametrize("path", [COMPOSE_FILE, DOCKERFILE], ids=lambda path: path.name)
def test_no_literal_secrets(path):
    assert literal_secrets(path.read_text()) == []


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:-d}", {}, "d"),
        ("$$HOME and $${X}", {}, "$HOME and ${X}"),
        ("${A:+yes}", {"A": "1"}, "yes"),
        ("x$A", {"A": "1"}, "x1"),
    ],
)
def test_interpolate(text, env, expected):
    assert interpolate(text, env) == expected


@pytest.mark.parametrize("text", ["${A:?needed}", "${A?needed}", "cost $ 5"])
def test_interpolate_rejects(text):
    with pytest.raises(InterpolationError):
        interpolate(text, {})


# --- docker compose itself -----------------------------------------------------------------------------


@functools.cache
def compose_cli() -> tuple[str, ...] | None:
    """The command of a compose v2 CLI, if one is installed (it validates without a daemon)."""
    for candidate in (("docker", "compose"), ("docker-compose",)):
        if shutil.which(candidate[0]) is None:
            continue
        try:
            version = subprocess.run(
                [*candidate, "version", "--short"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith(("2", "3", "4", "5")):
            return candidate
    return None


def run_compose_config(env: Mapping[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no docker compose v2 CLI installed")
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    # Only the env file may supply variables: the caller's shell must not hide a missing one.
    process_env = {
        key: value for key, value in os.environ.items() if key in {"PATH", "HOME", "DOCKER_CONFIG"}
    }
    return subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=process_env,
    )


def test_docker_compose_config_accepts_the_file(tmp_path):
    result = run_compose_config(filled_env(), tmp_path)
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_missing_secrets(tmp_path):
    env = {key: value for key, value in example_env().items() if not SECRET_NAME.search(key)}
    result = run_compose_config(env, tmp_path)
    assert result.returncode != 0 and "in .env" in result.stderr, result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def env_instruction_values(args: str) -> dict[str, str]:
    parts = shlex.split(args)
    if len(parts) >= 2 and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(part.split("=", 1) for part in parts)


def test_dockerfile_extends_the_pinned_official_image():
    keyword, args = dockerfile_instructions()[0]
    assert (keyword, args.split()[0]) == ("FROM", AIRFLOW_IMAGE)
    pins = re.findall(r"^apache-airflow==(\S+)$", REQUIREMENTS.read_text(), re.MULTILINE)
    assert pins == [AIRFLOW_IMAGE.rpartition(":")[2]], (
        "the image and requirements.txt must pin the same Airflow"
    )


def test_dockerfile_installs_the_pinned_requirements_and_the_package_as_the_airflow_user():
    user, copied, installs = "airflow", {}, []
    for keyword, args in dockerfile_instructions():
        if keyword == "USER":
            user = args.split(":")[0]
        elif keyword == "COPY":
            parts = [part for part in shlex.split(args) if not part.startswith("--")]
            for source in parts[:-1]:
                copied[source.rstrip("/")] = parts[-1]
        elif keyword == "RUN" and "pip install" in args:
            installs.append((user, args))
    project = copied.get("pyproject.toml", "").rstrip("/")
    assert project and copied.get("requirements.txt", "").rstrip("/") == project, "requirements and project together"
    assert copied.get("include", "").rstrip("/") == f"{project}/include", "the package's code is built into the image"
    assert installs, "nothing is installed with pip"
    for run_user, args in installs:
        assert run_user == "airflow", "the official image wants pip run as the airflow user"
        assert "--no-cache-dir" in args and f"-r {project}/requirements.txt" in args, args
        assert '"apache-airflow==${AIRFLOW_VERSION}"' in args, "keep pip from changing the Airflow version"
        assert f"pip install --no-cache-dir \"apache-airflow==${{AIRFLOW_VERSION}}\" {project}" in args, "the package itself"
        assert f'"{project}[dev]"' in args and "INSTALL_DEV" in args, "the dev extra only on request"
    assert user == "airflow", "the image must not end as root"


def test_dockerfile_copies_the_dags_and_plugins_and_needs_no_pythonpath():
    copies, env = {}, {}
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            parts = [part for part in shlex.split(args) if not part.startswith("--")]
            for source in parts[:-1]:
                copies[source.rstrip("/")] = parts[-1].rstrip("/")
        elif keyword == "ENV":
            env.update(env_instruction_values(args))
    for folder in ("dags", "plugins"):
        assert copies.get(folder) == f"{AIRFLOW_HOME}/{folder}", f"{folder}/ is not copied to {AIRFLOW_HOME}"
        assert (ROOT / folder).is_dir(), f"{folder}/ is missing from the build context (track a file in it)"
    assert "PYTHONPATH" not in env, "the package is installed: nothing needs the source tree on the path"


# --- .dockerignore ------------------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stop at ``/``, ``**`` does not."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context: a rule matches the path or
    one of its parent directories, and the last matching rule wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        regex = _dockerignore_regex(rule.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
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
        "dags/ihc_attribution_dag.py",
        "include/ihc_attribution/sql/challenge_schema.sql",
        "include/ihc_attribution_dev/server/app.py",
        "plugins/README.md",
    ],
)
def test_dockerignore_lets_in(path):
    assert not dockerignore_excludes(path)
