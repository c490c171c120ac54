"""A local Airflow for the ``ihc_attribution`` DAG, without Docker: ``make up`` / ``make status`` / ``make down``.

``up`` starts the local IHC server and ``airflow dag-processor``, ``scheduler``, ``api-server`` (``triggerer``,
Celery workers) as separate processes, since ``airflow standalone`` does not stop cleanly: each in a process
group of its own, output in ``.run/airflow/<name>.log``, PID and start time in ``.run/airflow/state.json``.
``up`` again starts what is not running; ``down`` stops exactly the process groups ``up`` recorded;
``airflow ARGS`` runs the Airflow CLI with the stack's settings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_env import DEMO_DB, ROOT, airflow_env, ensure_demo_db, ihc_conn, ihc_server_argv, sqlite_conn  # noqa: E402
from process_groups import UpError, port_open, process_identity, stop_groups, tail, wait_until, write_private  # noqa: E402

RUN_DIR = ROOT / ".run" / "airflow"
STATE_FILE = RUN_DIR / "state.json"
SECRETS_FILE = RUN_DIR / "secrets.json"
PASSWORDS_FILE = RUN_DIR / "simple_auth_manager_passwords.json"
DAG_ID, POOL, ADMIN_USER = "ihc_attribution", "ihc_api", "admin"
POOL_SLOTS = int(os.environ.get("ATTRIBUTION_IHC_CONCURRENCY", "4"))
AIRFLOW_BIN = str(Path(sys.executable).parent / "airflow")
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow_local"
MAX_WORKERS = 8
# Stopped in this order; the IHC server last, so tasks still finishing can reach it.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer",
              *(f"celery-worker-{i}" for i in range(1, MAX_WORKERS + 1)), "ihc-server")


def log_file(name: str) -> Path:
    return RUN_DIR / f"{name}.log"


def load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state(state: dict) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.with_suffix(".tmp").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(STATE_FILE.with_suffix(".tmp"), STATE_FILE)


def load_secrets() -> dict[str, str]:
    try:
        return json.loads(SECRETS_FILE.read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise UpError(f"{SECRETS_FILE} is missing or unreadable; run `make down` and `make up` again") from exc


def http_json(method: str, url: str, body: dict | None = None, token: str = "", timeout: float = 10.0,
              expect: tuple[int, ...] = ()) -> tuple[int, dict]:
    """(status, JSON body); ``UpError`` for a status not in ``expect``, or a bulk request answering 200 with errors."""
    import requests  # its errors are OSErrors

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.request(method, url, json=body, headers=headers, timeout=timeout)
    answer = {"raw": response.text[:500]}
    with contextlib.suppress(ValueError):
        answer = response.json() if response.content else {}
    if expect and (response.status_code not in expect or (answer.get("create") or {}).get("errors")):
        raise UpError(f"{method} {url}: HTTP {response.status_code} {answer}")
    return response.status_code, answer


def running(state: dict) -> dict[str, int]:
    """The recorded PIDs whose very process still runs (same start time and program): a reused PID is never ours."""
    alive, recorded = {}, state.get("components", {})
    for name in (name for name in COMPONENTS if name in recorded):
        pid, identity = recorded[name]["pid"], process_identity(recorded[name]["pid"])
        # A Celery worker renames its process ("[celeryd: worker1@host:MainProcess] ... celery worker").
        marker = "celery worker" if name.startswith("celery-worker-") else "airflow"
        marker = "ihc_attribution_dev.server" if name == "ihc-server" else marker
        if identity and recorded[name]["started"] in (None, identity[0]) and marker in identity[1]:
            alive[name] = pid
    return alive


def start_process(name: str, argv: list[str], env: dict[str, str], state: dict) -> int:
    """Start ``argv`` in a process group of its own, output to its log; record its PID and start time."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(log_file(name), "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n")
        log.flush()
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    identity = process_identity(proc.pid)
    state.setdefault("components", {})[name] = {"pid": proc.pid, "started": identity and identity[0]}
    save_state(state)
    return proc.pid


def choose_metadata_db(choice: str) -> str:
    if choice not in ("auto", "postgres", "sqlite"):
        return choice  # an explicit URL
    sqlite_url = f"sqlite:///{Path(airflow_env()['AIRFLOW_HOME']).resolve() / 'airflow-local.db'}"
    if choice == "sqlite":
        return sqlite_url
    # Airflow 3 opens the metadata database asynchronously too, hence asyncpg.
    if all(importlib.util.find_spec(module) for module in ("psycopg2", "asyncpg")) and port_open("127.0.0.1", 5432):
        return POSTGRES_URL
    problem = "it needs psycopg2, asyncpg and a server on 127.0.0.1:5432"
    if choice == "postgres":
        raise UpError(f"cannot use PostgreSQL for the metadata database: {problem}")
    print(f"metadata database: SQLite, since PostgreSQL is not usable ({problem})", flush=True)
    return sqlite_url


