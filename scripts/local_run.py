"""Run the ``ihc_attribution`` DAG locally, without a scheduler, and report what each run did.

Used by ``make demo``, ``make run`` and ``make backfill``. Connections come from
``AIRFLOW_CONN_ATTRIBUTION_DB`` and ``AIRFLOW_CONN_IHC_API`` when they are set. Otherwise the
demo database is used (created when missing) and the local IHC server is started on a free port
with a throw-away API key, and stopped after the run.

    python scripts/local_run.py demo
    python scripts/local_run.py run --start 2024-01-01 --end 2024-01-31
    python scripts/local_run.py backfill --start 2024-01-01 --end 2024-01-07

The DAG runs through ``dag.test()`` in a child process whose output goes to a log file of its
own (``.run/logs/<command>-<time>-<pid>.log``). The child returns, per DAG run, the run's state,
the state of every task of the DAG and the return values of ``check_run`` and ``export_csv``.
The command succeeds only if every run and every task of the DAG succeeded; the summary printed
is the run's own ``check_run`` result.

Before its first run the child parses the DAG once and builds the in-process execution API that
``dag.test()`` runs the tasks through, while a forked copy of it prepares the metadata database
and the local IHC server starts; the garbage collector is off meanwhile.

A DAG run is held under a lock per (DAG, logical date) in ``.run/locks/``: ``dag.test()``
replaces an existing run of the same logical date, so a second backfill of a day waits for the
first instead of deleting its run. A range run (``run``, ``demo``) gets a logical date of its
own, to the microsecond.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import gc
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package, when run as `python scripts/local_run.py`
    sys.path.insert(0, str(ROOT))
DEMO_DB = Path(os.environ.get("ATTRIBUTION_DEMO_DB", ROOT / "data" / "demo.db"))
DAG_ID = "ihc_attribution"
#: Logs, results and locks of local runs.
RUN_DIR = Path(os.environ.get("ATTRIBUTION_RUN_DIR", ROOT / ".run"))
#: The task whose return value is the run summary, and the one that returns the CSV's path.
SUMMARY_TASK = "check_run"
EXPORT_TASK = "export_csv"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    env.setdefault("ATTRIBUTION_OUTPUT_DIR", str(ROOT / "output"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_demo_db() -> Path:
    """Create the demo database with the generator's defaults when it does not exist."""
    if not DEMO_DB.exists():
        from ihc_attribution_dev.demo_data import generate

        DEMO_DB.parent.mkdir(parents=True, exist_ok=True)
        print(f"creating the demo database {DEMO_DB} ...", flush=True)
        summary = generate(DEMO_DB)
        print(f"  {summary}", flush=True)
    return DEMO_DB


def start_ihc_server(env: dict[str, str], log_path: Path, *options: str) -> tuple[str, str, subprocess.Popen]:
    """Start the local IHC server in a process of its own, with a fresh key, without waiting for it.

    Returns its base URL, the key and the process; ``options`` are further command-line flags.
    """
    port = _free_port()
    key = secrets.token_urlsafe(24)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ihc_attribution_dev.server", "--host", "127.0.0.1", "--port", str(port),
             "--conv-type-id", "demo", *options],
            env=dict(env, IHC_API_KEYS=key), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    return f"http://127.0.0.1:{port}", key, proc


