"""The queries that touch every session read ``session_sources`` at most once per stage.

The journey extraction reads ``session_sources`` exactly once, probing the small table of the
run's converting users, and builds the journeys from that copy: no index over the whole table
has to be built first. The report reads the spend of the dates it needs from the sources in one
statement (its only read of them) and otherwise only the package's own tables, through their
indexes. The other stages use keys and indexes: a plan that scans
``session_sources`` costs time in proportion to the whole database instead of the run's work
(about 1% of the sessions belong to a journey). SQLite without ``ANALYZE``
chooses plans from the schema alone, so the plans on this small database are the plans on a
large one; ``make bench`` prints the same plans for 2 million sessions.
"""

from __future__ import annotations

import re
import sqlite3

import pytest

from ihc_attribution import api_stage, buyers, journeys, load, report, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import FakeIhcClient, expected_report, make_db, random_db, read_table, run_pipeline

RUN = "r1"

SESSIONS = [
    ("s1", "u1", "2024-01-08", "10:00:00", "Paid Search Brand"),
    ("s2", "u1", "2024-01-09", "10:00:00", "FB & IG Ads"),
    ("s3", "u1", "2024-01-10", "08:00:00", "FB & IG Ads"),
    ("s4", "u2", "2024-01-08", "11:00:00", "Paid Search Brand"),
    ("s5", "u3", "2024-01-10", "11:00:00", "Organic Traffic"),  # no cost row
    ("s6", "u3", "2024-01-10", "12:00:00", "Organic Traffic"),  # NULL cost
    ("s7", "u4", "2024-01-09", "09:00:00", "Referral"),  # cost 0: the cell exists with cost 0
    ("s8", "u4", "2024-01-09", "13:00:00", "Paid Search Brand"),  # a refund: negative cost
    ("s9", "u4", "2024-01-09", "14:00:00", "Paid Search Brand"),
]
CONVERSIONS = [
    ("c1", "u1", "2024-01-09", "12:00:00", 100.0),
    ("c2", "u1", "2024-01-10", "09:00:00", 40.0),
    ("c3", "u4", "2024-01-09", "15:00:00", 60.0),
]
COSTS = [("s1", 2.5), ("s2", 1.25), ("s3", 0.75), ("s4", 4.0), ("s6", None), ("s7", 0.0), ("s8", -1.5), ("s9", 2.0)]


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    """A small database after a complete run: schema, indexes and staging rows in place."""
    path = make_db(tmp_path_factory.mktemp("plans") / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, RUN, "2024-01-09", "2024-01-10")
    return path


