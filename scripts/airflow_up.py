"""A local Airflow for the ``ihc_attribution`` DAG, without Docker: ``make up`` / ``make down``.

``up`` starts ``airflow api-server``, ``scheduler`` and ``dag-processor`` (``--triggerer`` adds
``airflow triggerer``) as separate background processes, plus the local IHC server, each in a
process group of its own, with its PID in ``.run/airflow/<name>.pid`` and its output in
``.run/airflow/<name>.log``. Before that it migrates the metadata database (PostgreSQL
``airflow_local`` on 127.0.0.1:5432 when reachable, else SQLite; ``--metadata-db`` chooses);
afterwards it creates the pool ``ihc_api`` (``$ATTRIBUTION_IHC_POOL_SIZE`` slots, default 4), waits for the DAG to be parsed and
unpauses it. Running ``up`` again starts only what is not running.

``--executor celery --workers N`` runs the CeleryExecutor instead of the LocalExecutor: N
``airflow celery worker`` processes (``worker1@host`` ...) on the Redis broker at
``--broker-url`` (default ``redis://127.0.0.1:6379/0``), with the PostgreSQL metadata database
as Celery's result backend. ``--warehouse postgres`` makes ``attribution_db`` a PostgreSQL
database (``--warehouse-db``, default ``attribution_local``; created and filled with the demo
data when empty) instead of the SQLite demo file.

The connections reach every process as ``AIRFLOW_CONN_*`` variables in JSON form:
``attribution_db`` is the demo database (``data/demo.db``, created when missing) unless
``AIRFLOW_CONN_ATTRIBUTION_DB`` is set, and ``ihc_api`` is the local IHC server on port 8765
with an API key generated at ``up`` unless ``AIRFLOW_CONN_IHC_API`` is set. Secrets (that key,
the JWT secret, the UI password) live in 0600 files under ``.run/airflow/``; only the UI login is
printed. ``down`` stops exactly the process groups ``up`` recorded and waits for them to exit.

    python scripts/airflow_up.py up [--port 8080] [--metadata-db auto|postgres|sqlite|URL] [--triggerer]
        [--executor local|celery] [--workers 2] [--warehouse sqlite|postgres] [--warehouse-db NAME]
    python scripts/airflow_up.py status
    python scripts/airflow_up.py down
    python scripts/airflow_up.py airflow backfill create --dag-id ihc_attribution --from-date ... --to-date ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_run import DEMO_DB, ROOT, _env, ensure_demo_db  # noqa: E402  (scripts/ is not a package)

RUN_DIR = ROOT / ".run" / "airflow"
STATE_FILE = RUN_DIR / "state.json"
SECRETS_FILE = RUN_DIR / "secrets.json"
PASSWORDS_FILE = RUN_DIR / "simple_auth_manager_passwords.json"
DAG_ID = "ihc_attribution"
POOL = "ihc_api"
POOL_SLOTS = int(os.environ.get("ATTRIBUTION_IHC_POOL_SIZE", "4"))
ADMIN_USER = "admin"
IHC_PORT = 8765
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow_local"
AIRFLOW_BIN = str(Path(sys.executable).parent / "airflow")
MAX_WORKERS = 8
WORKER_LOG_PORT = 8793
# Stopped in this order; the IHC server last, so tasks still finishing can reach it.
COMPONENTS = (
    "api-server", "scheduler", "dag-processor", "triggerer",
    *(f"celery-worker-{i}" for i in range(1, MAX_WORKERS + 1)),
    "ihc-server",
)


class UpError(RuntimeError):
    """The local stack could not be started; the message says why and where to look."""


# --- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    state: str
    pgid: int
    start_ticks: int


def proc_info(pid: int) -> ProcInfo | None:
    """State, process group and start time of a live process; ``None`` if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    info = ProcInfo(pid=pid, state=fields[0], pgid=int(fields[2]), start_ticks=int(fields[19]))
    return None if info.state in ("Z", "X") else info


def _ps_group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    members = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and int(parts[1]) == pgid and not parts[2].startswith("Z"):
            members.append(int(parts[0]))
    return members


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    if not Path("/proc/self/stat").exists():  # not Linux: ask ps
        return _ps_group_members(pgid)
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = proc_info(int(entry.name))
            if info is not None and info.pgid == pgid:
                members.append(info.pid)
    return members


def _start_ticks(pid: int) -> int | None:
    info = proc_info(pid)
    if info is not None:
        return info.start_ticks
    if not Path("/proc/self/stat").exists():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            return 0  # alive; no cheap start time outside Linux
    return None