def wait_for_ihc_server(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    """Return once the server at ``url`` answers ``/health``; RunnerError when it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RunnerError(f"the local IHC server did not start; see {log_path}") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def ihc_server_process(
    env: dict[str, str], log_path: Path, *options: str
) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """Run the local IHC server in a process of its own, with a fresh key, until the block ends.

    Yields its base URL, the key and the process once it answers; ``options`` are further
    command-line flags.
    """
    url, key, proc = start_ihc_server(env, log_path, *options)
    try:
        try:
            wait_for_ihc_server(url, proc, log_path)
        except RunnerError as exc:
            raise SystemExit(str(exc)) from None
        yield url, key, proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def local_ihc_server(env: dict[str, str]) -> Iterator[Callable[[], None]]:
    """Start the local IHC server and point the ``ihc_api`` connection in ``env`` at it.

    Yields a function that returns once the server answers (RunnerError if it never does). The
    server takes about half a second to start; the DAG's process is started meanwhile, and its
    first request to the API comes seconds later.
    """
    log_path = RUN_DIR / "ihc-server.log"
    url, key, proc = start_ihc_server(env, log_path)
    try:
        port = int(url.rsplit(":", 1)[1])
        print(f"local IHC server (development double) on port {port}, log {log_path}", flush=True)
        env["AIRFLOW_CONN_IHC_API"] = json.dumps(
            {"conn_type": "ihc", "host": "127.0.0.1", "port": port, "schema": "http", "password": key,
             "extra": {"conv_type_id": "demo", "max_concurrency": 4}}
        )
        yield lambda: wait_for_ihc_server(url, proc, log_path)
    finally:
        stop_process(proc)


@contextlib.contextmanager
def connections(env: dict[str, str]) -> Iterator[tuple[Path | None, Callable[[], None] | None]]:
    """Use the configured connections, or the demo database and the local server.

    Yields the database's path (when it is a file) and, with the local server, the function
    that waits until it answers.
    """
    db_path: Path | None = None
    if "AIRFLOW_CONN_ATTRIBUTION_DB" not in env:
        db_path = ensure_demo_db()
        env["AIRFLOW_CONN_ATTRIBUTION_DB"] = json.dumps({"conn_type": "sqlite", "host": str(db_path.resolve())})
    else:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            db_path = Path(json.loads(env["AIRFLOW_CONN_ATTRIBUTION_DB"])["host"])
    if "AIRFLOW_CONN_IHC_API" in env:
        yield db_path, None
    else:
        with local_ihc_server(env) as server_ready:
            yield db_path, server_ready


class RunnerError(Exception):
    """A run that cannot start or cannot be trusted; the message says why and what to do."""


def _state(value: object) -> str | None:
    """An Airflow state enum (or None) as plain text."""
    return None if value is None else str(getattr(value, "value", value))


# --------------------------------------------------------------------------------------------
# Locks


def lock_path(logical_date: dt.datetime) -> Path:
    """The lock file of the DAG run at ``logical_date``."""
    stamp = logical_date.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%S.%fZ")
    return RUN_DIR / "locks" / f"{DAG_ID}__{stamp}.lock"


@contextlib.contextmanager
def file_lock(path: Path, say, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; when another process holds it, say so and wait.

    The lock is the kernel's: it is released when its holder exits, however it exits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            say(f"{what} is in use by {holder}; waiting for it to finish (lock {path}) ...")
            waited = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            say(f"  {what}: lock acquired after {time.monotonic() - waited:.1f} s")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({' '.join(sys.argv[1:2])})\n")
        handle.flush()
        yield


# --------------------------------------------------------------------------------------------
# The child process: the DAG runs here, in-process, through dag.test()


def _alembic_environment():
    """Airflow's alembic environment of its metadata database (a private helper), or None."""
    from airflow.utils import db

    return getattr(db, "_configured_alembic_environment", None)


def metadata_db_is_current() -> bool:
    """Whether the Airflow metadata database is at the installed Airflow's migration heads.

    The same questions as ``airflow.utils.db.check_migrations`` (alembic heads of the database
    against those of the code, then the external DB managers'), asked once. Airflow's check
    sleeps a second before it reports a database that is behind, which a first run paid twice
    (before and under the lock). The alembic environment comes from the private helper that
    check itself uses; should it go, the public check answers instead, with its wait.
    """
    from airflow import settings
    from airflow.utils import db
    from airflow.utils.db_manager import RunDBManager

    environment = _alembic_environment()
    if environment is None:
        try:
            db.check_migrations(timeout=0)
            return True
        except TimeoutError:
            return False
    external_managers = RunDBManager()
    with environment() as env:
        if set(env.script.get_heads()) != set(env.get_context().get_current_heads()):
            return False
    session = settings.Session()
    try:
        return external_managers.check_migration(session)
    finally:
        session.close()


def ensure_metadata_db(say) -> dict:
    """Create or upgrade the Airflow metadata database, only when it is not at the code's head."""
    started = time.monotonic()
    if metadata_db_is_current():
        return {"migrated": False, "seconds": round(time.monotonic() - started, 3)}
    with file_lock(RUN_DIR / "locks" / "airflow-metadata-db.lock", say, "the Airflow metadata database"):
        if metadata_db_is_current():  # migrated meanwhile by another runner
            migrated = False
        else:
            from airflow.utils import db

            say("creating or upgrading the Airflow metadata database ...")
            db.upgradedb()
            migrated = True
    return {"migrated": migrated, "seconds": round(time.monotonic() - started, 3)}


def load_dag() -> tuple[object, list]:
    """The DAG, parsed once from the configured DAG bundles, and the bundles with their bags.

    The bags are what ``sync_dags`` writes; by default the one bundle is the DAGs folder. Raises
    RunnerError, with the import errors, when no bundle holds the DAG.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag

    bags = []
    for bundle in DagBundlesManager().get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bags.append((bundle, BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)))
    for _, bag in bags:
        # The parsed DAG itself: ``bag.get_dag`` would also ask the metadata database whether
        # it holds a newer version.
        dag = bag.dags.get(DAG_ID)
        if dag is not None:
            return dag, bags
    folders = ", ".join(str(bundle.path) for bundle, _ in bags) or "no DAG bundle configured"
    errors = "; ".join(f"{path}: {err}" for _, bag in bags for path, err in bag.import_errors.items()) or "none"
    raise RunnerError(f"DAG {DAG_ID} not found in {folders} (import errors: {errors})")


def sync_dags(say, bags: list) -> None:
    """Write the DAGs of the configured bundles (parsed by ``load_dag``), with their assets, to the metadata database.

    ``dag.test()`` does the same at the start of every run. Two runs starting at once on a
    metadata database that does not hold the DAG yet would both insert its asset and one fail
    on the unique constraint; done here once under a lock, their own syncs find it there.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db

    with file_lock(RUN_DIR / "locks" / "airflow-dag-sync.lock", say, "the DAG record of the metadata database"):
        DagBundlesManager().sync_bundles_to_db()
        for bundle, bag in bags:
            sync_bag_to_db(bag, bundle.name, bundle.version)


def serve_only_the_client_s_api_versions() -> Callable[[], None] | None:
    """Let the in-process execution API generate the routes of the versions its client asks for only.

    The execution API keeps every version of its routes it ever had (nine in Airflow 3.3), and
    Cadwyn generates all of them: most of the warm-up's time. ``dag.test()``'s tasks talk to it
    through the Task SDK's client, which asks for one version (``API_VERSION``, the newest). The
    bundle kept holds the versions from the newest down to the client's, one more with its
    changes (the routes that only older versions have must be given back by one of them) and one
    older without changes, as Cadwyn wants the oldest version to be. The routes and models of
    the client's version are the same in both bundles: they are derived from the current code
    downwards, never from older versions.

    Replaces ``airflow.api_fastapi.execution_api.versions.bundle`` (read when the API is built)
    and returns the function that puts the full bundle back; None when there is nothing to trim
    or the client's version is not among the bundle's. It relies on Cadwyn's and Airflow's
    internals; :func:`warm_execution_api` puts the full bundle back if the trimmed one fails.
    """
    from airflow.api_fastapi.execution_api import versions
    from airflow.sdk.api.datamodels._generated import API_VERSION
    from cadwyn import Version, VersionBundle

    full = versions.bundle
    values = [version.value for version in full.versions]
    if API_VERSION not in values:
        return None
    keep = values.index(API_VERSION) + 2
    if keep >= len(values):
        return None
    kept = list(full.versions[:keep])

    def bind(bundle) -> None:  # a version change may belong to one bundle only
        for version in kept:
            for change in version.changes:
                change._bound_version_bundle = bundle

    bind(None)
    try:
        versions.bundle = VersionBundle(full.head_version, *kept, Version(full.versions[keep].value))
    except Exception:
        bind(full)
        raise

    def restore() -> None:
        bind(full)
        versions.bundle = full

    return restore


def warm_execution_api() -> dict:
    """Build the in-process execution API that ``dag.test()`` runs every task through, now.

    ``dag.test()`` builds Airflow's execution API (FastAPI, with Cadwyn's routes for each of the
    API's versions) inside the process, and Cadwyn generates those routes on the first request:
    the first task's start took about 4 s, the largest part of Airflow's start-up here. Built
    here, it is built while the garbage collector is off (half of those 4 s were collections,
    see ``child_main``) and while the metadata database is prepared in another process, and
    the log shows the start-up apart from the first task. Only the versions of the API that the
    tasks' client asks for are generated (see :func:`serve_only_the_client_s_api_versions`);
    should that fail, the API is built again with all of them.

    ``airflow.sdk.execution_time.supervisor.in_process_api_server`` is not a public API: it is
    the cached instance ``dag.test()`` asks for. Should it be missing or fail, nothing is built
    here and ``dag.test()`` builds the API itself on the first task, as it always has;
    ``tests/scripts/test_startup.py`` checks that the instance warmed is the one ``dag.test()`` uses.
    """
    started = time.monotonic()
    info: dict = {}
    try:
        import httpx
        from airflow.sdk.execution_time.supervisor import in_process_api_server

        def build() -> None:
            api = in_process_api_server()
            response = httpx.Client(transport=api.transport, base_url="http://in-process.invalid./").get("/health")
            response.raise_for_status()

        try:
            restore = serve_only_the_client_s_api_versions()
        except Exception as exc:
            restore, info["all_versions_because"] = None, f"{type(exc).__name__}: {exc}"
        if restore is None:
            build()
        else:
            try:
                build()
                info["versions"] = len(_execution_api_bundle().versions)
            except Exception as exc:  # the trimmed bundle: every version then, as Airflow builds it
                info["all_versions_because"] = f"{type(exc).__name__}: {exc}"
                restore()
                getattr(in_process_api_server, "cache_clear", lambda: None)()
                build()
    except Exception as exc:  # the run does not depend on it: dag.test() builds the API itself
        return {"warmed": False, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.monotonic() - started, 3)}
    return {"warmed": True, **info, "seconds": round(time.monotonic() - started, 3)}


