"""SIGKILL in every stage, then the same run again: the tables end as after an undisturbed run.

Each case replays the run in a process of its own (:mod:`tests.reliability.driver`) that kills
itself with SIGKILL at a chosen statement, commit or rename, so there is no clean-up and no
rollback in Python: only what SQLite committed survives. The database already holds the results
of an earlier, overlapping run, so "unchanged" is not the same as "empty". After the kill the
same run (same run id) is resumed from the killed task, as an Airflow retry does, and, on a copy,
run again from its first task, as a cleared DAG run does; both must end with the tables and CSV
of the same run undisturbed on a copy of the same database.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time

import pytest

from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from ihc_attribution_dev.server.config import FaultConfig, ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.helpers import export_report, random_db
from tests.reliability.support import (
    API_KEY,
    STAGES,
    connection_env,
    context,
    db_digest,
    read_trace,
    request_states,
    result_tables,
    run_stages,
    server_requests,
    start_driver,
)

pytestmark = pytest.mark.slow  # make test-slow; CI runs both

RUN, START, END = "target", "2024-01-01", "2024-01-10"
CSV_NAME = f"channel_reporting_{START}_{END}.csv"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server, a fresh database, the same after an earlier run, and the undisturbed outcome."""
    tmp = tmp_path_factory.mktemp("crashes")
    config = ServerConfig(api_keys=(API_KEY,), faults=FaultConfig(latency_ms=15))
    with serve(config) as url, pytest.MonkeyPatch.context() as mp:
        fresh = random_db(tmp / "fresh.db", seed=21, users=80, days=10)
        prior = tmp / "prior.db"
        shutil.copy(fresh, prior)
        for key, value in connection_env(prior, url, tmp / "prior-out").items():
            mp.setenv(key, value)
        run_stages(context("earlier", "2024-01-04", "2024-01-05"))

        # The CSV of the target range as it stands before the target run: a complete older file.
        db = Database.connect_sqlite(str(prior))
        target_range = range_from_params({"start_date": START, "end_date": END})
        old_csv_path, _ = export_report(db, target_range, tmp / "old")
        db.close()

        reference = {}
        for name, base in (("fresh", fresh), ("prior", prior)):
            db_path = tmp / f"reference-{name}.db"
            shutil.copy(base, db_path)
            for key, value in connection_env(db_path, url, tmp / f"reference-{name}").items():
                mp.setenv(key, value)
            run_stages(context(RUN, START, END))
            reference[name] = (result_tables(db_path), (tmp / f"reference-{name}" / CSV_NAME).read_bytes())
        assert reference["prior"][1] != old_csv_path.read_bytes(), "the old CSV must differ from the new one"
        assert len(reference["prior"][0]["attribution"]) > 50
        yield {"url": url, "bases": {"fresh": fresh, "prior": prior}, "reference": reference,
               "old_csv": old_csv_path.read_bytes()}


def _setup(world, tmp_path, base="prior", **extra):
    db = tmp_path / "challenge.db"
    shutil.copy(world["bases"][base], db)
    out = tmp_path / "out"
    return db, out, connection_env(db, world["url"], out, **extra)


def _kill_run(env, tmp_path, fault):
    trace = tmp_path / "trace.jsonl"
    proc = start_driver(RUN, START, END, env, faults=[{**fault, "action": "kill"}], trace=trace)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (exit {proc.returncode}):\n{stderr}"
    return read_trace(trace)


