"""``make up`` / ``make status`` / ``make down``: process groups, PID files, secrets, the environment."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import process_groups as pg  # noqa: E402  (scripts/ is not a package)

SLEEPER = "import time; time.sleep(120)"
# A leader that starts a child of its own, as the scheduler starts executor workers.
FAMILY = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); " \
         "time.sleep(120)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
KEYS = {"ihc_api_key": "k" * 32, "jwt_secret": "j" * 86, "api_secret_key": "s" * 86, "admin_password": "p" * 16}


def _load():
    if "airflow_up" not in sys.modules:
        spec = importlib.util.spec_from_file_location("airflow_up", ROOT / "scripts" / "airflow_up.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["airflow_up"] = module
        spec.loader.exec_module(module)
    return sys.modules["airflow_up"]


@pytest.fixture
def up(tmp_path, monkeypatch):
    """The module, with its state folder in a temporary directory."""
    module = _load()
    run_dir = tmp_path / "run"
    monkeypatch.setattr(module, "RUN_DIR", run_dir)
    monkeypatch.setattr(module, "STATE_FILE", run_dir / "state.json")
    monkeypatch.setattr(module, "SECRETS_FILE", run_dir / "secrets.json")
    monkeypatch.setattr(module, "PASSWORDS_FILE", run_dir / "passwords.json")
    started: list[int] = []
    real_start = module.start_process

    def start(name, argv, env, state):
        pid = real_start(name, argv, env, state)
        started.append(pid)
        return pid

    monkeypatch.setattr(module, "start_process", start)
    yield module
    for pgid in started:  # whatever a failing test left behind
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_down_stops_the_whole_process_group_waits_and_forgets_it(up, capsys):
    state: dict = {}
    pid = up.start_process("scheduler", [sys.executable, "-c", FAMILY, "airflow"], dict(os.environ), state)
    _wait_for(lambda: len(pg.group_members(pid)) == 2)
    assert up.load_state()["components"]["scheduler"]["pid"] == pid
    assert up.running(up.load_state()) == {"scheduler": pid}

    assert up.main(["down", "--timeout", "10"]) == 0
    assert pg.group_members(pid) == []  # leader and child, gone when it returns
    assert up.load_state()["components"] == {}
    assert "stopped scheduler" in capsys.readouterr().out
    assert up.main(["down"]) == 0
    assert "not running" in capsys.readouterr().out


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(up, capsys):
    pid = up.start_process("api-server", [sys.executable, "-c", STUBBORN, "airflow"], dict(os.environ), {})
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    assert up.main(["down", "--timeout", "1"]) == 0
    assert pg.group_members(pid) == []
    assert time.monotonic() - started < 10
    assert "api-server did not stop within 1 s; killing it" in capsys.readouterr().out


def test_zombies_do_not_count_as_running(up):
    pid = up.start_process("triggerer", [sys.executable, "-c", "pass", "airflow"], dict(os.environ), {})
    time.sleep(1.0)  # exited; nobody has reaped it yet
    assert pg.group_members(pid) == []
    assert up.running(up.load_state()) == {}


def test_a_recorded_pid_must_still_be_the_same_program(up):
    pid = up.start_process("ihc-server", [sys.executable, "-c", SLEEPER, "ihc_attribution_dev.server"], dict(os.environ), {})
    # The command line is read once the new program has replaced the fork (an instant after Popen returns).
    _wait_for(lambda: up.running(up.load_state()) == {"ihc-server": pid})

    # Another start time: the PID was reused by a different process.
    other = up.load_state()
    other["components"]["ihc-server"]["started"] += 1
    assert up.running(other) == {}
    # Another program under a PID of ours (this test's own process).
    assert up.running({"components": {"ihc-server": {"pid": os.getpid(), "started": None}}}) == {}
    up.stop_groups({"ihc-server": pid}, timeout=5)


def test_status_names_what_runs_and_what_is_missing(up, capsys):
    assert up.main(["status"]) == 0
    assert "not running" in capsys.readouterr().out

    up.save_state({"api_port": 8080, "ihc_managed": True, "executor": "local"})
    pid = up.start_process("ihc-server", [sys.executable, "-c", SLEEPER, "ihc_attribution_dev.server"],
                           dict(os.environ), up.load_state())
    _wait_for(lambda: up.running(up.load_state()) == {"ihc-server": pid})
    assert up.main(["status"]) == 1
    out = capsys.readouterr().out
    assert f"ihc-server     running, pid {pid}" in out
    assert "scheduler      NOT RUNNING" in out and "http://localhost:8080" in out
    up.stop_groups({"ihc-server": pid}, timeout=5)


def test_secret_files_are_private_whatever_the_umask(up):
    old = os.umask(0)
    try:
        path = up.RUN_DIR / "secrets.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")  # a file of another mode already there
        path.chmod(0o644)
        pg.write_private(path, '{"again": 1}')
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"again": 1}


def test_every_process_gets_the_connections_and_settings(up):
    state = {
        "api_port": 8080, "ihc_port": 8765, "ihc_managed": True, "metadata_db": "sqlite:////tmp/x.db",
        "attribution_db_conn": json.dumps({"conn_type": "sqlite", "host": "/data/demo.db"}),
    }
    env = up.stack_env(state, KEYS)
    ihc = json.loads(env["AIRFLOW_CONN_IHC_API"])
    assert ihc["password"] == KEYS["ihc_api_key"] and ihc["port"] == 8765 and ihc["conn_type"] == "ihc"
    assert json.loads(env["AIRFLOW_CONN_ATTRIBUTION_DB"])["host"] == "/data/demo.db"
    assert "IHC_API_KEYS" not in env  # only the IHC server itself gets the key that way
    argv, server_env = up.component("ihc-server", state, env, KEYS)
    assert server_env["IHC_API_KEYS"] == KEYS["ihc_api_key"] and "AIRFLOW_CONN_IHC_API" not in server_env
    assert argv[argv.index("--port") + 1] == "8765"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:8080/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == KEYS["jwt_secret"]
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(up.PASSWORDS_FILE)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "sqlite:////tmp/x.db"

    state["ihc_managed"] = False  # AIRFLOW_CONN_IHC_API given by the user: left alone
    assert up.stack_env(state, KEYS).get("AIRFLOW_CONN_IHC_API") == os.environ.get("AIRFLOW_CONN_IHC_API")


def test_celery_workers_have_names_and_log_ports_of_their_own(up):
    state = {"api_port": 8080, "ihc_port": 8765, "ihc_managed": True, "metadata_db": "postgresql://u@h/m",
             "attribution_db_conn": "{}", "executor": "celery", "workers": 2,
             "worker_log_port": 9000, "broker_url": "redis://127.0.0.1:6379/5"}
    env = up.stack_env(state, KEYS)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://u@h/m"
    assert up.wanted(state) == ["ihc-server", "dag-processor", "scheduler", "celery-worker-1", "celery-worker-2", "api-server"]
    workers = [up.component(f"celery-worker-{i}", state, env, KEYS) for i in (1, 2)]
    assert [argv[argv.index("--celery-hostname") + 1] for argv, _ in workers] == ["worker1@%h", "worker2@%h"]
    assert [env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] for _, env in workers] == ["9000", "9001"]


def test_sqlite_metadata_database_on_request(up):
    url = up.choose_metadata_db("sqlite")
    assert url.startswith("sqlite:////") and url.endswith("airflow-local.db")
    assert up.choose_metadata_db("postgresql+psycopg2://u@db:5432/x") == "postgresql+psycopg2://u@db:5432/x"


def test_the_login_is_printed_but_no_database_password(up, capsys):
    up.print_login({"api_port": 8081, "metadata_db": "postgresql+psycopg2://u:s3cret@h:5432/d"}, KEYS)
    out = capsys.readouterr().out
    assert "Airflow is running: http://localhost:8081" in out and f"admin / {KEYS['admin_password']}" in out
    assert "http://localhost:8081/plugin/attribution-report" in out
    assert "postgresql+psycopg2://u:***@h:5432/d" in out and "s3cret" not in out