def _execution_api_bundle():
    from airflow.api_fastapi.execution_api import versions

    return versions.bundle


def prepare_metadata_db(say, bags: list) -> dict:
    """Migrate the metadata database if it is behind, then write the DAGs to it."""
    info = ensure_metadata_db(say)
    sync_dags(say, bags)
    return info


def in_forked_process(function: Callable[[], dict], what: str) -> Callable[[], dict]:
    """Start ``function`` in a forked copy of this process; return a function that waits for its result.

    The metadata database's preparation (migration check, on a first run the migration, the
    DAG's record) needs nothing the execution API's warm-up builds, and both are CPU-bound
    Python: in one process they take turns, in two they run side by side. The copy shares the
    modules and the parsed DAG already loaded, and returns ``function``'s value, or its error,
    as JSON on a pipe. It is made while this process has a single thread and before it has
    opened the metadata database (Airflow's own fork handler resets the engine's pool in the
    copy all the same); with another thread running, or without ``os.fork``, ``function`` runs
    here at once instead.
    """
    import threading

    # Threads of C libraries are not in threading's count; Linux lists every thread in /proc.
    tasks = Path("/proc/self/task")
    threads = len(os.listdir(tasks)) if tasks.is_dir() else threading.active_count()
    if not hasattr(os, "fork") or threads > 1:
        value = function()
        return lambda: value
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the copy: run, report, and leave without the parent's exit handlers
        os.close(read_fd)
        try:
            payload = {"value": function()}
        except RunnerError as exc:
            payload = {"runner_error": str(exc)}
        except BaseException as exc:
            import traceback

            traceback.print_exc()
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(payload, pipe, default=str)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    os.close(write_fd)

    def wait() -> dict:
        with os.fdopen(read_fd) as pipe:
            text = pipe.read()
        _, status = os.waitpid(pid, 0)
        payload = json.loads(text) if text else {"error": f"process {pid} ended without a result (wait status {status})"}
        if "runner_error" in payload:
            raise RunnerError(payload["runner_error"])
        if "error" in payload:
            raise RuntimeError(f"{what} failed: {payload['error']}")
        return payload["value"]

    return wait