def plan(path, sql: str, params: tuple) -> list[str]:
    """The steps of SQLite's query plan, e.g. ``SEARCH s USING INDEX ix_... (user_id=?)``.

    Statements on the extraction's temporary tables are planned with those tables in place
    (made again from the run's staging, as the extraction makes them).
    """
    with sqlite3.connect(path) as conn:
        if "attribution_tmp_" in sql:
            buyers.stage_buyer_sessions(Database(conn))
        return [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def scans_of(steps: list[str], *names: str) -> list[str]:
    """Steps reading all of a table or index (``SCAN x``, older SQLite: ``SCAN TABLE x``)."""
    pattern = re.compile(rf"^SCAN (TABLE )?({'|'.join(map(re.escape, names))})\b")
    return [step for step in steps if pattern.match(step)]


def test_extraction_reads_session_sources_once_probing_the_run_s_users(db_path):
    with sqlite3.connect(db_path) as conn:
        select = buyers.buyer_sessions_select(Database(conn))
    steps = plan(db_path, select, ())
    assert scans_of(steps, "s") == ["SCAN s"], steps
    assert any(re.match(r"^USING INDEX sqlite_autoindex_attribution_tmp_buyers_1 FOR IN-OPERATOR", step)
               for step in steps), steps


def test_extraction_reads_session_sources_in_its_pass_only(traced):
    """Behind a primary key no session id can be present twice, so none is looked for, and only
    the copied sessions SQLite cannot tell are well-formed are read into Python to be checked."""
    _, statements, _ = traced
    extract = statements["extract"]  # the pass itself is a CREATE TABLE ... AS, not listed here
    # On SQLite the pass reads the table in slices of rowids (an INSERT into the copy per slice).
    slices = [sql for sql in extract if "s.rowid BETWEEN" in sql]
    assert slices and all(sql.startswith(f"INSERT INTO {buyers.BUYER_SESSIONS}") for sql in slices), slices
    reads = [sql for sql in extract if "session_sources" in sql and sql not in slices and "sqlite_master" not in sql]
    assert reads == ["SELECT MIN(rowid) FROM session_sources", "SELECT MAX(rowid) FROM session_sources"], reads
    # (the comparison of attributed journeys reads the copy too, but only counts per journey)
    copied = [sql for sql in extract if buyers.BUYER_SESSIONS in sql and sql.lstrip().startswith("SELECT s.")]
    assert copied and all("WHERE s.clean = 0" in sql for sql in copied), copied


JOURNEY_QUERIES = {
    "journeys": (journeys.journeys_sql("sqlite"), (3000, RUN)),
    "journeys with look-back": (
        journeys.journeys_sql("sqlite", lookback=True),
        ("-30 days", 3000, RUN),
    ),
    "journey lengths": (journeys.journey_lengths_sql("sqlite"), (RUN,)),
    "journey lengths with look-back": (journeys.journey_lengths_sql("sqlite", lookback=True), ("-30 days", RUN)),
}


@pytest.mark.parametrize("name", list(JOURNEY_QUERIES))
def test_journeys_find_the_copied_sessions_by_user(db_path, name):
    sql, params = JOURNEY_QUERIES[name]
    assert "session_sources" not in sql
    steps = plan(db_path, sql, params)
    assert any(
        re.match(r"^SEARCH (TABLE )?s USING COVERING INDEX attribution_tmp_ix_buyer_sessions \(user_id=\?", step)
        for step in steps
    ), steps  # covering: no session is looked up in the table to be counted or chosen
    # The index gives each user's sessions latest first: a journey's kept sessions are read in
    # that order and the reading stops at the limit. Only the sessions kept are looked up, and
    # only they are sorted, per conversion, for the conversion flag: never every journey row.
    assert not any(re.match(r"^USE TEMP B-TREE FOR (ORDER BY|GROUP BY)", step) for step in steps), steps
    assert not scans_of(steps, "s", "j"), steps
    if name.startswith("journeys"):
        assert "SEARCH j USING INTEGER PRIMARY KEY (rowid=?)" in steps, steps


def test_report_reads_only_the_package_s_tables_through_their_date_index(db_path):
    with sqlite3.connect(db_path) as conn:
        sql = report.report_sql(Database(conn))
    assert not any(table in sql for table in schema.SOURCE_TABLES), sql
    steps = plan(db_path, sql, (RUN,) * sql.count("?"))
    for index in ("ix_attribution_spend_date", "ix_attribution_credit_date"):
        assert any(f"USING INDEX {index} (date=?" in step for step in steps), steps


def test_request_rows_are_read_by_request_number(db_path):
    steps = plan(db_path, api_stage._REQUEST_ROWS_SQL.format(byte_order=""), (RUN, 0))
    assert any(
        "j USING COVERING INDEX ix_attribution_stg_request_journeys_request_conv (run_id=? AND request_no=?)" in step
        for step in steps
    ), steps
    assert any("s USING INDEX sqlite_autoindex_attribution_stg_sessions_1 (run_id=? AND conv_id=?)" in step
               for step in steps), steps


def test_the_indexed_report_matches_the_independent_recomputation(db_path):
    """Zero, negative, NULL and missing costs give the same report as summing every session."""
    expected = expected_report(db_path)
    got = read_table(db_path, "channel_reporting")
    touched = set(got["date"])
    expected = expected[expected["date"].isin(touched)]
    merged = expected.merge(got, on=["channel_name", "date"], suffixes=("_exp", "_got"), how="outer")
    assert len(merged) == len(expected) == len(got)
    for col in ("cost", "ihc", "ihc_revenue"):
        assert merged[f"{col}_exp"].to_numpy() == pytest.approx(merged[f"{col}_got"].to_numpy(), abs=1e-9)
    cells = {(r.channel_name, r.date): r.cost for r in got.itertuples()}
    assert cells[("Referral", "2024-01-09")] == 0.0
    assert cells[("Paid Search Brand", "2024-01-09")] == pytest.approx(0.5)
    assert cells[("Organic Traffic", "2024-01-10")] == 0.0
    assert all(isinstance(cost, float) for cost in got["cost"])


# --- every statement the stages run, as executed -------------------------------------------------


def _template(sql: str) -> str:
    """The statement with its literal values replaced by ``?`` (to count repetitions)."""
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    return re.sub(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?", "?", sql)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """The SQL each stage of a run executed (parameters expanded), and the run's request count."""
    path = random_db(tmp_path_factory.mktemp("traced") / "db.sqlite", seed=1)
    rng = range_from_params({"start_date": "2024-01-01", "end_date": "2024-01-10"})
    db = Database.connect_sqlite(str(path))
    stage: list[str] = [""]
    statements: dict[str, list[str]] = {}

    def trace(sql: str) -> None:
        if stage[0] and re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", sql, re.IGNORECASE):
            statements.setdefault(stage[0], []).append(sql)

    db.conn.set_trace_callback(trace)
    try:
        schema.ensure_schema(db)
        steps = {
            "extract": lambda: journeys.extract_journeys(db, RUN, rng, created_at="2024-01-01 00:00:00"),
            "pack": lambda: api_stage.pack_requests(db, RUN, max_journeys=3, max_sessions=8),
            "send": lambda: api_stage.send_requests(db, RUN, FakeIhcClient(), max_sessions=8),
            "load": lambda: load.load_attribution(db, RUN, rng, recorded_at="2024-01-01 00:00:00"),
            "report": lambda: report.build_report(db, RUN, rng),
        }
        requests = 0
        for name, run in steps.items():
            stage[0] = name
            result = run()
            stage[0] = ""
            if name == "pack":
                requests = result.requests
    finally:
        db.close()
    assert requests >= 5, "the run must need several requests for the per-request checks to mean anything"
    return path, statements, requests


def test_no_stage_scans_session_sources(traced):
    """Besides the extraction's one pass (``CREATE TABLE ... AS SELECT``, checked above) and the
    report's read of the spend by date (a scan unless the user indexes ``event_date``, docs/configuration.md)."""
    path, statements, _ = traced
    for name, executed in statements.items():
        for sql in dict.fromkeys(executed):
            if "session_sources" not in sql:  # e.g. reading the extraction's copy
                continue
            if sql.lstrip().startswith(("INSERT INTO attribution_spend ", "INSERT INTO attribution_tmp_spend ")):
                continue
            steps = plan(path, sql, ())
            assert not scans_of(steps, "s", "session_sources"), (name, sql, steps)


def test_statements_run_per_answer_read_only_that_request(traced):
    """Work per API answer must not grow with the answers before it (no run-wide reads)."""
    path, statements, requests = traced
    counts: dict[str, list[str]] = {}
    for sql in statements["send"]:
        counts.setdefault(_template(sql), []).append(sql)
    per_request = [examples[0] for examples in counts.values() if len(examples) >= requests]
    assert any("attribution_stg_results" in sql for sql in per_request), per_request
    for sql in per_request:
        for step in plan(path, sql, ()):
            assert not re.match(r"^SCAN ", step), (sql, step)
            assert not step.endswith("(run_id=?)"), (sql, step)


def test_the_spend_reads_a_few_dates_through_the_users_date_index_and_many_in_one_scan(tmp_path):
    from ihc_attribution import spend

    path = make_db(tmp_path / "indexed.sqlite", SESSIONS, CONVERSIONS, COSTS)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE INDEX users_dates ON session_sources (event_date)")
        db = Database(conn)
        schema.ensure_schema(db)
        db.execute(f"CREATE TEMP TABLE {spend.TODO} (date TEXT PRIMARY KEY)")
        few = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + spend.figures_sql(db, 3), ["2024-01-09"] * 3)]
        many = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + spend.figures_sql(db, 90), ["2024-01-09"] * 90)]
    assert any("USING INDEX users_dates (event_date=?)" in step for step in few), few
    assert scans_of(many, "s") and not any("users_dates" in step for step in many), many