def stack_env(state: dict, keys: dict[str, str]) -> dict[str, str]:
    """Environment of every process of the stack (and of ``airflow`` commands run against it)."""
    env = airflow_env()
    port, celery = state["api_port"], state.get("executor") == "celery"
    if celery:
        env["AIRFLOW__CELERY__BROKER_URL"] = state["broker_url"]
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + state["metadata_db"]  # Celery's database backend
        env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = "2"  # task slots of each worker
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    env.pop("IHC_API_KEYS", None)  # only the IHC server gets the key that way
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if celery else "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": state["metadata_db"],
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(PASSWORDS_FILE),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW_CONN_ATTRIBUTION_DB": state["attribution_db_conn"],
    })
    if state.get("ihc_managed"):
        env["AIRFLOW_CONN_IHC_API"] = ihc_conn(state["ihc_port"], keys["ihc_api_key"])
    return env


def dag_parsed(base: str, token: str) -> bool:
    """Whether the API server knows the DAG; raises with the trace if its file does not import."""
    if http_json("GET", f"{base}/api/v2/dags/{DAG_ID}", token=token)[0] == 200:
        return True
    for error in http_json("GET", f"{base}/api/v2/importErrors?limit=100", token=token)[1].get("import_errors", []):
        if DAG_ID in str(error.get("filename", "")):
            raise UpError(f"the DAG file does not import:\n{str(error.get('stack_trace', ''))[-3000:]}")
    return False


def login(state: dict, keys: dict[str, str]) -> tuple[str, str]:
    """The API's base URL and an admin token."""
    base = f"http://localhost:{state['api_port']}"
    credentials = {"username": ADMIN_USER, "password": keys["admin_password"]}
    return base, http_json("POST", f"{base}/auth/token", credentials, expect=(200, 201))[1]["access_token"]


def wait_ready(state: dict, keys: dict[str, str], watch: dict[str, int], timeout: float) -> None:
    """Wait until the stack serves the DAG: API up, pool set, DAG parsed and unpaused, scheduler beating.
    The pool's slots are the budget of IHC requests in flight across all runs."""
    health = f"http://localhost:{state['api_port']}/api/v2/monitor/health"
    wait_until("the API server", lambda: http_json("GET", health, timeout=3)[0] == 200, timeout, watch, RUN_DIR)
    if state.get("ihc_managed"):
        ihc = f"http://127.0.0.1:{state['ihc_port']}/health"
        wait_until("the local IHC server", lambda: http_json("GET", ihc, timeout=3)[0] == 200, timeout, watch, RUN_DIR)
    base, token = login(state, keys)
    pool = {"name": POOL, "slots": POOL_SLOTS, "include_deferred": False,
            "description": "IHC API requests in flight across runs (each call_ihc_api takes ihc_concurrency slots)"}
    http_json("PATCH", f"{base}/api/v2/pools", {"actions": [
        {"action": "create", "entities": [pool], "action_on_existence": "overwrite"}]}, token, expect=(200,))
    wait_until(f"the DAG {DAG_ID} to be parsed", lambda: dag_parsed(base, token), timeout, watch, RUN_DIR)
    http_json("PATCH", f"{base}/api/v2/dags/{DAG_ID}", {"is_paused": False}, token, expect=(200,))
    wait_until("the scheduler's heartbeat", lambda: (http_json("GET", health, timeout=3)[1].get("scheduler") or {})
               .get("status") == "healthy", timeout, watch, RUN_DIR)


def wanted(state: dict) -> list[str]:
    names = ["ihc-server"] if state.get("ihc_managed") else []
    names += ["dag-processor", "scheduler", *(f"celery-worker-{i}" for i in range(1, state.get("workers", 0) + 1))]
    return names + (["triggerer"] if state.get("triggerer") else []) + ["api-server"]


def component(name: str, state: dict, env: dict[str, str], keys: dict[str, str]) -> tuple[list[str], dict]:
    if name == "ihc-server":
        env = {k: v for k, v in env.items() if k != "AIRFLOW_CONN_IHC_API"} | {"IHC_API_KEYS": keys["ihc_api_key"]}
        return ihc_server_argv(state["ihc_port"]), env
    if not name.startswith("celery-worker-"):
        return [AIRFLOW_BIN, name], env
    number = int(name.rsplit("-", 1)[1])
    # Workers on one machine each serve their task logs on a port of their own.
    env = env | {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(state["worker_log_port"] + number - 1)}
    return [AIRFLOW_BIN, "celery", "worker", "--celery-hostname", f"worker{number}@%h"], env