def wait_for_parent(ready_fd: int) -> None:
    """Block until the parent says the local IHC server answers; RunnerError with its reason if not."""
    with os.fdopen(ready_fd, "r") as pipe:
        message = pipe.readline().strip()
    if message != "ready":
        raise RunnerError(message.removeprefix("error ") or "the runner stopped before the local IHC server answered")


def check_dated_runs(dag, specs: list[dict]) -> None:
    """Refuse, before any run, a scheduled-style run that the DAG would not run as asked.

    Airflow marks a run whose data interval starts before the DAG's ``start_date`` successful
    without running any task, and the day must be exactly the run's data interval.
    """
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = coerce_to_core_timetable(dag.timetable)
    for spec in specs:
        if spec.get("logical_date") is None:
            continue
        logical_date = dt.datetime.fromisoformat(spec["logical_date"])
        interval = timetable.infer_manual_data_interval(run_after=logical_date)
        day = dt.date.fromisoformat(spec["label"])
        if (interval.start.date(), interval.end.date()) != (day, day + dt.timedelta(days=1)):
            raise RunnerError(
                f"the DAG's timetable gives the data interval [{interval.start}, {interval.end}) for "
                f"logical date {logical_date}, not the day {day}"
            )
        if interval.start < dag.start_date:
            raise RunnerError(
                f"{day} is before the DAG's start date {dag.start_date:%Y-%m-%d}: Airflow would mark "
                f"its run successful without running a task. Set ATTRIBUTION_START_DATE to a date "
                f"on or before the first day, e.g. ATTRIBUTION_START_DATE={specs[0]['label']} make backfill ..."
            )


