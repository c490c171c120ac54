"""The local runner's start-up (``scripts/local_run.py``): what it does before the first task.

Each check that forks, builds Airflow's execution API or needs its own metadata database runs
in a fresh Python process, so that it sees the process the runner's child is, whatever this
test session has built or started before."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.scripts.test_local_run import FIRST, LAST, ROOT, SCRIPT, counts, log_of, range_summary, runner_env

sys.path.insert(0, str(SCRIPT.parent))
import local_run  # noqa: E402  (scripts/ is not a package)

PROBE_TIMEOUT = 180


def probe(code: str, airflow_home: Path | str, **env: str) -> dict:
    """Run ``code`` (which sets ``out``) in a new interpreter with ``scripts/`` importable; return ``out``."""
    # The collector is off, as in the runner's child during its start-up (and twice as fast).
    script = "import gc, json, os, sys\ngc.disable()\nsys.path.insert(0, {!r})\nimport local_run\nout = {{}}\n{}\n" \
             "print('PROBE ' + json.dumps(out, default=str))\nsys.stdout.flush()\nos._exit(0)\n"
    environment = dict(os.environ, AIRFLOW_HOME=str(airflow_home), PYTHONPATH=str(ROOT), **env)
    done = subprocess.run([sys.executable, "-c", script.format(str(SCRIPT.parent), textwrap.dedent(code))],
                          env=environment, cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1].removeprefix("PROBE "))


def test_the_metadata_check_answers_at_once_and_the_fallback_gives_the_same_answers(tmp_path):
    # Airflow's public check sleeps a second before it reports a database that is behind: the
    # runner's own must not (time.sleep fails here), and must agree with it before and after
    # the migration; without the private helper it falls back to the public check.
    out = probe("""
        import time

        real_sleep = time.sleep
        def no_sleep(seconds):
            raise AssertionError("slept")
        time.sleep = no_sleep
        out["fresh"] = local_run.metadata_db_is_current()
        time.sleep = real_sleep
        out["migrated"] = local_run.ensure_metadata_db(print)["migrated"]
        time.sleep = no_sleep
        out["after"] = local_run.metadata_db_is_current()
        out["again"] = local_run.ensure_metadata_db(print)["migrated"]
        local_run._alembic_environment = lambda: None
        out["fallback_after"] = local_run.metadata_db_is_current()
    """, tmp_path / "airflow", ATTRIBUTION_RUN_DIR=str(tmp_path / "run"))
    assert out == {"fresh": False, "migrated": True, "after": True, "again": False, "fallback_after": True}

    behind = probe("""
        local_run._alembic_environment = lambda: None
        out["fallback_fresh"] = local_run.metadata_db_is_current()
    """, tmp_path / "another-airflow")
    assert behind == {"fallback_fresh": False}


def test_the_dag_is_parsed_without_the_metadata_database(tmp_path):
    # The start-up parses the DAG before the metadata database exists (it is prepared
    # meanwhile): parsing must not query it.
    home = tmp_path / "airflow"
    out = probe("""
        dag, bags = local_run.load_dag()
        out["dag_id"] = dag.dag_id
        out["bundles"] = [bundle.name for bundle, _ in bags]
        out["tasks"] = len(dag.task_ids)
    """, home)
    assert out == {"dag_id": "ihc_attribution", "bundles": ["dags-folder"], "tasks": 8}
    assert not (home / "airflow.db").exists() or (home / "airflow.db").stat().st_size == 0


def test_a_missing_dag_is_reported_with_the_folder_and_the_import_errors(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "broken.py").write_text("from airflow.sdk import dag\nraise RuntimeError('broken on purpose')\n")
    out = probe("""
        try:
            local_run.load_dag()
        except local_run.RunnerError as exc:
            out["error"] = str(exc)
    """, tmp_path / "airflow", AIRFLOW__CORE__DAGS_FOLDER=str(dags))
    assert f"DAG ihc_attribution not found in {dags}" in out["error"]
    assert "broken on purpose" in out["error"]


def test_the_warmed_execution_api_is_the_one_dag_test_uses(tmp_path):
    # The warm-up relies on dag.test() taking its in-process execution API from the cached
    # in_process_api_server(); should an Airflow upgrade change that, the warm-up would build
    # an API nobody uses (the runs stay correct, the start-up gets slower): this fails first.
    out = probe("""
        out["warm"] = local_run.warm_execution_api()
        from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor, in_process_api_server

        out["same_transport"] = InProcessTestSupervisor._api_client()._transport is in_process_api_server().transport
    """, tmp_path / "airflow")
    assert out["warm"]["warmed"] is True, out
    assert out["same_transport"] is True


def test_the_warmed_api_serves_the_client_s_version_and_fewer_others(tmp_path):
    # Its routes for the client's version are those of the API built with every version.
    out = probe("""
        from airflow.api_fastapi.execution_api import versions
        from airflow.sdk.api.datamodels._generated import API_VERSION

        def routes(app):
            return sorted((r.path, sorted(r.methods or ()), r.name) for r in app.router.versioned_routers[API_VERSION].routes)

        full = versions.bundle
        out["all"] = len(full.versions)
        out["warm"] = local_run.warm_execution_api()
        from airflow.sdk.execution_time.supervisor import in_process_api_server

        trimmed = in_process_api_server().app
        out["served"] = list(versions.bundle.version_values)
        out["client"] = API_VERSION
        out["trimmed_routes"] = routes(trimmed)
        versions.bundle = full
        for version in full.versions:
            for change in version.changes:
                change._bound_version_bundle = full
        from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
        import httpx
        api = InProcessExecutionAPI()
        httpx.Client(transport=api.transport, base_url="http://in-process.invalid./").get("/health")
        out["full_routes"] = routes(api.app)
    """, tmp_path / "airflow")
    assert out["warm"]["warmed"] is True and out["warm"]["versions"] == len(out["served"]), out["warm"]
    assert out["client"] in out["served"] and len(out["served"]) < out["all"]
    assert out["trimmed_routes"] and out["trimmed_routes"] == out["full_routes"]


def test_a_trimmed_api_that_fails_is_built_again_with_every_version(tmp_path):
    out = probe("""
        from airflow.api_fastapi.execution_api import versions
        from airflow.sdk.api.datamodels._generated import API_VERSION
        from cadwyn import HeadVersion, Version, VersionBundle

        full = versions.bundle
        out["all"] = len(full.versions)

        def too_few():  # the route only older versions have is then never given back
            versions.bundle = VersionBundle(HeadVersion(), Version(API_VERSION))
            def restore():
                versions.bundle = full
            return restore
        local_run.serve_only_the_client_s_api_versions = too_few
        out["warm"] = local_run.warm_execution_api()
        from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor, in_process_api_server

        out["served"] = len(versions.bundle.versions)
        out["same_transport"] = InProcessTestSupervisor._api_client()._transport is in_process_api_server().transport
    """, tmp_path / "airflow")
    assert out["warm"]["warmed"] is True, out["warm"]
    assert "RouterGenerationError" in out["warm"]["all_versions_because"]
    assert out["served"] == out["all"] and out["same_transport"] is True


def test_a_failing_warm_up_is_reported_and_skipped(tmp_path):
    out = probe("""
        from airflow.sdk.execution_time import supervisor

        def broken():
            raise RuntimeError("no API here")
        supervisor.in_process_api_server = broken
        out["warm"] = local_run.warm_execution_api()
    """, tmp_path / "airflow")
    assert out["warm"]["warmed"] is False
    assert out["warm"]["error"] == "RuntimeError: no API here"


def test_the_forked_preparation_returns_its_value_or_its_error(tmp_path):
    out = probe("""
        import threading, time

        parent = os.getpid()
        out["value"] = local_run.in_forked_process(lambda: {"pid": os.getpid()}, "a probe")()
        out["forked"] = out["value"]["pid"] != parent

        def refuse():
            raise local_run.RunnerError("refused in the copy")
        try:
            local_run.in_forked_process(refuse, "a refusal")()
        except local_run.RunnerError as exc:
            out["runner_error"] = str(exc)

        def crash():
            raise ValueError("crashed in the copy")
        try:
            local_run.in_forked_process(crash, "the probe")()
        except RuntimeError as exc:
            out["error"] = str(exc)

        # with another thread running there is no fork: the function runs in this process
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        out["in_process"] = local_run.in_forked_process(lambda: {"pid": os.getpid()}, "a probe")()["pid"] == parent
        stop.set()
    """, tmp_path / "airflow")
    assert out["forked"] is True
    assert out["runner_error"] == "refused in the copy"
    assert out["error"] == "the probe failed: ValueError: crashed in the copy"
    assert out["in_process"] is True


@pytest.fixture
def runner_db(tmp_path, source_db) -> Path:
    db = tmp_path / "challenge.db"
    shutil.copy(source_db, db)
    return db


def test_the_local_ihc_server_starts_alongside_airflow(tmp_path, runner_db, airflow_db):
    # Without AIRFLOW_CONN_IHC_API the runner starts the local server and, at the same time,
    # the child, which waits for the server only before its first DAG run.
    env = runner_env(tmp_path, runner_db, "unused", airflow_db)
    del env["AIRFLOW_CONN_IHC_API"]
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--start", "2023-09-02", "--end", "2023-09-02"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "local IHC server (development double) on port" in done.stdout
    assert (tmp_path / "run" / "ihc-server.log").exists()  # in ATTRIBUTION_RUN_DIR
    summary = range_summary(done.stdout)
    conversions, attributed, _ = counts(runner_db, "2023-09-02", "2023-09-02")
    assert (summary["conversions"], summary["attributed"]) == (conversions, attributed) and attributed > 0
    result = json.loads(log_of(done.stdout).with_suffix(".json").read_text())
    assert result["execution_api"]["warmed"] is True and result["startup"]["seconds"] > 0


def test_a_local_server_that_never_answers_fails_the_command_before_any_run(tmp_path, runner_db, airflow_db,
                                                                            ihc_conn, monkeypatch):
    env = runner_env(tmp_path, runner_db, ihc_conn, airflow_db)
    monkeypatch.setattr(local_run, "RUN_DIR", tmp_path / "run")
    log_path = local_run.new_log_path("run")

    def never():
        raise local_run.RunnerError("the local IHC server did not start; see its log")

    result = local_run.run_in_child(env, local_run.plan("run", FIRST, LAST), log_path, server_ready=never)
    assert result["error"] == "the local IHC server did not start; see its log"
    assert result["runs"] == [] and result["exit_code"] == 0
    with sqlite3.connect(runner_db) as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'attribution_runs'").fetchall()