def command_line(pid: int) -> str:
    """The command line of a process ('' if it is gone)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True).stdout


def _marker(name: str) -> str:
    if name == "ihc-server":
        return "ihc_attribution_dev.server"
    # A Celery worker renames its process ("[celeryd: worker1@host:MainProcess] ... celery worker ...").
    return "celery worker" if name.startswith("celery-worker-") else "airflow"


def pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    return RUN_DIR / f"{name}.log"


def load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state(state: dict) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, STATE_FILE)


def recorded_pid(name: str, state: dict) -> int | None:
    """The PID ``up`` recorded for ``name``, if that very process still runs: same start time and
    the expected program, so that a PID reused after a reboot is never taken for ours."""
    try:
        pid = int(pid_file(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    ticks = _start_ticks(pid)
    expected = state.get("components", {}).get(name, {}).get("start_ticks")
    if ticks is None or (expected is not None and ticks != 0 and ticks != expected):
        return None
    if _marker(name) not in command_line(pid):
        return None
    return pid


def running(state: dict) -> dict[str, int]:
    """Components of the stack that are running, by name."""
    return {name: pid for name in COMPONENTS if (pid := recorded_pid(name, state)) is not None}


def start_process(name: str, argv: list[str], env: dict[str, str], state: dict) -> int:
    """Start ``argv`` in a new session (its own process group), output to its log; record its PID."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(log_file(name), "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n")
        log.flush()
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(name).write_text(f"{proc.pid}\n")
    state.setdefault("components", {})[name] = {"pid": proc.pid, "start_ticks": _start_ticks(proc.pid)}
    save_state(state)
    return proc.pid


def stop_groups(groups: dict[str, int], timeout: float) -> list[str]:
    """SIGTERM each process group, wait up to ``timeout`` s, then SIGKILL what is left.

    Returns the names of groups that had to be killed.
    """
    for name, pgid in groups.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
            print(f"  stopping {name} (process group {pgid})", flush=True)
    killed = []
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + wait
        left = {n: g for n, g in groups.items() if group_members(g)}
        while left and time.monotonic() < deadline:
            time.sleep(0.3)
            left = {n: g for n, g in left.items() if group_members(g)}
        if not left or sig == signal.SIGKILL:
            if left:
                raise UpError(f"still running after SIGKILL: {', '.join(left)}")
            break
        for name, pgid in left.items():
            print(f"  {name} did not stop within {timeout:.0f} s; killing it", flush=True)
            killed.append(name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    return killed


# --- settings ----------------------------------------------------------------------------------


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def choose_metadata_db(choice: str) -> str:
    """SQLAlchemy URL of the metadata database: PostgreSQL ``airflow_local`` if possible, else SQLite."""
    sqlite_url = f"sqlite:///{Path(_env()['AIRFLOW_HOME']).resolve() / 'airflow-local.db'}"
    if choice == "sqlite":
        return sqlite_url
    if choice not in ("auto", "postgres"):
        return choice  # an explicit URL
    problem = None
    try:
        import asyncpg  # noqa: F401  (Airflow 3 also opens the metadata database asynchronously)
        import psycopg2  # noqa: F401
    except ImportError:
        problem = "psycopg2 or asyncpg is not installed (pip install psycopg2-binary asyncpg)"
    if problem is None and not _port_open("127.0.0.1", 5432):
        problem = "nothing listens on 127.0.0.1:5432"
    if problem is None:
        return POSTGRES_URL
    if choice == "postgres":
        raise UpError(f"cannot use PostgreSQL for the metadata database: {problem}")
    print(f"metadata database: SQLite, since PostgreSQL is not usable ({problem})", flush=True)
    return sqlite_url


def ensure_postgres_database(url: str) -> None:
    """Create the database of a PostgreSQL URL if it does not exist yet."""
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = psycopg2.connect(
        host=parsed.host or "127.0.0.1", port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, dbname="postgres", connect_timeout=5,
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parsed.database)))
                print(f"created the PostgreSQL database {parsed.database}", flush=True)
    finally:
        conn.close()


def display_url(url: str) -> str:
    """A database URL without its password."""
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url.split("@")[-1]


def new_secrets() -> dict[str, str]:
    return {
        "ihc_api_key": secrets.token_urlsafe(24),
        "jwt_secret": secrets.token_urlsafe(64),
        "api_secret_key": secrets.token_urlsafe(64),
        "admin_password": secrets.token_urlsafe(12),
    }


