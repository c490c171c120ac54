"""``make up`` / ``make down`` plumbing: process groups, PID files, secrets, the environment."""

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
SLEEPER = "import time; time.sleep(120)"
# A leader that starts a child of its own, as the scheduler starts executor workers.
FAMILY = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); " \
         "time.sleep(120)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


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


def test_down_stops_the_whole_process_group_and_waits(up):
    state: dict = {}
    pid = up.start_process("scheduler", [sys.executable, "-c", FAMILY, "airflow"], dict(os.environ), state)
    _wait_for(lambda: len(up.group_members(pid)) == 2)
    assert up.pid_file("scheduler").read_text().strip() == str(pid)
    assert up.recorded_pid("scheduler", up.load_state()) == pid

    assert up.stop_groups({"scheduler": pid}, timeout=10) == []
    assert up.group_members(pid) == []  # leader and child, gone when it returns


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(up):
    pid = up.start_process("api-server", [sys.executable, "-c", STUBBORN], dict(os.environ), {})
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    assert up.stop_groups({"api-server": pid}, timeout=1) == ["api-server"]
    assert up.group_members(pid) == []
    assert time.monotonic() - started < 10


def test_zombies_do_not_count_as_running(up):
    pid = up.start_process("triggerer", [sys.executable, "-c", "pass", "airflow"], dict(os.environ), {})
    time.sleep(1.0)  # exited; nobody has reaped it yet
    assert up.group_members(pid) == []
    assert up.recorded_pid("triggerer", up.load_state()) is None


def test_a_recorded_pid_must_still_be_the_same_program(up):
    state: dict = {}
    pid = up.start_process("ihc-server", [sys.executable, "-c", SLEEPER, "ihc_attribution_dev.server"], dict(os.environ), state)
    assert up.recorded_pid("ihc-server", up.load_state()) == pid
    assert up.running(up.load_state()) == {"ihc-server": pid}

    # Another start time: the PID was reused by a different process.
    other = json.loads(up.STATE_FILE.read_text())
    other["components"]["ihc-server"]["start_ticks"] += 1
    assert up.recorded_pid("ihc-server", other) is None
    # Another program under a PID file of ours (this test's own process).
    up.pid_file("ihc-server").write_text(f"{os.getpid()}\n")
    assert up.recorded_pid("ihc-server", {}) is None
    up.stop_groups({"ihc-server": pid}, timeout=5)


def test_down_with_nothing_running_is_fine(up, capsys):
    assert up.main(["down"]) == 0
    assert "not running" in capsys.readouterr().out


def test_down_removes_pid_files_of_what_it_stopped(up):
    pid = up.start_process("ihc-server", [sys.executable, "-c", SLEEPER, "ihc_attribution_dev.server"], dict(os.environ), {})
    assert up.main(["down", "--timeout", "5"]) == 0
    assert up.group_members(pid) == []
    assert not up.pid_file("ihc-server").exists()


def test_secret_files_are_private_whatever_the_umask(up):
    old = os.umask(0)
    try:
        path = up.RUN_DIR / "secrets.json"
        up._write_private(path, "{}")
        up._write_private(path, '{"again": 1}')  # rewriting keeps it private
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"again": 1}


def test_every_process_gets_the_connections_and_settings(up):
    keys = up.new_secrets()
    state = {
        "api_port": 8080, "ihc_port": 8765, "ihc_managed": True, "metadata_db": "sqlite:////tmp/x.db",
        "attribution_db_conn": json.dumps({"conn_type": "sqlite", "host": "/data/demo.db"}),
    }
    env = up.stack_env(state, keys)
    ihc = json.loads(env["AIRFLOW_CONN_IHC_API"])
    assert ihc["password"] == keys["ihc_api_key"] and ihc["port"] == 8765 and ihc["conn_type"] == "ihc"
    assert json.loads(env["AIRFLOW_CONN_ATTRIBUTION_DB"])["host"] == "/data/demo.db"
    assert "IHC_API_KEYS" not in env  # only the IHC server itself gets the key that way
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:8080/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == keys["jwt_secret"] and len(keys["jwt_secret"]) >= 64
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(up.PASSWORDS_FILE)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "sqlite:////tmp/x.db"

    state["ihc_managed"] = False  # AIRFLOW_CONN_IHC_API given by the user: left alone
    assert up.stack_env(state, keys).get("AIRFLOW_CONN_IHC_API") == os.environ.get("AIRFLOW_CONN_IHC_API")


def test_sqlite_metadata_database_on_request(up):
    url = up.choose_metadata_db("sqlite")
    assert url.startswith("sqlite:////") and url.endswith("airflow-local.db")
    assert up.choose_metadata_db("postgresql+psycopg2://u@db:5432/x") == "postgresql+psycopg2://u@db:5432/x"


def test_database_urls_are_shown_without_password(up):
    assert up.display_url("postgresql+psycopg2://u:s3cret@h:5432/d") == "postgresql+psycopg2://u:***@h:5432/d"