def _dagrun_exists(logical_date: dt.datetime) -> bool:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(DagRun.id).where(DagRun.dag_id == DAG_ID, DagRun.logical_date == logical_date)
        ) is not None


def describe_run(dag, dag_run) -> dict:
    """The state of a finished DAG run, of every task of the DAG in it, and its results."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_run = session.get(DagRun, dag_run.id) or dag_run
        tis = {ti.task_id: ti for ti in dag_run.get_task_instances(session=session)}
        tasks = {task_id: _state(tis[task_id].state) if task_id in tis else None for task_id in dag.task_ids}
        tries = {task_id: tis[task_id].try_number for task_id in dag.task_ids if task_id in tis}

        def returned(task_id: str):
            if tasks.get(task_id) != "success":
                return None
            return tis[task_id].xcom_pull(task_ids=task_id, session=session)

        return {
            "run_id": dag_run.run_id,
            "logical_date": dag_run.logical_date.isoformat() if dag_run.logical_date else None,
            "state": _state(dag_run.state),
            "tasks": tasks,
            "tries": tries,
            "summary": returned(SUMMARY_TASK),
            "export": returned(EXPORT_TASK),
        }


def run_once(dag, spec: dict, say) -> dict:
    """One DAG run through ``dag.test()``, under the lock of its logical date."""
    dated = spec.get("logical_date") is not None
    while True:
        # A range run takes the current time to the microsecond; should another run already
        # have that logical date, it takes the next moment rather than replace that run.
        logical_date = (
            dt.datetime.fromisoformat(spec["logical_date"]) if dated else dt.datetime.now(dt.timezone.utc)
        )
        path = lock_path(logical_date)
        with file_lock(path, say, f"the DAG run at {logical_date.isoformat()}"):
            if not dated and _dagrun_exists(logical_date):
                continue
            started = time.monotonic()
            print(f"\n=== {spec['label']}: dag.test(logical_date={logical_date.isoformat()}, "
                  f"run_conf={spec.get('conf')}) ===", flush=True)
            try:
                dag_run = dag.test(logical_date=logical_date, run_conf=spec.get("conf"))
                result = describe_run(dag, dag_run)
            except Exception as exc:  # recorded and reported as a failed run, never hidden
                import traceback

                traceback.print_exc()
                result = {"state": "error", "error": f"{type(exc).__name__}: {exc}", "tasks": {}}
            if not dated:
                # Lock files of one-off logical dates would only pile up. A process that opened
                # this file meanwhile finds the run in the database and takes another date.
                path.unlink(missing_ok=True)
        result.update(label=spec["label"], seconds=round(time.monotonic() - started, 2))
        return result


def run_succeeded(result: dict) -> bool:
    """The DAG run succeeded, every task of the DAG ran in it and succeeded, and it has a summary."""
    tasks = result.get("tasks") or {}
    return (
        result.get("state") == "success"
        and bool(tasks)
        and all(state == "success" for state in tasks.values())
        and result.get("summary") is not None
    )


def child_main(specs: list[dict], result_path: Path, log_path: Path, ready_fd: int | None = None) -> int:
    """Run ``specs`` in order, stopping at the first failed run; write what happened as JSON.

    ``ready_fd`` is the pipe on which the parent says that the local IHC server answers; the
    first DAG run waits for it, Airflow's start-up does not.
    """
    # Airflow's start-up (imports, the DAG, the execution API) allocates close to a million
    # objects that live as long as the process, and the collector's passes over them took about
    # a third of its CPU. It is off until they are built; they are then frozen (left out of
    # every later pass, which also makes the tasks' own collections cheaper) before any task
    # runs. What the start-up left as garbage (about 16 MB) stays until the process exits.
    gc.disable()
    started = time.monotonic()
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)

    def say(message: str) -> None:
        print(message, file=terminal, flush=True)
        print(message, flush=True)

    result: dict = {"runs": [], "error": None, "metadata_db": None}

    def save() -> None:
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(result_path)

    try:
        dag, bags = load_dag()
        result["task_ids"] = list(dag.task_ids)
        check_dated_runs(dag, specs)
        prepared = in_forked_process(lambda: prepare_metadata_db(say, bags), "preparing the metadata database")
        try:
            result["execution_api"] = warm_execution_api()
        finally:
            result["metadata_db"] = prepared()
        if ready_fd is not None:
            wait_for_parent(ready_fd)
        gc.freeze()
        gc.enable()
        # The start-up's wall time, and the CPU time this process spent on it: the two are
        # equal on a quiet machine, and the wall time is the larger when other work competes.
        result["startup"] = {"seconds": round(time.monotonic() - started, 2), "cpu_seconds": round(time.process_time(), 2)}
        for number, spec in enumerate(specs):
            ready = f" (Airflow started in {result['startup']['seconds']:.1f} s)" if number == 0 else ""
            say(f"--- {spec['label']}: running {len(dag.task_ids)} tasks{ready} ...")
            run = run_once(dag, spec, say)
            result["runs"].append(run)
            save()
            ok = run_succeeded(run)
            say(f"    {run.get('run_id', '?')}: {'success' if ok else 'FAILED'} in {run['seconds']:.1f} s")
            if not ok:
                break
    except RunnerError as exc:
        result["error"] = str(exc)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
    save()
    return 0


# --------------------------------------------------------------------------------------------
# The parent process: connections, the child, the report


def new_log_path(command: str) -> Path:
    """A log file of this invocation only."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = RUN_DIR / "logs" / f"{command}-{stamp}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_in_child(
    env: dict[str, str], specs: list[dict], log_path: Path, server_ready: Callable[[], None] | None = None
) -> dict:
    """Run the DAG runs ``specs`` in a child process and return what it found.

    With ``server_ready`` (the local IHC server is starting), the child starts at once and waits
    before its first DAG run until this process, meanwhile waiting for the server, says on a
    pipe that it answers, or why it does not.
    """
    result_path = log_path.with_suffix(".json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", "--specs", json.dumps(specs),
           "--result", str(result_path), "--log", str(log_path)]
    if server_ready is None:
        code = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    else:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen([*cmd, "--ready-fd", str(read_fd)], env=env, cwd=ROOT, pass_fds=(read_fd,))
        finally:
            os.close(read_fd)
        with os.fdopen(write_fd, "w") as pipe:
            try:
                server_ready()
                message = "ready"
            except RunnerError as exc:
                message = f"error {exc}"
            with contextlib.suppress(BrokenPipeError):  # the child stopped before its first run
                pipe.write(message + "\n")
                pipe.flush()
        code = proc.wait()
    if not result_path.exists():
        raise RunnerError(f"the runner's child process exited with code {code} without a result; see {log_path}")
    result = json.loads(result_path.read_text())
    result["exit_code"] = code
    return result