def load_secrets() -> dict[str, str]:
    try:
        return json.loads(SECRETS_FILE.read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise UpError(f"{SECRETS_FILE} is missing or unreadable; run `make down` and `make up` again") from exc


def stack_env(state: dict, keys: dict[str, str]) -> dict[str, str]:
    """Environment of every process of the stack (and of ``airflow`` commands run against it)."""
    env = _env()  # AIRFLOW_HOME, DAGS_FOLDER, PYTHONPATH, ATTRIBUTION_OUTPUT_DIR, examples off
    port = state["api_port"]
    celery = state.get("executor") == "celery"
    if celery:
        env.update({
            "AIRFLOW__CELERY__BROKER_URL": state["broker_url"],
            # Celery's database backend takes a SQLAlchemy URL after "db+".
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + state["metadata_db"],
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(state.get("worker_concurrency", 2)),
        })
    env.update({
        "AIRFLOW__CORE__PLUGINS_FOLDER": env.get("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins")),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if celery else "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": state["metadata_db"],
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(PASSWORDS_FILE),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW_CONN_ATTRIBUTION_DB": state["attribution_db_conn"],
    })
    env.pop("IHC_API_KEYS", None)
    if state.get("ihc_managed"):
        env["AIRFLOW_CONN_IHC_API"] = json.dumps({
            "conn_type": "ihc", "host": "127.0.0.1", "port": state["ihc_port"], "schema": "http",
            "password": keys["ihc_api_key"], "extra": {"conv_type_id": "demo", "max_concurrency": 4},
        })
    return env


