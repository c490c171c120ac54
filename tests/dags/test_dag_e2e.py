"""The whole DAG through ``dag.test()`` against the local IHC server over HTTP, on a generated
database. Every output number is checked against an independent recomputation."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import shutil
import time
import sqlite3
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from ihc_attribution_dev.demo_data import DemoConfig, generate
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.helpers import expected_journeys, expected_report, read_table

API_KEY = "e2e-test-key-7f3a9c"


@pytest.fixture(scope="module")
def source_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "source.db"
    generate(path, DemoConfig(start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 4), conversions=200,
                              sessions_per_conversion=20, seed=11, lookback_days=20))
    with sqlite3.connect(path) as conn:
        # a malformed session in a converting user's history, and a conversion without sessions
        user, conv_date = conn.execute("SELECT user_id, conv_date FROM conversions ORDER BY conv_id LIMIT 1").fetchone()
        conn.execute(
            "INSERT INTO session_sources VALUES ('bad-session', ?, '2023-12-30', '25:00:00', 'Referral', 1, 1, 0)",
            (user,),
        )
        conn.execute("INSERT INTO conversions VALUES ('lonely', 'nobody', '2024-01-02', '10:00:00', 30.0)")
    return path


@pytest.fixture
def env(tmp_path, source_db, monkeypatch):
    db = tmp_path / "challenge.db"
    shutil.copy(source_db, db)
    out = tmp_path / "out"
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        host, port = url.removeprefix("http://").split(":")
        monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
        monkeypatch.setenv(
            "AIRFLOW_CONN_IHC_API",
            json.dumps({"conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": API_KEY,
                        "extra": {"conv_type_id": "demo", "max_concurrency": 4, "max_journeys_per_request": 40,
                                  "max_sessions_per_request": 300}}),
        )
        monkeypatch.setenv("ATTRIBUTION_OUTPUT_DIR", str(out))
        yield {"db": db, "out": out}


def _run(dag, **kwargs):
    dagrun = dag.test(**kwargs)
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    return dagrun, states


def _q(value, places):
    return Decimal(repr(float(value))).quantize(Decimal(places), ROUND_HALF_UP)


def test_manual_range_run_matches_independent_recomputation(dag, env):
    dagrun, states = _run(dag, run_conf={"start_date": "2024-01-01", "end_date": "2024-01-04"})
    assert dagrun.state == "success", states
    db = env["db"]

    # journeys: every conversion of the range attributed over exactly its earlier sessions
    expected = expected_journeys(db, "2024-01-01 00:00:00", "2024-01-05 00:00:00")
    attribution = read_table(db, "attribution_customer_journey")
    issues = read_table(db, "attribution_issues")
    got = attribution.groupby("conv_id")["session_id"].apply(set).to_dict()
    quarantined = set(issues["conv_id"])
    assert "lonely" in quarantined and set(issues.loc[issues.conv_id == "lonely", "reason"]) == {"no_sessions"}
    assert any("bad-session" in d for d in issues["detail"])
    assert set(got) | quarantined == set(expected), "every conversion attributed or recorded"
    assert not set(got) & quarantined
    for conv_id, sessions in got.items():
        assert sessions == expected[conv_id]
    assert attribution.groupby("conv_id")["ihc"].sum().sub(1).abs().max() < 1e-6
    assert len(got) > 150

    # report: equal to a recomputation from the source tables and the stored credit
    report = read_table(db, "channel_reporting").set_index(["channel_name", "date"]).sort_index()
    exp = expected_report(db)
    # rows exist for the range's dates and every date that holds credit; older dates need none
    sessions = read_table(db, "session_sources")
    credited = set(sessions.loc[sessions.session_id.isin(attribution.session_id), "event_date"])
    wanted = credited | {f"2024-01-0{d}" for d in range(1, 5)}
    exp = exp[exp.date.isin(wanted)].set_index(["channel_name", "date"]).sort_index()
    assert list(report.index) == list(exp.index)
    for col in ("cost", "ihc", "ihc_revenue"):
        assert (report[col] - exp[col]).abs().max() < 1e-6, col

    # CSV: the range's rows, rounded, ratios empty where undefined
    path = env["out"] / "channel_reporting_2024-01-01_2024-01-04.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    in_range = exp[(exp.index.get_level_values("date") >= "2024-01-01") & (exp.index.get_level_values("date") <= "2024-01-04")]
    assert len(rows) == len(in_range) > 0
    for row in rows:
        e = in_range.loc[(row["channel_name"], row["date"])]
        assert Decimal(row["cost"]) == _q(e.cost, "0.01")
        assert Decimal(row["ihc"]) == _q(e.ihc, "0.0001")
        assert Decimal(row["ihc_revenue"]) == _q(e.ihc_revenue, "0.01")
        assert row["CPO"] == ("" if e.ihc == 0 else str(_q(e.cost / e.ihc, "0.01")))
        assert row["ROAS"] == ("" if e.cost == 0 else str(_q(e.ihc_revenue / e.cost, "0.0001")))
    assert any(r["ROAS"] == "" for r in rows) and any(r["CPO"] not in ("",) for r in rows)

    # a chart next to the CSV, and both paths in XCom
    exported = dagrun.get_task_instance("export_csv").xcom_pull(task_ids="export_csv")
    assert exported["path"] == str(path) and exported["rows"] == len(rows)
    chart = Path(exported["chart"])
    assert chart == path.with_suffix(".html") and "<svg" in chart.read_text(encoding="utf-8")

    # the summary of the last task, in XCom
    summary = dagrun.get_task_instance("check_run").xcom_pull(task_ids="check_run")
    assert summary["conversions"] == len(expected)
    assert summary["attributed"] == len(got)


@pytest.mark.slow
def test_daily_scheduled_runs_converge_with_the_range_run(dag, env, tmp_path):
    for day in (2, 3):  # dag.test runs the data interval that ends at the logical date
        dagrun, states = _run(dag, logical_date=dt.datetime(2024, 1, day + 1, tzinfo=dt.timezone.utc))
        assert dagrun.state == "success", states
    daily = sqlite3.connect(env["db"])
    daily_attr = daily.execute("SELECT * FROM attribution_customer_journey ORDER BY 1, 2").fetchall()
    assert (env["out"] / "channel_reporting_2024-01-02_2024-01-02.csv").exists()

    fresh = tmp_path / "fresh.db"
    shutil.copy(env["db"], fresh)
    with sqlite3.connect(fresh) as conn:
        conn.execute("DELETE FROM attribution_customer_journey")
        conn.execute("DELETE FROM channel_reporting")
    dagrun, _ = _run(dag, run_conf={"start_date": "2024-01-02", "end_date": "2024-01-03"})
    assert dagrun.state == "success"
    range_attr = daily.execute("SELECT * FROM attribution_customer_journey ORDER BY 1, 2").fetchall()
    assert range_attr == daily_attr and daily_attr


@pytest.mark.slow
def test_manual_run_without_range_fails_before_any_work(dag, env):
    dagrun, states = _run(dag, logical_date=None)
    assert dagrun.state == "failed"
    assert states["setup_tables"] == "failed"
    assert all(states[t] != "success" for t in states if t != "setup_tables")
    with sqlite3.connect(env["db"]) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "attribution_issues" not in tables, "no work may happen before the range is known"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        pytest.param({"start_date": "2024-01-04", "end_date": "2024-01-01"},
                     "param start_date=2024-01-04 is after end_date=2024-01-01", id="end-before-start"),
        pytest.param({"start_date": "2024-01-01"}, "param end_date is missing", id="start-only"),
        pytest.param({"end_date": "2024-01-01"}, "param start_date is missing", id="end-only"),
    ],
)
@pytest.mark.slow
def test_a_bad_range_fails_the_first_task_at_once_in_one_line(dag, env, conf, message, caplog):
    """Airflow validates each param alone, so a range is checked by the first task: it fails on its
    first try (retries on), its log says why in one line, without a traceback."""
    for t in dag.tasks:
        t.retries, t.retry_delay = 2, dt.timedelta(seconds=30)
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        dagrun, states = _run(dag, run_conf=conf)
    elapsed = time.monotonic() - started
    assert dagrun.state == "failed" and states["setup_tables"] == "failed", states
    assert all(states[t] == "upstream_failed" for t in states if t != "setup_tables"), states
    assert dagrun.get_task_instance("setup_tables").try_number == 1, "a permanent error is not retried"
    assert elapsed < 30, f"the run took {elapsed:.0f} s to fail"
    records = caplog.records
    first = next(i for i, r in enumerate(records) if "[DAG TEST] running task" in r.getMessage())
    last = next(i for i, r in enumerate(records) if "[DAG TEST] end task" in r.getMessage())
    task_log = records[first:last]
    errors = [r.getMessage() for r in task_log if r.levelno >= logging.ERROR]
    assert errors[0].startswith(f"RangeError: {message}"), errors
    assert errors[0].endswith("(not retried: a retry would fail the same way)") and "\n" not in errors[0], errors
    assert not [r for r in task_log if r.exc_info or "Traceback" in r.getMessage()], "no traceback"
    # the failure callback's ALERT line at the end repeats it
    assert errors[-1].startswith("ALERT ihc_attribution run") and errors[-1].endswith(errors[0]), errors


def test_the_lookback_field_is_not_clamped_by_the_trigger_form(dag):
    """The trigger form's number field clamps a typed value to the schema's minimum/maximum (0 became
    1 without a word); with exclusive bounds the value stays as typed and is refused (next test)."""
    schema = dag.params.get_param("lookback_days").schema
    assert "minimum" not in schema and "maximum" not in schema
    assert (schema["exclusiveMinimum"], schema["exclusiveMaximum"]) == (0, 36601)


@pytest.mark.parametrize("lookback", ["abc", 0, -1, 2.5, 36601, 99999999])
def test_a_bad_lookback_is_refused_when_the_run_is_created(dag, env, lookback):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="lookback_days"):
        dag.test(run_conf={"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": lookback})


@pytest.mark.slow
def test_the_data_aware_start_waits_and_then_runs(env, monkeypatch, airflow_db, caplog):
    """With ATTRIBUTION_WAIT_FOR_DATA_MINUTES set, a run of the latest day whose conversions are not
    loaded yet waits for them (deferred: dag.test runs the trigger inline, as a triggerer would) and,
    once they arrive, runs to the end and attributes them."""
    import threading

    from airflow.dag_processing.dagbag import DagBag

    from tests.helpers import ROOT

    monkeypatch.setenv("ATTRIBUTION_WAIT_FOR_DATA_MINUTES", "5")
    monkeypatch.setenv("ATTRIBUTION_WAIT_POKE_SECONDS", "0.5")
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution")
    assert "wait_for_data" in dag.task_ids
    with sqlite3.connect(env["db"]) as conn:  # the loader has not written 2024-01-03 yet
        conn.execute("CREATE TABLE late AS SELECT * FROM conversions WHERE conv_date = '2024-01-03'")
        late_ids = [r[0] for r in conn.execute("SELECT conv_id FROM late")]
        conn.execute("DELETE FROM conversions WHERE conv_date = '2024-01-03'")
    assert late_ids

    def load_later():  # once the task has deferred and the trigger has counted a few times
        deadline = time.monotonic() + 120
        while not any(r.getMessage().startswith("no conversions of 2024-01-03 yet") for r in list(caplog.records)):
            assert time.monotonic() < deadline, "the run never waited for the day's conversions"
            time.sleep(0.1)
        time.sleep(1.5)
        with sqlite3.connect(env["db"], timeout=30) as conn:
            conn.execute("INSERT INTO conversions SELECT * FROM late")

    loader = threading.Thread(target=load_later)
    loader.start()
    try:  # a run of the day 2024-01-03, as the schedule makes it
        with caplog.at_level(logging.INFO):
            dagrun, states = _run(dag, logical_date=dt.datetime(2024, 1, 4, tzinfo=dt.timezone.utc))
    finally:
        loader.join()
    assert dagrun.state == "success", states
    assert set(states.values()) == {"success"} and "wait_for_data" in states
    waited = dagrun.get_task_instance("wait_for_data").xcom_pull(task_ids="wait_for_data")
    assert waited["day"] == "2024-01-03" and waited["conversions"] == len(late_ids)
    assert waited["waited_seconds"] >= 1.5, waited
    with sqlite3.connect(env["db"]) as conn:
        attributed = {r[0] for r in conn.execute("SELECT DISTINCT conv_id FROM attribution_customer_journey")}
    assert attributed & set(late_ids), "the conversions that arrived during the wait are attributed"


@pytest.mark.slow
def test_the_data_aware_start_fails_the_run_in_one_line_when_the_data_never_comes(env, monkeypatch, airflow_db, caplog):
    from airflow.dag_processing.dagbag import DagBag

    from tests.helpers import ROOT

    monkeypatch.setenv("ATTRIBUTION_WAIT_FOR_DATA_MINUTES", "0.05")  # 3 s
    monkeypatch.setenv("ATTRIBUTION_WAIT_POKE_SECONDS", "0.5")
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution")
    with caplog.at_level(logging.INFO):  # 2024-01-05 has no conversions
        dagrun, states = _run(dag, logical_date=dt.datetime(2024, 1, 6, tzinfo=dt.timezone.utc))
    assert dagrun.state == "failed" and states["wait_for_data"] == "failed", states
    assert {s for t, s in states.items() if t != "wait_for_data"} == {"upstream_failed"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].getMessage().startswith(
        "DataNotReadyError: no conversions of 2024-01-05 after waiting 0.05 minutes (ATTRIBUTION_WAIT_FOR_DATA_MINUTES)")
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    with sqlite3.connect(env["db"]) as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'attribution_issues'").fetchall()