def _rerun(monkeypatch, env, first_stage="setup_tables"):
    """Run the stages from ``first_stage`` on, in this process, as the same run."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_stages(context(RUN, START, END), STAGES[STAGES.index(first_stage):])


def _assert_like_reference(world, db, out, base="prior"):
    tables, csv_bytes = world["reference"][base]
    assert result_tables(db) == tables
    assert (out / CSV_NAME).read_bytes() == csv_bytes


def _both_reruns(world, tmp_path, monkeypatch, db, out, stage, base="prior", **extra):
    """After a kill: resume from the killed task (an Airflow retry) on the database, and re-run
    the whole run on a copy of it (a cleared DAG run); both must end like the undisturbed run."""
    whole_db, whole_out = tmp_path / "whole.db", tmp_path / "whole-out"
    shutil.copy(db, whole_db)
    if out.exists():
        shutil.copytree(out, whole_out)
    _rerun(monkeypatch, connection_env(db, world["url"], out, **extra), stage)
    _assert_like_reference(world, db, out, base)
    _rerun(monkeypatch, connection_env(whole_db, world["url"], whole_out, **extra))
    _assert_like_reference(world, whole_db, whole_out, base)


# stage, fault point, base database: every kill is inside the stage's only write transaction
# (or, for export and check, in the middle of the stage), after some of its writes.
MID_STAGE = [
    pytest.param("setup_tables", {"on": "before_sql", "match": "CREATE INDEX"}, "fresh", id="setup-after-create-table"),
    pytest.param("extract_journeys", {"on": "after_sql", "match": "INSERT INTO attribution_stg_sessions"}, "prior",
                 id="extract-after-staging-journeys"),
    pytest.param("pack_requests", {"on": "after_sql", "match": "INSERT INTO attribution_stg_requests"}, "prior",
                 id="pack-after-planning-requests"),
    pytest.param("load_attribution", {"on": "after_sql", "match": "INSERT INTO attribution_customer_journey"}, "prior",
                 id="load-after-replacing-attribution"),
    pytest.param("build_report", {"on": "after_sql", "match": "DELETE FROM channel_reporting"}, "prior",
                 id="report-after-deleting-rows"),
    pytest.param("check_run", {"on": "before_sql", "match": "attribution_stg_conversions"}, "prior",
                 id="check-before-first-query"),
]


@pytest.mark.parametrize(("stage", "point", "base"), MID_STAGE)
def test_kill_inside_a_stage_leaves_the_database_as_before_the_stage(world, tmp_path, monkeypatch, stage, point, base):
    db, out, env = _setup(world, tmp_path, base)
    events = _kill_run(env, tmp_path, {"stage": stage, **point})
    before = next(e["digest"] for e in events if e["event"] == "stage_start" and e["stage"] == stage)
    assert db_digest(db) == before, "a killed stage must leave no row of its transaction behind"
    _both_reruns(world, tmp_path, monkeypatch, db, out, stage, base)


def test_kill_during_export_keeps_the_old_complete_csv(world, tmp_path, monkeypatch):
    db, out, env = _setup(world, tmp_path)
    out.mkdir()
    target = out / CSV_NAME
    target.write_bytes(world["old_csv"])
    _kill_run(env, tmp_path, {"stage": "export_csv", "on": "replace"})
    assert target.read_bytes() == world["old_csv"], "after a kill the CSV is the old complete file"
    leftovers = [p.name for p in out.iterdir() if p != target]
    # The new file was complete under its temporary name; a kill leaves that hidden .tmp behind.
    assert all(name.startswith(f".{CSV_NAME}.") and name.endswith(".tmp") for name in leftovers), leftovers
    _both_reruns(world, tmp_path, monkeypatch, db, out, "export_csv")


def _api_kill(world, tmp_path, fault, concurrency):
    """Kill the run in its API stage; return the database, output, env, plan size and counts."""
    db, out, env = _setup(world, tmp_path, max_concurrency=concurrency)
    before = server_requests(world["url"])
    _kill_run(env, tmp_path, {"stage": "call_ihc_api", **fault})
    states = request_states(db, RUN)
    return db, out, env, sum(states.values()), states.get("done", 0), server_requests(world["url"]) - before


def _resume_api_stage(world, monkeypatch, env):
    """Retry the killed API task and the tasks after it; return the requests the retry sent."""
    before = server_requests(world["url"])
    _rerun(monkeypatch, env, "call_ihc_api")
    return server_requests(world["url"]) - before


def test_kill_between_api_requests_resends_nothing_already_answered(world, tmp_path, monkeypatch):
    db, out, env, total, done, sent_before_kill = _api_kill(
        world, tmp_path, {"on": "after_commit", "nth": 3}, concurrency=1
    )
    assert (done, sent_before_kill) == (3, 3) and total > 10
    whole_db, whole_out = tmp_path / "whole.db", tmp_path / "whole-out"
    shutil.copy(db, whole_db)

    sent_by_rerun = _resume_api_stage(world, monkeypatch, env)
    resent = sent_before_kill + sent_by_rerun - total
    assert sent_by_rerun == total - 3
    assert resent == 0, "requests answered and checkpointed before the kill are not sent again"
    _assert_like_reference(world, db, out)
    # Re-running the whole run instead ends the same (it asks for every answer again, see below).
    _rerun(monkeypatch, connection_env(whole_db, world["url"], whole_out, max_concurrency=1))
    _assert_like_reference(world, whole_db, whole_out)


def test_kill_inside_a_checkpoint_keeps_no_half_answer(world, tmp_path, monkeypatch):
    # the third answer's rows are written, its request is not yet marked done
    db, out, env, total, done, sent_before_kill = _api_kill(
        world, tmp_path, {"on": "before_sql", "match": "SET status = 'done'", "nth": 3}, concurrency=1
    )
    assert (done, sent_before_kill) == (2, 3)
    with sqlite3.connect(db) as conn:
        # answer rows of a planned request that is not marked done (rows reused from another
        # run's answers belong to no request of this run)
        orphans = conn.execute(
            "SELECT COUNT(*) FROM attribution_stg_results r"
            " JOIN attribution_stg_request_journeys j ON j.run_id = r.run_id AND j.conv_id = r.conv_id"
            " JOIN attribution_stg_requests q ON q.run_id = j.run_id AND q.request_no = j.request_no"
            " WHERE r.run_id = ? AND q.status <> 'done'",
            (RUN,),
        ).fetchone()[0]
    assert orphans == 0, "answer rows without their done mark were committed"
    sent_by_rerun = _resume_api_stage(world, monkeypatch, env)
    resent = sent_before_kill + sent_by_rerun - total
    assert sent_by_rerun == total - 2
    assert resent == 1, "only the answer whose checkpoint was cut is asked for again"
    _assert_like_reference(world, db, out)


def test_kill_from_outside_while_requests_are_in_flight(world, tmp_path, monkeypatch):
    # A slower server of its own, so that the API stage lasts long enough to be caught in it.
    with serve(ServerConfig(api_keys=(API_KEY,), faults=FaultConfig(latency_ms=100))) as url:
        db, out, _ = _setup(world, tmp_path)
        env = connection_env(db, url, out, max_concurrency=3)
        proc = start_driver(RUN, START, END, env)
        deadline = time.monotonic() + 60
        try:
            while request_states(db, RUN).get("done", 0) < 3:
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the API stage did not get going"
                time.sleep(0.005)
        finally:
            proc.kill()  # SIGKILL
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        states = request_states(db, RUN)
        total, done = sum(states.values()), states["done"]
        sent_before_kill = server_requests(url)
        assert done < total
        _rerun(monkeypatch, env, "call_ihc_api")
        sent_by_rerun = server_requests(url) - sent_before_kill
    resent = sent_before_kill - done  # in flight when killed: sent, never checkpointed
    assert sent_by_rerun == total - done, "only the requests without a committed answer are sent again"
    assert 0 <= resent <= 3
    _assert_like_reference(world, db, out)


def test_whole_run_rerun_after_api_crash_resends_nothing_already_answered(world, tmp_path, monkeypatch):
    db, out, env, total, done, _ = _api_kill(world, tmp_path, {"on": "after_commit", "nth": 3}, concurrency=1)
    before = server_requests(world["url"])
    _rerun(monkeypatch, env)
    sent_by_rerun = server_requests(world["url"]) - before
    _assert_like_reference(world, db, out)
    assert sent_by_rerun == total - done