# --- REST helpers ------------------------------------------------------------------------------


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None,
              timeout: float = 10.0) -> tuple[int, dict]:
    """One JSON request; returns (status, decoded body). Network errors raise ``OSError``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"raw": raw[:500].decode(errors="replace")}


def wait_until(what: str, check, timeout: float, interval: float = 1.0,
               watch: Iterable[tuple[str, int]] = ()) -> object:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` s or if a watched
    process group dies (its log tail is shown)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            result = check()
            if result:
                return result
        for name, pid in watch:
            if proc_info(pid) is None and _start_ticks(pid) is None:
                raise UpError(f"{name} exited while waiting for {what}:\n{tail(log_file(name))}")
        if time.monotonic() > deadline:
            raise UpError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


def login(base: str, password: str) -> str:
    """An API token of the local admin."""
    status, body = http_json("POST", f"{base}/auth/token", {"username": ADMIN_USER, "password": password})
    if status not in (200, 201) or "access_token" not in body:
        raise UpError(f"login as {ADMIN_USER} failed: HTTP {status} {body}")
    return body["access_token"]


def ensure_pool(base: str, token: str) -> None:
    """The pool ``ihc_api``: its slots are the budget of IHC requests in flight across all runs.

    Each run's ``call_ihc_api`` takes ``$ATTRIBUTION_IHC_POOL_SLOTS`` of them, so concurrent
    backfill runs cannot multiply the requests sent at once.
    """
    description = "IHC API requests in flight across runs (each call_ihc_api takes its max_concurrency)"
    status, body = http_json("GET", f"{base}/api/v2/pools/{POOL}", token=token)
    if status == 404:
        status, body = http_json("POST", f"{base}/api/v2/pools", {
            "name": POOL, "slots": POOL_SLOTS, "description": description, "include_deferred": False,
        }, token=token)
    elif status == 200 and body.get("slots") != POOL_SLOTS:
        status, body = http_json("PATCH", f"{base}/api/v2/pools/{POOL}", {
            "name": POOL, "slots": POOL_SLOTS, "description": description, "include_deferred": False,
        }, token=token)
    if status not in (200, 201):
        raise UpError(f"could not create the pool {POOL}: HTTP {status} {body}")


def dag_import_error(base: str, token: str) -> str | None:
    status, body = http_json("GET", f"{base}/api/v2/importErrors?limit=100", token=token)
    if status != 200:
        return None
    for error in body.get("import_errors", []):
        if "ihc_attribution" in str(error.get("filename", "")):
            return str(error.get("stack_trace", ""))[-3000:]
    return None


def wait_for_dag_and_unpause(base: str, token: str, timeout: float, watch) -> None:
    def parsed() -> bool:
        status, _ = http_json("GET", f"{base}/api/v2/dags/{DAG_ID}", token=token)
        if status == 200:
            return True
        error = dag_import_error(base, token)
        if error:
            raise UpError(f"the DAG file does not import:\n{error}")
        return False

    wait_until(f"the DAG {DAG_ID} to be parsed", parsed, timeout, interval=2.0, watch=watch)
    status, body = http_json("PATCH", f"{base}/api/v2/dags/{DAG_ID}", {"is_paused": False}, token=token)
    if status != 200:
        raise UpError(f"could not unpause {DAG_ID}: HTTP {status} {body}")


# --- commands ----------------------------------------------------------------------------------


def airflow_argv(name: str, state: dict) -> list[str]:
    if name == "api-server":
        return [AIRFLOW_BIN, "api-server", "--host", state["api_host"], "--port", str(state["api_port"]),
                "--workers", "1"]
    if name == "ihc-server":
        return [sys.executable, "-m", "ihc_attribution_dev.server", "--host", "127.0.0.1",
                "--port", str(state["ihc_port"]), "--conv-type-id", "demo"]
    if name.startswith("celery-worker-"):
        number = name.rsplit("-", 1)[1]
        return [AIRFLOW_BIN, "celery", "worker", "--celery-hostname", f"worker{number}@%h",
                "--concurrency", str(state.get("worker_concurrency", 2))]
    return [AIRFLOW_BIN, name]


def worker_names(state: dict) -> list[str]:
    """The Celery workers of the stack (none with the LocalExecutor)."""
    if state.get("executor") != "celery":
        return []
    return [f"celery-worker-{i}" for i in range(1, int(state.get("workers", 0)) + 1)]


def component_env(name: str, env: dict[str, str], state: dict) -> dict[str, str]:
    """The environment of one component: each Celery worker serves its task logs on a port of its own."""
    if not name.startswith("celery-worker-"):
        return env
    number = int(name.rsplit("-", 1)[1])
    return dict(env, AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(state.get("worker_log_port", WORKER_LOG_PORT) + number - 1))


def wanted(state: dict) -> list[str]:
    names = ["ihc-server"] if state.get("ihc_managed") else []
    names += ["dag-processor", "scheduler", *worker_names(state)]
    if state.get("triggerer"):
        names.append("triggerer")
    return names + ["api-server"]


def warehouse_conn(args: argparse.Namespace) -> str:
    """The ``attribution_db`` connection of a PostgreSQL warehouse holding the demo data (loaded when empty)."""
    from ihc_attribution_dev.pg_load import load

    if not _port_open("127.0.0.1", 5432):
        raise UpError("--warehouse postgres needs PostgreSQL on 127.0.0.1:5432")
    copied = load(ensure_demo_db(), args.warehouse_db)
    if any(copied.values()):
        print(f"loaded the demo data ({DEMO_DB.name}) into PostgreSQL database {args.warehouse_db}", flush=True)
    return json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                       "schema": args.warehouse_db})


def fresh_state(args: argparse.Namespace) -> dict:
    env = _env()
    celery = args.executor == "celery"
    if celery and not 1 <= args.workers <= MAX_WORKERS:
        raise UpError(f"--workers must be from 1 to {MAX_WORKERS}")
    metadata_db = choose_metadata_db("postgres" if celery and args.metadata_db == "auto" else args.metadata_db)
    if celery and not metadata_db.startswith("postgresql"):
        raise UpError("the CeleryExecutor needs a PostgreSQL metadata database (--metadata-db postgres or a URL)")
    if celery:
        host, _, port = args.broker_url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2].partition(":")
        if not _port_open(host or "127.0.0.1", int(port or 6379)):
            raise UpError(f"the CeleryExecutor needs its Redis broker, but nothing listens at {host}:{port or 6379}")
    if "AIRFLOW_CONN_ATTRIBUTION_DB" in env:
        db_conn = env["AIRFLOW_CONN_ATTRIBUTION_DB"]
    elif args.warehouse == "postgres":
        db_conn = warehouse_conn(args)
    else:
        db_conn = json.dumps({"conn_type": "sqlite", "host": str(ensure_demo_db().resolve())})
    return {
        "api_host": args.host,
        "api_port": args.port,
        "ihc_port": args.ihc_port,
        "ihc_managed": "AIRFLOW_CONN_IHC_API" not in env,
        "metadata_db": metadata_db,
        "attribution_db_conn": db_conn,
        "triggerer": bool(args.triggerer),
        "executor": args.executor,
        "workers": args.workers if celery else 0,
        "worker_concurrency": args.worker_concurrency,
        "worker_log_port": args.worker_log_port,
        "broker_url": args.broker_url if celery else None,
        "components": {},
    }


def migrate(env: dict[str, str], metadata_db: str, timeout: float) -> None:
    if metadata_db.startswith("postgresql"):
        ensure_postgres_database(metadata_db)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file("migrate"), "a") as log:
        try:
            code = subprocess.run([AIRFLOW_BIN, "db", "migrate"], env=env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise UpError(f"`airflow db migrate` took over {timeout:.0f} s; see {log_file('migrate')}") from None
    if code != 0:
        raise UpError(f"`airflow db migrate` failed:\n{tail(log_file('migrate'))}")
    print(f"metadata database migrated in {time.monotonic() - started:.0f} s", flush=True)


def print_login(state: dict, keys: dict[str, str]) -> None:
    base = f"http://localhost:{state['api_port']}"
    print(f"""