def attribution_conn(args: argparse.Namespace) -> str:
    """The user's connection, a PostgreSQL warehouse with the demo data, or the demo file."""
    if "AIRFLOW_CONN_ATTRIBUTION_DB" in os.environ:
        return os.environ["AIRFLOW_CONN_ATTRIBUTION_DB"]
    if args.warehouse == "sqlite":
        return sqlite_conn(ensure_demo_db())
    from ihc_attribution_dev.pg_load import load

    if not port_open("127.0.0.1", 5432):
        raise UpError("--warehouse postgres needs PostgreSQL on 127.0.0.1:5432")
    if any(load(ensure_demo_db(), args.warehouse_db).values()):
        print(f"loaded the demo data ({DEMO_DB.name}) into PostgreSQL database {args.warehouse_db}", flush=True)
    return json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                       "schema": args.warehouse_db})


def fresh_state(args: argparse.Namespace) -> dict:
    celery = args.executor == "celery"
    if celery and not 1 <= args.workers <= MAX_WORKERS:
        raise UpError(f"--workers must be from 1 to {MAX_WORKERS}")
    metadata_db = choose_metadata_db("postgres" if celery and args.metadata_db == "auto" else args.metadata_db)
    if celery and not metadata_db.startswith("postgresql"):
        raise UpError("the CeleryExecutor needs a PostgreSQL metadata database (--metadata-db postgres or a URL)")
    broker = urlsplit(args.broker_url)
    if celery and not port_open(broker.hostname or "127.0.0.1", broker.port or 6379):
        raise UpError(f"the CeleryExecutor needs its Redis broker; nothing listens at {broker.hostname}:{broker.port or 6379}")
    return {"api_port": args.port, "ihc_port": args.ihc_port,
            "ihc_managed": "AIRFLOW_CONN_IHC_API" not in os.environ, "metadata_db": metadata_db,
            "attribution_db_conn": attribution_conn(args), "triggerer": args.triggerer, "executor": args.executor,
            "workers": args.workers if celery else 0, "worker_log_port": args.worker_log_port,
            "broker_url": args.broker_url if celery else None, "components": {}}


def prepare(args: argparse.Namespace) -> tuple[dict, dict[str, str], dict[str, int]]:
    """State, secrets and running components: the running stack's, or new ones."""
    state = load_state()
    if alive := running(state):
        if args.executor != state.get("executor", "local"):
            raise UpError(f"the running stack uses the {state.get('executor', 'local')} executor; `make down` first")
        state["triggerer"] = state.get("triggerer") or args.triggerer
        return state, load_secrets(), alive
    sizes = {"ihc_api_key": 24, "jwt_secret": 64, "api_secret_key": 64, "admin_password": 12}
    state, keys = fresh_state(args), {name: secrets.token_urlsafe(size) for name, size in sizes.items()}
    write_private(SECRETS_FILE, json.dumps(keys, indent=2) + "\n")
    write_private(PASSWORDS_FILE, json.dumps({ADMIN_USER: keys["admin_password"]}) + "\n")
    save_state(state)
    return state, keys, alive