def _task_log_line(log_path: Path, run_id: str, task_id: str) -> int | None:
    """The line of the log where the last attempt of ``task_id`` in ``run_id`` started."""
    marker = f"<TaskInstance: {DAG_ID}.{task_id} {run_id} "
    found = None
    with open(log_path, errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if "[DAG TEST] running task" in line and marker in line:
                found = number
    return found


def _task_error(log_path: Path, line: int | None) -> str | None:
    """The last exception line logged for the task attempt starting at ``line``."""
    if line is None:
        return None
    with open(log_path, errors="replace") as handle:
        lines = handle.read().splitlines()[line:]
    end = next((i for i, text in enumerate(lines) if "[DAG TEST] end task" in text), len(lines))
    candidates = [t.strip() for t in lines[:end]
                  if (t.split(":", 1)[0].strip().endswith(("Error", "Exception")) or "Exception: " in t) and len(t) < 2000]
    return candidates[-1] if candidates else None


def failure_report(run: dict, log_path: Path) -> list[str]:
    """What went wrong in a run: each task that failed, with where its log is, and the tasks not run."""
    lines = [f"run {run.get('run_id', '?')} ({run['label']}): DAG run state {run.get('state')}"]
    if run.get("error"):
        lines.append(f"  the run raised {run['error']}")
    not_run: dict[str, list[str]] = {}
    for task_id, state in (run.get("tasks") or {}).items():
        if state == "success":
            continue
        line = _task_log_line(log_path, run.get("run_id", ""), task_id) if state is not None else None
        if line is None:
            not_run.setdefault(state or "no task instance", []).append(task_id)
            continue
        tries = run.get("tries", {}).get(task_id)
        lines.append(f"  task {task_id}: {state} after {tries} attempt(s); its log: {log_path}:{line}")
        error = _task_error(log_path, line)
        if error:
            lines.append(f"    {error}")
    for state, task_ids in not_run.items():
        lines.append(f"  not run ({state}): {', '.join(task_ids)}")
    tasks = run.get("tasks") or {}
    if run.get("state") == "success" and tasks and all(s == "success" for s in tasks.values()):
        lines.append(f"  task {SUMMARY_TASK} returned no summary")
    return lines


def _money(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _issues(summary: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((summary.get("issues_by_reason") or {}).items())) or "none"


def render_run(run: dict, demo: bool = False) -> list[str]:
    """The run's own summary: what ``check_run`` returned, and the files ``export_csv`` wrote."""
    s = run["summary"]
    lines = [
        f"run {run['run_id']}: conversions in [{s.get('range_start')}, {s.get('range_end')})",
        f"  conversions: {s.get('conversions')}, attributed: {s.get('attributed')}, issues: {_issues(s)}",
    ]
    if demo and s.get("issues_by_reason"):
        lines.append("  (the demo data holds a few bad rows on purpose: conversions without sessions, malformed "
                     "sessions; listed on the Issues page of the Attribution report)")
    if s.get("conversions") == 0:
        lines.append("  no conversions in this range")
    if s.get("note"):
        lines.append(f"  note: {s['note']}")
    lines += [
        f"  API requests: {s.get('requests')}, retries: {s.get('retries')}",
        f"  report over the range: cost {_money(s.get('cost'))}, attributed orders "
        f"{s.get('ihc', 0):.4f}, attributed revenue {_money(s.get('ihc_revenue'))}",
    ]
    warnings = ", ".join(f"{k} {v}" for k, v in sorted((s.get("source_warnings") or {}).items()) if v)
    lines.append(f"  source data warnings: {warnings or 'none'}")
    export = run.get("export") or {}
    if export.get("path"):
        lines.append(f"  CSV: {export['path']} ({export.get('rows')} rows)")
    return lines


def render_backfill(runs: list[dict]) -> list[str]:
    """One line per day from each run's own summary, and the totals of the counts."""
    lines = []
    for run in runs:
        s = run["summary"]
        line = (
            f"{run['label']}  {run['run_id']}: conversions {s.get('conversions')}, attributed "
            f"{s.get('attributed')}, issues {_issues(s)}, requests {s.get('requests')}, cost "
            f"{_money(s.get('cost'))}, attributed orders {s.get('ihc', 0):.4f}, revenue {_money(s.get('ihc_revenue'))}"
        )
        if s.get("conversions") == 0:
            line += " - no conversions in this range"
        lines.append(line)
        if s.get("note"):
            lines.append(f"    note: {s['note']}")
    total = sum(int(r["summary"].get("conversions") or 0) for r in runs)
    attributed = sum(int(r["summary"].get("attributed") or 0) for r in runs)
    lines.append(f"total over {len(runs)} days: conversions {total}, attributed {attributed}"
                 + (" - no conversions in this range" if total == 0 else ""))
    exports = [r["export"]["path"] for r in runs if r.get("export") and r["export"].get("path")]
    if exports:
        lines.append(f"CSVs: {len(exports)} files in {Path(exports[0]).parent}")
    return lines


def _dates(start: str, end: str) -> list[dt.date]:
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as exc:
        raise RunnerError(f"dates must be YYYY-MM-DD: {exc}") from None
    if last < first:
        raise RunnerError(f"END {end} is before START {start}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def plan(command: str, start: str, end: str) -> list[dict]:
    """The DAG runs of a command: one range run, or one scheduled-style run per day."""
    days = _dates(start, end)
    if command != "backfill":
        return [{"label": f"{start}..{end}", "logical_date": None, "conf": {"start_date": start, "end_date": end}}]
    # A scheduled-style run is driven by its data interval; dag.test() runs the interval that
    # ends at the logical date it is given, hence the day after.
    return [
        {"label": day.isoformat(), "conf": None,
         "logical_date": dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc).isoformat()}
        for day in days
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run over the demo range on the demo database and the local server")
    for name in ("run", "backfill"):
        p = sub.add_parser(name)
        p.add_argument("--start", required=True, help="first date, YYYY-MM-DD (inclusive)")
        p.add_argument("--end", required=True, help="last date, YYYY-MM-DD (inclusive)")
    child = sub.add_parser("_child", help=argparse.SUPPRESS)
    child.add_argument("--specs", required=True)
    child.add_argument("--result", required=True, type=Path)
    child.add_argument("--log", required=True, type=Path)
    child.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)

    if args.command == "_child":
        code = child_main(json.loads(args.specs), args.result, args.log, args.ready_fd)
        # Everything is committed and the result written. Airflow's exit handlers (the
        # in-process execution API among them) take about 2 s and have nothing left to save.
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        if args.command == "demo":
            from ihc_attribution_dev.demo_data import DemoConfig

            start, end = DemoConfig().start.isoformat(), DemoConfig().end.isoformat()
        else:
            start, end = args.start, args.end
        specs = plan(args.command, start, end)
        env = _env()
        log_path = new_log_path(args.command)
        print(f"log of this invocation: {log_path}", flush=True)
        started = time.monotonic()
        with connections(env) as (db_path, server_ready):
            if db_path is not None:
                print(f"database: {db_path}", flush=True)
            result = run_in_child(env, specs, log_path, server_ready)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    runs = result.get("runs", [])
    ok_runs = [r for r in runs if run_succeeded(r)]
    print(f"\nfinished in {time.monotonic() - started:.1f} s", flush=True)
    if ok_runs:
        print("\n=== attribution results (from each run's check_run) ===")
        demo = db_path is not None and db_path.resolve() == DEMO_DB.resolve()
        lines = render_backfill(ok_runs) if args.command == "backfill" else render_run(ok_runs[0], demo)
        print("\n".join(lines))
    problems: list[str] = []
    if result.get("exit_code"):
        problems.append(f"the runner's child process exited with code {result['exit_code']}")
    if result.get("error"):
        problems.append(result["error"])
    for run in runs:
        if not run_succeeded(run):
            problems += failure_report(run, log_path)
    not_run = [s["label"] for s in specs[len(runs):]]
    if not_run and runs:
        problems.append(f"not run after the failure: {', '.join(not_run)}")
    elif not_run:
        problems.append(f"no DAG run was made ({', '.join(not_run[:3])}{' ...' if len(not_run) > 3 else ''})")
    if problems:
        sys.stdout.flush()
        print("\nFAILED: " + "\n".join(problems), file=sys.stderr)
        print(f"log of this invocation: {log_path}", file=sys.stderr)
        return 1
    print(f"\nlog of this invocation: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