Airflow is running: {base}
  login     {ADMIN_USER} / {keys['admin_password']}
  report    {base}/plugin/attribution-report
  metadata  {display_url(state['metadata_db'])}
  logs      {RUN_DIR}/*.log, task logs in {_env()['AIRFLOW_HOME']}/logs
  stop      make down""", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    started_at = time.monotonic()
    state = load_state()
    alive = running(state)
    fresh = not alive
    if fresh:
        state = fresh_state(args)
        keys = new_secrets()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        _write_private(SECRETS_FILE, json.dumps(keys, indent=2) + "\n")
        _write_private(PASSWORDS_FILE, json.dumps({ADMIN_USER: keys["admin_password"]}) + "\n")
        for name in COMPONENTS:
            pid_file(name).unlink(missing_ok=True)
        save_state(state)
    else:
        if args.executor != state.get("executor", "local"):
            raise UpError(f"the running stack uses the {state.get('executor', 'local')} executor; `make down` first")
        keys = load_secrets()
        state["triggerer"] = state.get("triggerer") or bool(args.triggerer)
    missing = [name for name in wanted(state) if name not in alive]
    if not missing:
        print("the local Airflow is already running; nothing to start", flush=True)
        print_login(state, keys)
        return 0

    env = stack_env(state, keys)
    base = f"http://localhost:{state['api_port']}"
    newly: dict[str, int] = {}
    try:
        if "api-server" in missing and _port_open("127.0.0.1", state["api_port"]):
            raise UpError(f"port {state['api_port']} is in use by another program; stop it or use --port")
        if "ihc-server" in missing and _port_open("127.0.0.1", state["ihc_port"]):
            raise UpError(f"port {state['ihc_port']} (local IHC server) is in use by another program")
        if fresh or "scheduler" in missing:
            migrate(env, state["metadata_db"], args.timeout)
        for name in missing:
            server_env = dict(env, IHC_API_KEYS=keys["ihc_api_key"]) if name == "ihc-server" else component_env(name, env, state)
            if name == "ihc-server":
                server_env.pop("AIRFLOW_CONN_IHC_API", None)
            newly[name] = start_process(name, airflow_argv(name, state), server_env, state)
            print(f"started {name} (pid {newly[name]}), log {log_file(name).relative_to(ROOT)}", flush=True)
        watch = list(newly.items())
        if "ihc-server" in newly:
            wait_until("the local IHC server", lambda: http_json(
                "GET", f"http://127.0.0.1:{state['ihc_port']}/health", timeout=2)[0] == 200,
                60, interval=0.5, watch=watch)
        wait_until("the API server", lambda: http_json(
            "GET", f"{base}/api/v2/monitor/health", timeout=3)[0] == 200, args.timeout, watch=watch)
        token = login(base, keys["admin_password"])
        ensure_pool(base, token)
        wait_for_dag_and_unpause(base, token, args.timeout, watch)

        def scheduler_healthy() -> bool:
            _, health = http_json("GET", f"{base}/api/v2/monitor/health", timeout=3)
            return (health.get("scheduler") or {}).get("status") == "healthy"

        wait_until("the scheduler's heartbeat", scheduler_healthy, args.timeout, watch=watch)
    except (UpError, OSError, KeyboardInterrupt) as exc:
        print(f"\nmake up failed: {exc or type(exc).__name__}", file=sys.stderr, flush=True)
        if newly:
            print("stopping what was started ...", file=sys.stderr, flush=True)
            stop_groups(newly, timeout=30)
            for name in newly:
                pid_file(name).unlink(missing_ok=True)
        return 1
    print(f"\nup in {time.monotonic() - started_at:.0f} s; DAG {DAG_ID} unpaused, pool {POOL} ({POOL_SLOTS} slots) ready",
          flush=True)
    print_login(state, keys)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = load_state()
    groups: dict[str, int] = {}
    for name in COMPONENTS:
        pid = recorded_pid(name, state)
        if pid is not None:
            groups[name] = pid
        elif pid_file(name).exists():
            # The leader is gone, members of its group (workers, task processes) may remain. While
            # they do, the kernel does not hand their group's number to a new process.
            with contextlib.suppress(ValueError, OSError):
                pgid = int(pid_file(name).read_text().strip())
                members = group_members(pgid)
                if proc_info(pgid) is None and members and os.getsid(members[0]) == pgid:
                    groups[name] = pgid
    if not groups:
        print("the local Airflow is not running", flush=True)
    else:
        started = time.monotonic()
        try:
            stop_groups(groups, args.timeout)
        except UpError as exc:
            print(f"make down: {exc}", file=sys.stderr)
            return 1
        print(f"stopped {', '.join(groups)} in {time.monotonic() - started:.0f} s", flush=True)
    for name in COMPONENTS:
        pid_file(name).unlink(missing_ok=True)
    if state:
        state["components"] = {}
        save_state(state)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = load_state()
    alive = running(state)
    if not alive:
        print("the local Airflow is not running (make up starts it)")
        return 0
    for name in wanted(state):
        print(f"  {name:14} {'running, pid ' + str(alive[name]) if name in alive else 'NOT RUNNING'}")
    print(f"  UI            http://localhost:{state['api_port']}")
    return 0 if all(name in alive for name in wanted(state)) else 1


def cmd_airflow(args: argparse.Namespace) -> int:
    """Run an ``airflow`` command against the local stack's metadata database and settings."""
    state = load_state()
    if not state:
        raise UpError("no local Airflow set up yet; run `make up` first")
    env = stack_env(state, load_secrets())
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    argv = [AIRFLOW_BIN, *rest]
    return subprocess.run(argv, env=env, cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local Airflow (only what is not running)")
    up.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_UP_PORT", "8080")))
    up.add_argument("--host", default="127.0.0.1", help="interface of the API server (UI)")
    up.add_argument("--metadata-db", default=os.environ.get("AIRFLOW_UP_METADATA_DB", "auto"),
                    help="auto (PostgreSQL airflow_local if reachable, else SQLite), postgres, sqlite, "
                         "or a SQLAlchemy URL")
    up.add_argument("--triggerer", action="store_true", help="also start `airflow triggerer`")
    up.add_argument("--executor", choices=("local", "celery"), default=os.environ.get("AIRFLOW_UP_EXECUTOR") or "local",
                    help="local (LocalExecutor, default) or celery (CeleryExecutor with --workers workers on Redis)")
    up.add_argument("--workers", type=int, default=int(os.environ.get("AIRFLOW_UP_WORKERS") or 2),
                    help="Celery workers to start (with --executor celery)")
    up.add_argument("--worker-concurrency", type=int, default=2, help="task slots of each Celery worker")
    up.add_argument("--worker-log-port", type=int, default=WORKER_LOG_PORT,
                    help="task-log port of the first Celery worker; the others take the next ones")
    up.add_argument("--broker-url", default=os.environ.get("AIRFLOW_UP_BROKER_URL") or "redis://127.0.0.1:6379/0",
                    help="the Celery broker")
    up.add_argument("--warehouse", choices=("sqlite", "postgres"), default=os.environ.get("AIRFLOW_UP_WAREHOUSE") or "sqlite",
                    help="the attribution database when AIRFLOW_CONN_ATTRIBUTION_DB is not set: the SQLite demo "
                         "file, or a PostgreSQL database holding the demo data")
    up.add_argument("--warehouse-db", default=os.environ.get("AIRFLOW_UP_WAREHOUSE_DB") or "attribution_local",
                    help="the PostgreSQL database of --warehouse postgres (created when missing)")
    up.add_argument("--ihc-port", type=int, default=IHC_PORT, help="port of the local IHC server")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each step")
    down = sub.add_parser("down", help="stop what `up` started and wait for it to exit")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds before SIGKILL")
    sub.add_parser("status", help="show what runs")
    cli = sub.add_parser("airflow", help="run an airflow CLI command against the local stack")
    cli.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    commands = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "airflow": cmd_airflow}
    try:
        return commands[args.command](args)
    except UpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
