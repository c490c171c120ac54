"""Table names and schema set-up.

The DDL lives in ``sql/``: the challenge schema (source tables and the two result tables) and
the package's own tables (issues, runs, staging) with the indexes the queries rely on.
"""

from __future__ import annotations

from importlib import resources

from ihc_attribution.db import Database

SESSION_SOURCES = "session_sources"
CONVERSIONS = "conversions"
SESSION_COSTS = "session_costs"
ATTRIBUTION = "attribution_customer_journey"
CHANNEL_REPORTING = "channel_reporting"
ISSUES = "attribution_issues"
RUNS = "attribution_runs"

SOURCE_TABLES = (SESSION_SOURCES, CONVERSIONS, SESSION_COSTS)
RESULT_TABLES = (ATTRIBUTION, CHANNEL_REPORTING)
STAGING_TABLES = (
    "attribution_stg_conversions",
    "attribution_stg_sessions",
    "attribution_stg_requests",
    "attribution_stg_request_journeys",
    "attribution_stg_results",
    "attribution_stg_journey_keys",
    "attribution_stg_answered",
    "attribution_stg_issues",
    "attribution_stg_report_dates",
)


def read_sql(name: str) -> str:
    """Return the text of a file in the package's ``sql/`` folder."""
    return resources.files("ihc_attribution").joinpath("sql", name).read_text(encoding="utf-8")


def challenge_ddl() -> str:
    """The clean DDL of the challenge database."""
    return read_sql("challenge_schema.sql")


def ensure_schema(db: Database) -> None:
    """Create every table and index the pipeline needs, leaving existing data untouched."""
    with db.transaction():
        db.executescript(challenge_ddl())
        db.executescript(read_sql("package_schema.sql"))


def purge_staging(db: Database, created_before: str, keep_run_id: str | None = None) -> int:
    """Delete the staging rows of runs first seen before ``created_before`` (UTC timestamp).

    Staging is kept after a run so that any task of it can be re-run on its own; this bounds
    how long. Returns the number of runs purged.
    """
    with db.transaction():
        runs = [
            r for (r,) in db.query("SELECT run_id FROM attribution_runs WHERE created_at < ?", (created_before,))
            if r != keep_run_id
        ]
        for run_id in runs:
            for table in STAGING_TABLES:
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM attribution_runs WHERE run_id = ?", (run_id,))
    return len(runs)


def has_unique_key(db: Database, table: str, column: str) -> bool:
    """Whether ``table.column`` alone is a primary key or carries a unique index (no NULL check).

    The source tables of the challenge schema have one; exports often do not, and then a row may
    be present twice. Queries use this to skip deduplication work that a key makes unneeded.
    """
    if db.is_sqlite:
        pk = [(r[1], str(r[2]).upper()) for r in db.query(f"PRAGMA table_info({table})") if r[5]]
        if pk == [(column, "INTEGER")]:  # the rowid itself: no index is listed for it
            return True
        for _, name, unique, _origin, partial in db.query(f"PRAGMA index_list({table})"):
            if unique and not partial and [r[2] for r in db.query(f"PRAGMA index_info({name})")] == [column]:
                return True
        return False
    return bool(
        db.scalar(
            "SELECT COUNT(*) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
            "WHERE t.relname = ? AND a.attname = ? AND i.indisunique AND i.indnatts = 1 "
            "AND i.indpred IS NULL AND pg_table_is_visible(t.oid)",
            (table, column),
        )
    )
