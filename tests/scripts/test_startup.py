"""The local runner's start-up (``scripts/local_run.py``): the metadata database, the DAG, the
local IHC server, and Airflow reached through its public API only.

Checks that need a metadata database of their own run in a fresh Python process, as Airflow
reads its settings once per process."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.scripts.test_local_run import ROOT, SCRIPT, counts, log_of, range_summary, runner_env

sys.path.insert(0, str(SCRIPT.parent))
import local_env  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.slow  # make test-slow; CI runs both

PROBE_TIMEOUT = 180


def probe(code: str, airflow_home: Path | str, **env: str) -> dict:
    """Run ``code`` (which sets ``out``) in a new interpreter with ``scripts/`` importable; return ``out``."""
    script = "import json, sys\nsys.path.insert(0, {!r})\nimport local_run\nout = {{}}\n{}\n" \
             "print('PROBE ' + json.dumps(out, default=str))\n"
    environment = dict(os.environ, AIRFLOW_HOME=str(airflow_home), PYTHONPATH=str(ROOT), **env)
    done = subprocess.run([sys.executable, "-c", script.format(str(SCRIPT.parent), textwrap.dedent(code))],
                          env=environment, cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1].removeprefix("PROBE "))


def test_the_runner_uses_airflow_s_public_api_only():
    tree = ast.parse(SCRIPT.read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("airflow", "cadwyn"):
            parts = node.module.split(".") + [alias.name for alias in node.names]
            private += [node.module] if any(part.startswith("_") for part in parts) else []
        elif isinstance(node, ast.Import):
            private += [a.name for a in node.names if a.name.startswith(("airflow.", "cadwyn")) and "._" in a.name]
    assert private == []
    assert "gc" not in {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_a_new_metadata_database_is_migrated_once_and_the_dag_written_to_it(tmp_path):
    out = probe("""
        dag, out["first"] = local_run.prepare(print, [])
        out["dag_id"], out["tasks"] = dag.dag_id, len(dag.task_ids)
        out["again"] = local_run.prepare(print, [])[1]
        from airflow.models.dag import DagModel

        out["recorded"] = DagModel.get_current("ihc_attribution") is not None
    """, tmp_path / "airflow", ATTRIBUTION_RUN_DIR=str(tmp_path / "run"))
    assert out == {"first": True, "again": False, "dag_id": "ihc_attribution", "tasks": 8, "recorded": True}


def test_a_missing_dag_is_reported_with_the_folder_and_the_import_errors(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "broken.py").write_text("from airflow.sdk import dag\nraise RuntimeError('broken on purpose')\n")
    out = probe("""
        try:
            local_run.prepare(print, [])
        except local_run.RunnerError as exc:
            out["error"] = str(exc)
    """, tmp_path / "airflow", AIRFLOW__CORE__DAGS_FOLDER=str(dags), ATTRIBUTION_RUN_DIR=str(tmp_path / "run"))
    assert f"DAG ihc_attribution not found in {dags}" in out["error"]
    assert "broken on purpose" in out["error"]


@pytest.fixture
def runner_db(tmp_path, source_db) -> Path:
    db = tmp_path / "challenge.db"
    shutil.copy(source_db, db)
    return db


def test_without_an_ihc_connection_the_local_server_is_started(tmp_path, runner_db, airflow_db):
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
    assert result["startup"]["seconds"] > 0 and len(result["runs"]) == 1


def test_a_local_server_that_does_not_start_is_reported_with_its_log(tmp_path):
    log_path = tmp_path / "ihc-server.log"
    with pytest.raises(local_env.RunnerError, match="the local IHC server did not start; see .*ihc-server.log"):
        with local_env.ihc_server_process(dict(os.environ, PYTHONPATH=str(ROOT)), log_path, "--no-such-option"):
            pass
    assert "no-such-option" in log_path.read_text()
