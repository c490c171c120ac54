"""A 3-day backfill through the scheduler on two Celery workers, with a PostgreSQL warehouse.

Opt-in (``make e2e-celery``; about 2 minutes): starts ``scripts/airflow_up.py up --executor
celery --workers 2 --warehouse postgres`` on ports, databases and a Redis database of its own,
queues a backfill over 2024-01-01..03, waits for its runs, and checks that

- the runs' tasks were executed by both workers (their logs name every task they ran),
- the warehouse's ``attribution_customer_journey`` and ``channel_reporting`` are those of one
  range run over the same days on the same data (the pipeline's convergence guarantee, run here
  in-process on a SQLite copy of the demo data),
- ``make down`` stops every process it started, the workers included.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not os.environ.get("RUN_E2E_CELERY"), reason="opt-in: make e2e-celery")
psycopg2 = pytest.importorskip("psycopg2")

META_DB = "ihc_attribution_e2e_celery_meta"
WAREHOUSE_DB = "ihc_attribution_e2e_celery_warehouse"
PORT, IHC_PORT, LOG_PORT = 18481, 18482, 18483
BROKER = "redis://127.0.0.1:6379/9"
DAYS = ("2024-01-01", "2024-01-03")
UP = [sys.executable, str(ROOT / "scripts" / "airflow_up.py")]
# The line a Celery worker logs for each task it runs.
WORKLOAD = re.compile(r"Executing workload in Celery:.*?task_id='([^']+)'.*?run_id='(backfill__[^']+)'")


def _admin():
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


def _drop(*names):
    admin = _admin()
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def _redis_ok() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(BROKER, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        _admin().close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    if not _redis_ok():
        pytest.skip("no Redis at 127.0.0.1:6379")
    home = tmp_path_factory.mktemp("celery-airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ATTRIBUTION"))}
    env.update(AIRFLOW_HOME=str(home), ATTRIBUTION_OUTPUT_DIR=str(home / "output"))
    _drop(META_DB, WAREHOUSE_DB)
    up = subprocess.run(
        [*UP, "up", "--executor", "celery", "--workers", "2", "--warehouse", "postgres",
         "--warehouse-db", WAREHOUSE_DB, "--metadata-db", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{META_DB}",
         "--broker-url", BROKER, "--port", str(PORT), "--ihc-port", str(IHC_PORT), "--worker-log-port", str(LOG_PORT)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield env
    finally:
        down = subprocess.run([*UP, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        _drop(META_DB, WAREHOUSE_DB)


def _airflow(env, *args) -> str:
    done = subprocess.run([*UP, "airflow", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _backfill_states() -> dict[str, str]:
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=META_DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, state FROM dag_run WHERE dag_id = 'ihc_attribution' AND run_type = 'backfill'")
            return dict(cur.fetchall())
    finally:
        conn.close()


def _tables(rows_of):
    attribution = [tuple(r) for r in rows_of("SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2")]
    report = [
        (ch, str(d), round(c, 6), round(i, 6), round(r, 6))
        for ch, d, c, i, r in rows_of(
            "SELECT channel_name, CAST(date AS TEXT), cost, ihc, ihc_revenue FROM channel_reporting ORDER BY 1, 2"
        )
    ]
    return attribution, report


def _copy_sources(demo: Path, lite: Path) -> None:
    """A new SQLite database ``lite`` with the challenge's tables and the source rows of ``demo``, as
    ``pg_load`` loads them into the warehouse.

    Only the source tables: ``data/demo.db`` also holds the results of the runs that ``make demo``,
    ``make run`` or a SQLite ``make up`` made on it, and a copy of the file would bring their
    conversions of other days, and those conversions' credit in ``channel_reporting``, into the
    reference.
    """
    from ihc_attribution.schema import challenge_ddl
    from ihc_attribution_dev.pg_load import _VALID_SESSION, SOURCES

    conn = sqlite3.connect(lite)
    try:
        conn.execute("ATTACH DATABASE ? AS demo", (str(demo),))
        conn.executescript(challenge_ddl())
        with conn:
            for table in SOURCES:
                # the malformed session is left out, as the warehouse's DATE and TIME columns refuse it
                where = f" WHERE {_VALID_SESSION}" if table == "session_sources" else ""
                conn.execute(f"INSERT INTO main.{table} SELECT * FROM demo.{table}{where}")
        conn.execute("DETACH DATABASE demo")
    finally:
        conn.close()


def _range_run_reference(tmp_path) -> tuple[list, list]:
    """One range run over the same days, in-process, on a SQLite copy of the warehouse's demo data."""
    from ihc_attribution_dev.server.config import ServerConfig
    from ihc_attribution_dev.server.testing import serve

    lite = tmp_path / "reference.db"
    _copy_sources(ROOT / "data" / "demo.db", lite)
    env = {
        "AIRFLOW_CONN_ATTRIBUTION_DB": json.dumps({"conn_type": "sqlite", "host": str(lite)}),
        "ATTRIBUTION_OUTPUT_DIR": str(tmp_path / "out"),
    }
    with serve(ServerConfig(api_keys=("celery-e2e-reference",))) as url:
        host, port = url.removeprefix("http://").split(":")
        env["AIRFLOW_CONN_IHC_API"] = json.dumps({
            "conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": "celery-e2e-reference",
            "extra": {"conv_type_id": "demo"}})
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            from airflow.dag_processing.dagbag import DagBag

            dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution")
            run = dag.test(run_conf={"start_date": DAYS[0], "end_date": DAYS[1]})
            assert run.state == "success"
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    with sqlite3.connect(lite) as conn:
        return _tables(lambda sql: conn.execute(sql).fetchall())


def _worker_log(n: int) -> Path:
    return ROOT / ".run" / "airflow" / f"celery-worker-{n}.log"


def test_backfill_spreads_over_two_workers_and_converges_with_a_range_run(stack, airflow_db, tmp_path):
    # the workers' logs are appended to: read only what this backfill adds
    offsets = {n: _worker_log(n).stat().st_size for n in (1, 2)}
    started = time.monotonic()
    _airflow(stack, "backfill", "create", "--dag-id", "ihc_attribution", "--from-date", DAYS[0], "--to-date", DAYS[1])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = _backfill_states()
        if len(states) == 3 and all(s in ("success", "failed") for s in states.values()):
            break
        time.sleep(3)
    print(f"backfill of 3 days on 2 Celery workers: {time.monotonic() - started:.0f} s")
    assert sorted(states.values()) == ["success"] * 3, states

    # which worker ran what: every worker logs each workload it executes
    ran: dict[str, set[tuple[str, str]]] = {}
    for n in (1, 2):
        with open(_worker_log(n), errors="replace") as handle:
            handle.seek(offsets[n])
            text = handle.read()
        ran[f"worker{n}"] = set(WORKLOAD.findall(text))
    assert all(ran.values()), f"both workers ran tasks: {ran}"
    assert len(ran["worker1"] | ran["worker2"]) == 3 * 8, "every task of the 3 runs ran on a worker"
    assert not ran["worker1"] & ran["worker2"], "no task ran twice"

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=WAREHOUSE_DB)
    try:
        with conn.cursor() as cur:
            def rows_of(sql):
                cur.execute(sql)
                return cur.fetchall()

            got = _tables(rows_of)
    finally:
        conn.close()
    expected = _range_run_reference(tmp_path)
    assert expected[0] and expected[1]
    assert got == expected
