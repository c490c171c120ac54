"""Money that is not a number, infinite or beyond what exact sums hold never reaches a sum.

A revenue like that quarantines its conversion (``invalid_input``, saying why); a cost like that
counts as 0 and is counted in the run's source warnings (``unusable_costs``). The report, its
totals and the CSV stay finite and exact, on SQLite and on PostgreSQL (a database of its own on
the server at 127.0.0.1:5432; skipped, saying why, when none answers).
"""

from __future__ import annotations

import csv
import sqlite3
import uuid
from decimal import Decimal

import pytest

from ihc_attribution import schema
from ihc_attribution.db import Database
from ihc_attribution.validation import MAX_MONEY
from tests.helpers import make_db, run_stages

INF, NAN = float("inf"), float("nan")
SESSIONS = [(f"s{i}", f"u{i}", "2024-01-02", "09:00:00", "Search") for i in range(8)]
GOOD = [("ok", "u0", "2024-01-02", "10:00:00", 100.25), ("edge", "u1", "2024-01-02", "10:00:00", float(MAX_MONEY))]
ABSURD = {"inf": INF, "huge": 1e300, "over": MAX_MONEY + 0.01}
COSTS = [("s0", 1.5), ("s1", -0.25), ("s2", INF), ("s3", -INF), ("s4", 1e300), ("s5", 2.0)]
UNUSABLE_COSTS = 3


def _rows(engine: str):
    absurd = dict(ABSURD, **({"nan": NAN} if engine == "postgres" else {}))  # SQLite stores NaN as NULL
    conversions = GOOD + [(name, f"u{2 + i}", "2024-01-02", "10:00:00", v) for i, (name, v) in enumerate(absurd.items())]
    costs = COSTS + ([("s6", NAN)] if engine == "postgres" else [])
    return conversions, costs, set(absurd), UNUSABLE_COSTS + (engine == "postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """(engine, a function loading the rows and returning an open Database)."""
    if request.param == "sqlite":
        def load(conversions, costs):
            return Database.connect_sqlite(str(make_db(tmp_path / "db.sqlite", SESSIONS, conversions, costs)))

        yield "sqlite", load
        return
    psycopg2 = pytest.importorskip("psycopg2")
    pg = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "connect_timeout": 3}
    try:
        admin = psycopg2.connect(dbname="postgres", **pg)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    admin.autocommit = True
    name = "ihc_money_" + uuid.uuid4().hex[:10]
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    opened = []

    def load(conversions, costs):
        db = Database(psycopg2.connect(dbname=name, **pg))
        opened.append(db)
        with db.transaction():
            db.executescript(schema.challenge_ddl())
            db.executemany("INSERT INTO session_sources VALUES (?, ?, ?, ?, ?, 1, 1, 0)", SESSIONS)
            db.executemany("INSERT INTO conversions VALUES (?, ?, ?, ?, ?)", conversions)
            db.executemany("INSERT INTO session_costs VALUES (?, ?)", costs)
        return db

    try:
        yield "postgres", load
    finally:
        for db in opened:
            db.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_absurd_money_is_quarantined_or_left_out_and_every_sum_stays_exact(engine, tmp_path):
    name, load = engine
    conversions, costs, absurd, unusable = _rows(name)
    db = load(conversions, costs)
    summary = run_stages(db, "r", "2024-01-02", "2024-01-02", output_dir=tmp_path / "out")
    issues = dict(db.query("SELECT conv_id, detail FROM attribution_issues WHERE reason = 'invalid_input'"))
    attributed = {c for (c,) in db.query("SELECT DISTINCT conv_id FROM attribution_customer_journey")}
    report = db.query("SELECT channel_name, cost, ihc, ihc_revenue FROM channel_reporting")

    assert set(issues) == absurd and attributed == {"ok", "edge"}
    assert issues["inf"] == issues["huge"] == issues["over"] == (
        f"conversion: revenue is infinite or beyond {MAX_MONEY:,} (more than exact sums can hold)")
    if "nan" in issues:
        assert issues["nan"] == "conversion: revenue is missing, negative or not a number"
    assert summary.source_warnings["unusable_costs"] == unusable
    assert summary.source_warnings["negative_costs"] == 1  # -0.25; -inf is unusable, not a refund
    # the usable costs (1.5 - 0.25 + 2.0), both conversions' whole revenue, to the cent
    assert report == [("Search", 3.25, 2.0, float(MAX_MONEY) + 100.25)]
    assert (summary.cost, summary.ihc_revenue) == (Decimal("3.25"), Decimal(MAX_MONEY) + Decimal("100.25"))
    with open(tmp_path / "out" / "channel_reporting_2024-01-02_2024-01-02.csv", newline="") as handle:
        assert [(r["cost"], r["ihc_revenue"]) for r in csv.DictReader(handle)] == [("3.25", f"{MAX_MONEY + 100}.25")]
    db.close()


def test_a_clean_conversion_on_sqlite_never_holds_absurd_revenue(tmp_path):
    """The SQLite shortcut that stages clean conversions without Python stops at the same bound."""
    from ihc_attribution.validation import CLEAN_CONVERSION

    path = make_db(tmp_path / "db.sqlite", [], [("a", "u", "2024-01-02", "10:00:00", MAX_MONEY + 1.0),
                                                ("b", "u", "2024-01-02", "10:00:00", float(MAX_MONEY))], [])
    with sqlite3.connect(path) as conn:
        clean = {c for (c,) in conn.execute(f"SELECT conv_id FROM conversions WHERE {CLEAN_CONVERSION['sqlite']}")}
    assert clean == {"b"}
