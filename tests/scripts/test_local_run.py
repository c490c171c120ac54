"""The local runner (``scripts/local_run.py``, behind ``make run``/``backfill``/``demo``) as a user
runs it: a child process per command, on a small generated database of September 2023, against
the local IHC server. Figures printed by the runner are checked against the database."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_run.py"
sys.path.insert(0, str(SCRIPT.parent))
import local_run  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.slow  # make test-slow; CI runs both

# Conversions on 2023-09-01 .. 2023-09-04, sessions from 2023-08-22: 2023-08-31 has none.
FIRST, LAST = "2023-08-31", "2023-09-03"
TIMEOUT = 300
# What the runner says about the lock of the 2023-09-02 run (its logical date is the day after).
DAY2_LOCK = "the DAG run at 2023-09-03T00:00:00+00:00"


def runner_env(tmp: Path, db: Path, ihc_conn: str, airflow_home: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=airflow_home,
        AIRFLOW_CONN_ATTRIBUTION_DB=json.dumps({"conn_type": "sqlite", "host": str(db)}),
        AIRFLOW_CONN_IHC_API=ihc_conn,
        ATTRIBUTION_OUTPUT_DIR=str(tmp / "out"),
        ATTRIBUTION_RUN_DIR=str(tmp / "run"),
        ATTRIBUTION_TASK_RETRIES="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen:
    """The runner in a process of its own; what it prints goes to ``out``."""
    with open(out, "w") as handle:
        return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, cwd=ROOT,
                                stdout=handle, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, out: Path) -> tuple[int, str]:
    return proc.wait(timeout=TIMEOUT), out.read_text()


def wait_for(path: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}:\n{path.read_text()}"
        time.sleep(0.2)


def log_of(output: str) -> Path:
    return Path(re.findall(r"log of this invocation: (\S+)", output)[-1])


def range_summary(output: str) -> dict:
    """The figures a range run printed."""
    m = re.search(r"run (\S+): conversions in \[(\S+) 00:00:00, (\S+) 00:00:00\)\n"
                  r"  conversions: (\d+), attributed: (\d+)", output)
    assert m, output
    cost = re.search(r"report over the range: cost (-?[\d.]+)", output)
    return {"run_id": m[1], "start": m[2], "end": m[3], "conversions": int(m[4]), "attributed": int(m[5]),
            "cost": float(cost[1])}


def daily_summaries(output: str) -> dict[str, dict]:
    """The figures a backfill printed, by day."""
    rows = re.findall(r"^(\d{4}-\d\d-\d\d)  (\S+): conversions (\d+), attributed (\d+), .*?cost (-?[\d.]+)(.*)$",
                      output, re.M)
    return {day: {"run_id": rid, "conversions": int(c), "attributed": int(a), "cost": float(cost), "rest": rest}
            for day, rid, c, a, cost, rest in rows}


def counts(db: Path, first: str, last: str) -> tuple[int, int, float]:
    """Conversions, attributed conversions and report cost of [first, last] straight from the tables."""
    with sqlite3.connect(db) as conn:
        n = conn.execute("SELECT COUNT(*) FROM conversions WHERE conv_date BETWEEN ? AND ?", (first, last)).fetchone()[0]
        attributed = conn.execute(
            "SELECT COUNT(DISTINCT a.conv_id) FROM attribution_customer_journey a JOIN conversions c USING (conv_id) "
            "WHERE c.conv_date BETWEEN ? AND ?", (first, last)).fetchone()[0]
        cost = conn.execute("SELECT COALESCE(SUM(cost), 0) FROM channel_reporting WHERE date BETWEEN ? AND ?",
                            (first, last)).fetchone()[0]
    return n, attributed, cost


def tables(db: Path) -> dict[str, list]:
    with sqlite3.connect(db) as conn:
        return {
            "attribution_customer_journey": conn.execute(
                "SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2").fetchall(),
            "channel_reporting": [
                (ch, d, round(c, 9), round(i, 9), round(r, 9)) for ch, d, c, i, r in conn.execute(
                    "SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting ORDER BY 1, 2")
            ],
        }


def metadata_run(airflow_home: str, run_id: str):
    with sqlite3.connect(Path(airflow_home) / "airflow.db") as conn:
        return conn.execute("SELECT state, conf, data_interval_start FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory, source_db, ihc_conn, airflow_db):
    """Four runner commands at once, as users start them:

    - on database B, ``backfill FIRST..LAST`` and ``backfill 2023-09-02..2023-09-02``, whose
      2023-09-02 runs overlap (the test holds that day's lock until both wait for it);
    - on database R, ``run FIRST..LAST`` and ``run 2023-09-02..2023-09-02``;
    - a ``run`` whose database cannot be opened.
    """
    tmp = tmp_path_factory.mktemp("runner")
    db_b, db_r = tmp / "backfill.db", tmp / "range.db"
    shutil.copy(source_db, db_b)
    shutil.copy(source_db, db_r)
    env_b = runner_env(tmp, db_b, ihc_conn, airflow_db)
    env_r = runner_env(tmp, db_r, ihc_conn, airflow_db, ATTRIBUTION_OUTPUT_DIR=str(tmp / "out-range"))
    day2 = dt.datetime(2023, 9, 3, tzinfo=dt.timezone.utc)  # the logical date of the 2023-09-02 run
    lock = tmp / "run" / "locks" / local_run.lock_path(day2).name
    lock.parent.mkdir(parents=True)
    env_broken = runner_env(tmp, tmp / "no-such-dir" / "challenge.db", ihc_conn, airflow_db,
                            ATTRIBUTION_OUTPUT_DIR=str(tmp / "out-broken"))
    outs = {name: tmp / f"{name}.out" for name in ("backfill", "backfill_day", "run", "run_day", "broken")}
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = {
            "backfill": start(env_b, outs["backfill"], "backfill", "--start", FIRST, "--end", LAST),
            "backfill_day": start(env_b, outs["backfill_day"], "backfill", "--start", "2023-09-02", "--end", "2023-09-02"),
            "run": start(env_r, outs["run"], "run", "--start", FIRST, "--end", LAST),
            "run_day": start(env_r, outs["run_day"], "run", "--start", "2023-09-02", "--end", "2023-09-02"),
            "broken": start(env_broken, outs["broken"], "run", "--start", "2023-09-01", "--end", "2023-09-02"),
        }
        try:
            wait_for(outs["backfill"], f"{DAY2_LOCK} is in use by")
            wait_for(outs["backfill_day"], f"{DAY2_LOCK} is in use by")
        except BaseException:
            for proc in procs.values():
                proc.kill()
            raise
    results = {name: finish(proc, outs[name]) for name, proc in procs.items()}
    return {"results": results, "db_b": db_b, "db_r": db_r, "airflow_home": airflow_db, "tmp": tmp}


def test_historical_backfill_equals_a_range_run_over_the_same_days(concurrent):
    for name, (code, output) in concurrent["results"].items():
        if name != "broken":
            assert code == 0, f"{name} failed:\n{output}"
    backfill, range_run = tables(concurrent["db_b"]), tables(concurrent["db_r"])
    conversions, attributed, _ = counts(concurrent["db_b"], FIRST, LAST)
    with sqlite3.connect(concurrent["db_b"]) as conn:
        recorded = conn.execute("SELECT COUNT(DISTINCT conv_id) FROM attribution_issues").fetchone()[0]
    # every 2023 conversion of the range is attributed, or recorded with a reason (the demo
    # data's few bad rows)
    assert attributed > 40 and attributed + recorded == conversions
    assert backfill["channel_reporting"] and backfill == range_run
    days = daily_summaries(concurrent["results"]["backfill"][1])
    assert sorted(days) == ["2023-08-31", "2023-09-01", "2023-09-02", "2023-09-03"]
    csvs = sorted(p.name for p in (concurrent["tmp"] / "out").glob("*.csv"))
    assert csvs == [f"channel_reporting_{d}_{d}.csv" for d in sorted(days)]


def test_each_command_prints_its_own_runs_figures(concurrent):
    results, db = concurrent["results"], concurrent["db_r"]
    whole, day = range_summary(results["run"][1]), range_summary(results["run_day"][1])
    assert (whole["start"], whole["end"]) == (FIRST, "2023-09-04")
    assert (day["start"], day["end"]) == ("2023-09-02", "2023-09-03")
    assert whole["run_id"] != day["run_id"]
    for summary, (first, last) in ((whole, (FIRST, LAST)), (day, ("2023-09-02", "2023-09-02"))):
        conversions, attributed, cost = counts(db, first, last)
        assert (summary["conversions"], summary["attributed"]) == (conversions, attributed)
        assert summary["cost"] == pytest.approx(cost, abs=0.005)
        state, conf, _ = metadata_run(concurrent["airflow_home"], summary["run_id"])
        assert state == "success" and json.loads(conf) == {"start_date": first, "end_date": last}
    assert 0 < day["conversions"] < whole["conversions"]

    days = daily_summaries(results["backfill"][1])
    for name, (first, last) in (("2023-08-31", ("2023-08-31",) * 2), ("2023-09-01", ("2023-09-01",) * 2),
                                ("2023-09-03", ("2023-09-03",) * 2)):
        conversions, attributed, cost = counts(concurrent["db_b"], first, last)
        assert (days[name]["conversions"], days[name]["attributed"]) == (conversions, attributed)
        assert days[name]["cost"] == pytest.approx(cost, abs=0.005)
        state, _, interval_start = metadata_run(concurrent["airflow_home"], days[name]["run_id"])
        assert state == "success" and interval_start.startswith(name)
    assert days["2023-08-31"]["conversions"] == 0
    assert "no conversions in this range" in days["2023-08-31"]["rest"]
    assert "no conversions in this range" not in days["2023-09-01"]["rest"]
    totals = re.search(r"total over 4 days: conversions (\d+)", results["backfill"][1])
    assert int(totals[1]) == whole["conversions"]


def test_overlapping_backfills_of_one_day_wait_for_each_other_and_both_succeed(concurrent):
    results = concurrent["results"]
    (code_a, out_a), (code_b, out_b) = results["backfill"], results["backfill_day"]
    assert code_a == code_b == 0, out_a + out_b
    for output in (out_a, out_b):
        assert f"{DAY2_LOCK}: lock acquired after" in output
    day_a, day_b = daily_summaries(out_a)["2023-09-02"], daily_summaries(out_b)["2023-09-02"]
    assert day_a["run_id"] != day_b["run_id"]
    conversions, attributed, _ = counts(concurrent["db_b"], "2023-09-02", "2023-09-02")
    for day in (day_a, day_b):
        assert (day["conversions"], day["attributed"]) == (conversions, attributed)
    assert attributed > 0
    # the later of the two replaced the earlier's DagRun only after it had finished
    states = [metadata_run(concurrent["airflow_home"], d["run_id"]) for d in (day_a, day_b)]
    assert [s[0] for s in states if s] == ["success"]
    # each invocation wrote a log of its own
    assert log_of(out_a) != log_of(out_b) and log_of(out_a).exists() and log_of(out_b).exists()
    # a metadata database at the code's head is not migrated again
    for output in (out_a, out_b):
        assert json.loads(log_of(output).with_suffix(".json").read_text())["metadata_db"]["migrated"] is False


def test_a_failed_task_fails_the_command_naming_it_and_its_log(concurrent):
    from airflow.dag_processing.dagbag import DagBag

    task_ids = DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution").task_ids
    code, output = concurrent["results"]["broken"]
    assert code != 0, output
    assert "attribution results" not in output
    m = re.search(r"task setup_tables: failed after 1 attempt\(s\); its log: (\S+):(\d+)", output)
    assert m, output
    log_lines = Path(m[1]).read_text().splitlines()
    assert "running task <TaskInstance: ihc_attribution.setup_tables" in log_lines[int(m[2]) - 1]
    # the task's own error, on the line after it
    assert re.search(r"task setup_tables: failed .*\n    \S*(Error|Exception): .+", output), output
    not_run = re.search(r"not run \(upstream_failed\): (.*)", output)
    assert not_run and set(not_run[1].split(", ")) == set(task_ids) - {"setup_tables"}


def test_a_day_before_the_dags_start_date_is_refused_before_any_run(tmp_path, source_db, ihc_conn, airflow_db):
    db = tmp_path / "challenge.db"
    shutil.copy(source_db, db)
    env = runner_env(tmp_path, db, ihc_conn, airflow_db, ATTRIBUTION_START_DATE="2023-09-02")
    code, output = finish(start(env, tmp_path / "out.txt", "backfill", "--start", "2023-09-01", "--end", "2023-09-02"),
                          tmp_path / "out.txt")
    assert code != 0, output
    assert "2023-09-01 is before the DAG's start date 2023-09-02" in output
    assert "ATTRIBUTION_START_DATE=2023-09-01" in output and "no DAG run was made" in output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_customer_journey").fetchone()[0] == 0
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'attribution_issues'").fetchall()
    result = json.loads(log_of(output).with_suffix(".json").read_text())
    assert result["runs"] == []


def test_end_before_start_is_refused_at_once(tmp_path, source_db, ihc_conn, airflow_db):
    env = runner_env(tmp_path, source_db, ihc_conn, airflow_db)
    result = subprocess.run([sys.executable, str(SCRIPT), "run", "--start", "2023-09-05", "--end", "2023-09-01"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "END 2023-09-01 is before START 2023-09-05" in result.stderr