def migrate(env: dict[str, str], metadata_db: str, timeout: float) -> None:
    """``airflow db migrate``, creating a missing PostgreSQL database first."""
    if metadata_db.startswith("postgresql"):
        from ihc_attribution_dev.pg_load import ensure_database
        from sqlalchemy.engine import make_url

        url = make_url(metadata_db)
        if url.password:  # libpq's own variable: ensure_database takes no password
            os.environ.setdefault("PGPASSWORD", url.password)
        if ensure_database(url.database, host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres"):
            print(f"created the PostgreSQL database {url.database}", flush=True)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file("migrate"), "a") as log:
        code = subprocess.run([AIRFLOW_BIN, "db", "migrate"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
    if code != 0:
        raise UpError(f"`airflow db migrate` failed:\n{tail(log_file('migrate'))}")
    print(f"metadata database migrated in {time.monotonic() - started:.0f} s", flush=True)


def launch(args: argparse.Namespace, state: dict, keys: dict[str, str], missing: list[str], started: dict[str, int]) -> None:
    if "api-server" in missing and port_open("127.0.0.1", state["api_port"]):
        raise UpError(f"port {state['api_port']} is in use by another program; stop it or use --port")
    if "ihc-server" in missing and port_open("127.0.0.1", state["ihc_port"]):
        raise UpError(f"port {state['ihc_port']} (local IHC server) is in use by another program")
    env = stack_env(state, keys)
    if "scheduler" in missing:
        migrate(env, state["metadata_db"], args.timeout)
    for name in missing:
        started[name] = start_process(name, *component(name, state, env, keys), state)
        print(f"started {name} (pid {started[name]}), log {log_file(name).relative_to(ROOT)}", flush=True)


def print_login(state: dict, keys: dict[str, str]) -> None:
    from sqlalchemy.engine import make_url

    base = f"http://localhost:{state['api_port']}"
    print(f"""
Airflow is running: {base}
  login     {ADMIN_USER} / {keys['admin_password']}
  report    {base}/plugin/attribution-report
  metadata  {make_url(state['metadata_db']).render_as_string(hide_password=True)}
  logs      {RUN_DIR}/*.log, task logs in {airflow_env()['AIRFLOW_HOME']}/logs
  stop      make down""", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Start what is not running and wait until the stack serves the DAG; on failure stop what it started."""
    started_at = time.monotonic()
    state, keys, alive = prepare(args)
    missing = [name for name in wanted(state) if name not in alive]
    started: dict[str, int] = {}
    try:
        if missing:
            launch(args, state, keys, missing, started)
            wait_ready(state, keys, started, args.timeout)
    except (UpError, OSError, subprocess.SubprocessError, KeyboardInterrupt) as exc:
        print(f"\nmake up failed: {exc or type(exc).__name__}", file=sys.stderr, flush=True)
        if started:
            print("stopping what was started ...", file=sys.stderr, flush=True)
            stop_groups(started, timeout=30)
            save_state(state | {"components": {n: c for n, c in state["components"].items() if n not in started}})
        return 1
    print(f"\nup in {time.monotonic() - started_at:.0f} s; DAG {DAG_ID} unpaused, pool {POOL} ({POOL_SLOTS} slots) ready"
          if missing else "the local Airflow is already running; nothing to start", flush=True)
    print_login(state, keys)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state, started = load_state(), time.monotonic()
    groups = running(state)
    try:
        stop_groups(groups, args.timeout)
    except UpError as exc:
        print(f"make down: {exc}", file=sys.stderr)
        return 1
    print(f"stopped {', '.join(groups)} in {time.monotonic() - started:.0f} s" if groups
          else "the local Airflow is not running", flush=True)
    if state:
        save_state(state | {"components": {}})
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = load_state()
    if not (alive := running(state)):
        print("the local Airflow is not running (make up starts it)")
        return 0
    for name in wanted(state):
        print(f"  {name:14} {'running, pid ' + str(alive[name]) if name in alive else 'NOT RUNNING'}")
    print(f"  UI            http://localhost:{state['api_port']}")
    return 0 if all(name in alive for name in wanted(state)) else 1


def cmd_airflow(args: argparse.Namespace) -> int:
    if not (state := load_state()):
        raise UpError("no local Airflow set up yet; run `make up` first")
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return subprocess.run([AIRFLOW_BIN, *rest], env=stack_env(state, load_secrets()), cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local Airflow (only what is not running)")
    up.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_UP_PORT") or 8080), help="port of the UI and API")
    up.add_argument("--metadata-db", default="auto", help="auto (PostgreSQL airflow_local if reachable, else SQLite), "
                    "postgres, sqlite, or a SQLAlchemy URL")
    up.add_argument("--triggerer", action="store_true", help="also start `airflow triggerer`")
    up.add_argument("--executor", choices=("local", "celery"), default="local", help="celery: Celery workers on Redis")
    up.add_argument("--workers", type=int, default=2, help="Celery workers (with --executor celery)")
    up.add_argument("--worker-log-port", type=int, default=8793, help="task-log port of the first Celery worker; "
                    "the others take the next ones")
    up.add_argument("--broker-url", default="redis://127.0.0.1:6379/0", help="the Celery broker")
    up.add_argument("--warehouse", choices=("sqlite", "postgres"), default="sqlite",
                    help="attribution database without AIRFLOW_CONN_ATTRIBUTION_DB: the demo file or PostgreSQL")
    up.add_argument("--warehouse-db", default="attribution_local", help="PostgreSQL database of --warehouse postgres")
    up.add_argument("--ihc-port", type=int, default=8765, help="port of the local IHC server")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each step")
    down = sub.add_parser("down", help="stop what `up` started and wait for it to exit")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds before SIGKILL")
    sub.add_parser("status", help="show what runs")
    sub.add_parser("airflow", help="an airflow command for the local stack").add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "airflow": cmd_airflow}[args.command](args)
    except UpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
