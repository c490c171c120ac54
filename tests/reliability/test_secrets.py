"""The API key never leaves the connection: not in task logs, XCom, exceptions, the CSV or any table.

The whole DAG runs through ``dag.test()`` with env connections and a recognisable key, once
successfully and once with a wrong key (a 403 failure); then every place a key could leak to is
searched byte for byte. A key pasted with a trailing newline, or broken by one, is checked the
same way, in every form it could take (as pasted, stripped, escaped, URL-encoded). Each search
also looks for something that must be there, so that an empty place cannot pass for a clean one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import traceback
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from ihc_attribution.errors import PermanentFailure

from ihc_attribution import tasks
from ihc_attribution.ihc.errors import IhcConfigurationError
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.helpers import random_db
from tests.reliability.support import STAGES, connection_env, context, run_stages

ROOT = Path(__file__).resolve().parents[2]
REAL_KEY = "sk-REL-5ecret-9d41f7"
WRONG_KEY = "sk-REL-wrong-0c62e3"
CONF = {"start_date": "2024-01-01", "end_date": "2024-01-10"}


@pytest.fixture
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution")


@pytest.fixture
def world(tmp_path, monkeypatch):
    db = random_db(tmp_path / "challenge.db", seed=8, users=40)
    with serve(ServerConfig(api_keys=(REAL_KEY,))) as url:

        def use_key(key: str) -> None:
            for name, value in connection_env(db, url, tmp_path / "out", api_key=key).items():
                monkeypatch.setenv(name, value)

        yield {"db": db, "out": tmp_path / "out", "use_key": use_key}


def _files_bytes(paths) -> bytes:
    return b"".join(p.read_bytes() for p in paths if p.is_file())


def _sqlite_bytes(path: Path) -> bytes:
    """The database file with its WAL: every page, committed or not yet checkpointed."""
    return _files_bytes([path, Path(f"{path}-wal")])


def _assert_absent(where: str, haystack: str | bytes, *keys: str) -> None:
    for key in keys:
        needle = key.encode() if isinstance(haystack, bytes) else key
        assert needle not in haystack, f"the API key leaked into {where}"


def _xcom_values(run_id: str) -> list[str]:
    home = Path(os.environ["AIRFLOW_HOME"])
    with sqlite3.connect(home / "airflow.db") as conn:
        return [str(v) for (v,) in conn.execute("SELECT value FROM xcom WHERE run_id = ?", (run_id,))]


def _assert_metadata_db_and_task_log_files_clean(*keys: str) -> None:
    home = Path(os.environ["AIRFLOW_HOME"])
    _assert_absent("the Airflow metadata database", _sqlite_bytes(home / "airflow.db"), *keys)
    _assert_absent("task log files", _files_bytes((home / "logs").rglob("*")), *keys)


def test_key_stays_out_of_logs_xcom_csv_and_tables_of_a_run(dag, world, capfd, caplog):
    world["use_key"](REAL_KEY)
    with caplog.at_level(logging.INFO):
        dagrun = dag.test(run_conf=CONF)
    assert dagrun.state == "success"

    xcom = _xcom_values(dagrun.run_id)
    assert any('"attributed"' in v for v in xcom), "the run's XCom was found"
    _assert_absent("XCom", "\n".join(xcom), REAL_KEY)
    _assert_metadata_db_and_task_log_files_clean(REAL_KEY)

    output = capfd.readouterr()
    assert "Pushing xcom" in output.out and "IHC API stage done" in caplog.text, "the task logs were captured"
    _assert_absent("task logs", output.out + output.err + caplog.text, REAL_KEY)

    csvs = list(world["out"].glob("*.csv"))
    assert csvs
    _assert_absent("the CSV", _files_bytes(csvs), REAL_KEY)
    with sqlite3.connect(world["db"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_stg_results").fetchone()[0] > 0
    _assert_absent("the pipeline database (staging included)", _sqlite_bytes(world["db"]), REAL_KEY)


def test_wrong_key_fails_without_revealing_either_key(dag, world, capfd, caplog, monkeypatch):
    world["use_key"](WRONG_KEY)
    with caplog.at_level(logging.INFO):
        dagrun = dag.test(run_conf=CONF)
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "failed" and states["call_ihc_api"] == "failed", states

    output = capfd.readouterr()
    logs = output.out + output.err + caplog.text
    assert "failed with HTTP 403: the API key is missing or wrong" in logs, "the failure is in the task logs"
    _assert_absent("task logs of the failed run", logs, REAL_KEY, WRONG_KEY)
    _assert_absent("XCom", "\n".join(_xcom_values(dagrun.run_id)), REAL_KEY, WRONG_KEY)
    _assert_metadata_db_and_task_log_files_clean(REAL_KEY, WRONG_KEY)
    with sqlite3.connect(world["db"]) as conn:
        recorded = [e for (e,) in conn.execute("SELECT error FROM attribution_stg_requests WHERE error IS NOT NULL")]
    assert recorded and all("HTTP 403" in e for e in recorded), "the refused requests are recorded"
    _assert_absent("the pipeline database (staging included)", _sqlite_bytes(world["db"]), REAL_KEY, WRONG_KEY)

    # The exception itself, as a caller of the task body gets it, with its whole chain.
    ctx = context("direct", CONF["start_date"], CONF["end_date"])
    run_stages(ctx, STAGES[:3])
    with pytest.raises(PermanentFailure) as raised:
        tasks.call_ihc_api(ctx)
    cause = raised.value.__cause__
    assert isinstance(cause, IhcConfigurationError)
    text = "".join(traceback.format_exception(raised.value))
    for exc in (raised.value, cause):
        text += repr(exc) + repr(vars(exc)) + repr(exc.args)
    assert "HTTP 403" in text
    _assert_absent("the exception", text, REAL_KEY, WRONG_KEY)


def _key_forms(key: str) -> list[str]:
    """The key as pasted, stripped, escaped and URL-encoded: none of them may appear anywhere."""
    return [key, key.strip(), repr(key)[1:-1], quote(key, safe=""), quote_plus(key)]


def test_a_pasted_key_with_a_trailing_newline_never_appears_in_any_form(world, capfd, caplog):
    pasted = REAL_KEY + "\n"
    world["use_key"](pasted)
    ctx = context("newline", CONF["start_date"], CONF["end_date"])
    with caplog.at_level(logging.DEBUG):
        xcom = run_stages(ctx)
    assert xcom["check_run"]["attributed"] > 0, "the stripped key was accepted"
    output = capfd.readouterr()
    logs = output.out + output.err + caplog.text
    assert "IHC API stage done" in logs, "the task logs were captured"
    _assert_absent("task logs", logs, *_key_forms(pasted))
    _assert_absent("XCom", repr(xcom), *_key_forms(pasted))
    _assert_absent("the pipeline database (staging included)", _sqlite_bytes(world["db"]), *_key_forms(pasted))


def test_a_key_with_inner_whitespace_fails_clearly_without_revealing_it(world, capfd, caplog):
    broken = "sk-REL-5ecret\n-9d41f7"
    world["use_key"](broken)
    ctx = context("inner", CONF["start_date"], CONF["end_date"])
    run_stages(ctx, STAGES[:1])
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentFailure, match="whitespace or control") as raised:
        run_stages(ctx, ("extract_journeys",))
    text = "".join(traceback.format_exception(raised.value)) + repr(vars(raised.value.__cause__))
    output = capfd.readouterr()
    for where, haystack in (("the exception", text), ("task logs", output.out + output.err + caplog.text)):
        _assert_absent(where, haystack, *_key_forms(broken), "5ecret", "9d41f7")
