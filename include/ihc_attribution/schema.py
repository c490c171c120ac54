"""Table names, the package's schema and its upgrades.

The package creates and changes only its own tables: ``attribution_customer_journey``,
``channel_reporting`` and the ``attribution_*`` tables (DDL in ``sql/``). The source tables
(``session_sources``, ``conversions``, ``session_costs``) belong to the user: they are checked
for and read, never created, altered, indexed or given triggers. ``attribution_schema_version``
records the versions applied, so that an upgrade knows what to migrate.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

from ihc_attribution import sources
from ihc_attribution.db import BYTE_ORDER, Database
from ihc_attribution.sources import (  # noqa: F401 - where callers look for them
    CONVERSIONS,
    SESSION_COSTS,
    SESSION_SOURCES,
    SOURCE_TABLES,
    SourceTableError,
    has_index_on,
    has_unique_key,
)

log = logging.getLogger(__name__)

ATTRIBUTION = "attribution_customer_journey"
CHANNEL_REPORTING = "channel_reporting"
ISSUES = "attribution_issues"

#: Version 2: sources read-only (no triggers, no indexes on them), spend and credit in exact integers.
#: Version 3: attribution_journeys (what drift detection compares), the day of each issue.
SCHEMA_VERSION = 3
# What version 1 left on the source tables and beside them: its triggers (by name prefix), their
# PostgreSQL function, and the tables only they wrote.
_LEGACY_TRIGGER_PREFIX = "attribution_totals_"
_LEGACY_FUNCTION = "attribution_totals_v1_mark"
_LEGACY_TABLES = (
    "attribution_session_totals",
    "attribution_session_totals_stale",
    "attribution_session_totals_moved",
    "attribution_session_totals_state",
    "attribution_report_outdated_dates",
)


def read_sql(name: str) -> str:
    return resources.files("ihc_attribution").joinpath("sql", name).read_text(encoding="utf-8")


#: The staging tables, keyed by run id, as ``sql/package_schema.sql`` creates them.
STAGING_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (attribution_stg_\w+)", read_sql("package_schema.sql")))


def challenge_ddl() -> str:
    """The clean DDL of the challenge database; the pipeline runs only its result tables' statements."""
    return read_sql("challenge_schema.sql")


def check_sources(db: Database) -> None:
    """:raises SourceTableError: in one line, when a source table, a column or its type cannot be read."""
    sources.check(db)


def ensure_schema(db: Database) -> None:
    """Create the package's tables and indexes, and upgrade what an earlier version left.

    Idempotent, and a no-op beyond ``IF NOT EXISTS`` checks once the current version is recorded.
    """
    with db.transaction():
        challenge = challenge_ddl()  # the source tables, then the result tables: only these are created
        db.executescript(challenge[challenge.index(f"CREATE TABLE IF NOT EXISTS {ATTRIBUTION}"):])
        package_ddl = read_sql("package_schema.sql")
        rebuilt = _drop_reshaped_derived_tables(db, package_ddl)
        db.executescript(package_ddl)
        if "conv_date" not in db.columns(ISSUES):  # added by version 3
            db.execute(f"ALTER TABLE {ISSUES} ADD COLUMN conv_date TEXT")
        applied = db.scalar("SELECT MAX(version) FROM attribution_schema_version")
        current = applied is not None and applied >= SCHEMA_VERSION
        if rebuilt or not current:
            _fill_credit(db)
            _fill_journeys(db)
        if current:
            return
        _remove_legacy(db)
        db.execute(
            "INSERT INTO attribution_schema_version (version, applied_at) VALUES (?, CURRENT_TIMESTAMP)",
            (SCHEMA_VERSION,),
        )


#: Tables the package derives from others, rebuilt when their columns are not those of the DDL: the
#: credit from the stored attribution and the sources (:func:`_fill_credit`), the spend by reading
#: its dates again (they are forgotten with it).
_DERIVED = ("attribution_credit", "attribution_journeys", "attribution_spend", "attribution_spend_dates")


def _drop_reshaped_derived_tables(db: Database, ddl: str) -> bool:
    """Drop the derived tables when one of them has other columns than ``ddl`` gives it; return whether."""
    for table in _DERIVED:
        block = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\);", ddl, re.DOTALL)
        wanted = {line.split()[0] for line in block.group(1).splitlines()
                  if line.strip() and not line.strip().startswith(("--", "PRIMARY"))}
        if db.table_exists(table) and db.columns(table) != wanted:
            log.warning("%s has other columns than this version's: it is built again", table)
            for derived in _DERIVED:
                db.execute(f"DROP TABLE IF EXISTS {derived}")
            return True
    return False


def _remove_legacy(db: Database) -> None:
    """Remove version 1's triggers on the source tables, their function and the tables only they used.

    Only objects of the package are dropped, found by their names (on PostgreSQL the triggers by
    their function); a user's index or trigger is never touched.
    """
    if db.is_sqlite:
        triggers = db.query("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                            (len(_LEGACY_TRIGGER_PREFIX), _LEGACY_TRIGGER_PREFIX))
    else:
        triggers = db.query("SELECT tgname, CAST(tgrelid::regclass AS TEXT) FROM pg_trigger WHERE tgfoid = to_regproc(?)",
                            (_LEGACY_FUNCTION,))
    removed = []
    for name, table in triggers:
        db.execute(f"DROP TRIGGER IF EXISTS {name}" + ("" if db.is_sqlite else f" ON {table}"))
        removed.append(f"trigger {name} on {table}")
    if not db.is_sqlite and db.scalar("SELECT to_regproc(?) IS NOT NULL", (_LEGACY_FUNCTION,)):
        db.execute(f"DROP FUNCTION {_LEGACY_FUNCTION}()")
        removed.append(f"function {_LEGACY_FUNCTION}")
    for table in _LEGACY_TABLES:
        if db.table_exists(table):
            db.execute(f"DROP TABLE {table}")
            removed.append(f"table {table}")
    if removed:
        log.warning("upgraded the attribution schema to version %d; removed what an earlier version had "
                    "created: %s", SCHEMA_VERSION, ", ".join(removed))


def _fill_credit(db: Database) -> None:
    """Give attribution rows stored by an earlier version their dated credit (one read of the sources)."""
    if db.scalar(f"SELECT COUNT(*) FROM (SELECT 1 FROM {ATTRIBUTION} a WHERE NOT EXISTS "
                 "(SELECT 1 FROM attribution_credit c WHERE c.conv_id = a.conv_id) LIMIT 1) AS missing") == 0:
        return
    from ihc_attribution import credit

    added = db.execute(credit.insert_sql(
        db,
        "SELECT a.conv_id, CAST(v.conv_date AS TEXT) AS conv_date, "
        "CAST(v.conv_date AS TEXT) || ' ' || CAST(v.conv_time AS TEXT) AS conv_ts, CAST(v.user_id AS TEXT) AS user_id, "
        "a.session_id, "
        "CAST(s.event_date AS TEXT) || ' ' || CAST(s.event_time AS TEXT) AS ts, s.channel_name, a.ihc, v.revenue "
        f"FROM {ATTRIBUTION} a JOIN {sources.table(db, SESSION_SOURCES)} s ON CAST(s.session_id AS TEXT) = a.session_id "
        f"JOIN {sources.table(db, CONVERSIONS)} v ON CAST(v.conv_id AS TEXT) = a.conv_id "
        "WHERE s.event_date IS NOT NULL AND s.event_time IS NOT NULL AND s.channel_name IS NOT NULL "
        "AND v.revenue IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM attribution_credit c WHERE c.conv_id = a.conv_id)",
    ))
    log.warning("gave %d attribution rows of an earlier version their dated credit", added)


def _fill_journeys(db: Database) -> None:
    """Record the journeys of credit stored by an earlier version, for drift detection.

    Their look-back is taken as unlimited, and a truncated journey's length as the sessions it was
    credited over: such a journey may be named as changed once, and its re-run records it exactly.
    """
    added = db.execute(
        "INSERT INTO attribution_journeys (conv_id, user_id, conv_date, conv_ts, since_ts, sessions, sent, first_ts, "
        "first_session_id, revenue_micros) "
        "SELECT conv_id, user_id, conv_date, conv_ts, NULL, n, n, session_ts, session_id, revenue_micros FROM ("
        " SELECT conv_id, user_id, conv_date, conv_ts, session_ts, session_id, revenue_micros,"
        " COUNT(*) OVER (PARTITION BY conv_id) AS n,"
        f" ROW_NUMBER() OVER (PARTITION BY conv_id ORDER BY session_ts, session_id{BYTE_ORDER[db.dialect]}) AS pos"
        " FROM attribution_credit c WHERE NOT EXISTS (SELECT 1 FROM attribution_journeys j WHERE j.conv_id = c.conv_id)"
        ") AS placed WHERE pos = 1"
    )
    if added:
        log.warning("recorded the journeys of %d conversions attributed by an earlier version", added)


#: Indexes on the source tables the queries use when the user has created them, and what each saves.
#: The package never creates them (README, "Indexes on your tables").
SOURCE_INDEXES = (
    (SESSION_SOURCES, "user_id", "the extraction reads the sessions of the run's buyers only, not the whole table"),
    (SESSION_SOURCES, "event_date", "the report reads the sessions of the dates it refreshes only, not the whole table"),
)


def index_advice(db: Database) -> list[str]:
    """The documented indexes missing on the source tables, each as ``CREATE INDEX ...: what it saves``.

    Views and derived columns (a timestamp's date) are left out: an index of the table does not serve them.
    """
    advice = []
    for table, column, saves in SOURCE_INDEXES:
        src = sources.source(db, table)
        own = src.physical[column]
        if own is None or sources.is_view(db, table) or has_index_on(db, table, column):
            continue
        name = f"ix_{table}_{column}" if src.ref == table and own == column else sources.quote(f"ix_{src.table}_{own}")
        advice.append(f"CREATE INDEX {name} ON {src.ref} ({column if own == column else sources.quote(own)}): {saves}")
    return advice


def purge_staging(db: Database, created_before: str, keep_run_id: str | None = None) -> int:
    """Delete the staging rows of runs first seen before ``created_before`` (UTC); return how many runs.

    Staging is kept after a run so that any task of it can be re-run on its own; this bounds how long.
    """
    old, params = "SELECT run_id FROM attribution_runs WHERE created_at < ? AND run_id <> ?", (created_before, keep_run_id or "")
    with db.transaction():
        for table in STAGING_TABLES:
            db.execute(f"DELETE FROM {table} WHERE run_id IN ({old})", params)
        return db.execute(f"DELETE FROM attribution_runs WHERE run_id IN ({old})", params)


#: Rows of a source table one reading statement covers on SQLite (see :func:`rowid_slices`).
SLICE_ROWS = 250_000


def rowid_slices(db: Database, table: str, rows: int | None = None) -> list[tuple[int, int]] | None:
    """Ranges of ``table``'s rowids, about ``rows`` each, for reading a SQLite table in short statements.

    In a rollback-journal file a reading statement holds the shared lock while it runs, and a
    loader's commit waits for it: a scan of millions of rows read in slices makes it wait for one
    slice at a time. None on PostgreSQL (readers never block writers there), for a view and for a
    table without rowids: those are read in one statement.
    """
    if not db.is_sqlite:
        return None
    src = sources.source(db, table)
    # A source configured elsewhere, or read through a subquery (a derived column): a subquery's
    # rowid is NULL, so a slice of it would read nothing. One statement.
    if src.ref != table or not src.plain:
        return None
    found = db.query("SELECT type, sql FROM sqlite_master WHERE name = ?", (table,))
    if not found or found[0][0] != "table" or "WITHOUT ROWID" in str(found[0][1]).upper():
        return None
    # Apart: each is one look at an end of the table (together they would scan it).
    low, high = (db.scalar(f"SELECT {end}(rowid) FROM {table}") for end in ("MIN", "MAX"))
    if low is None:
        return []
    rows = rows or SLICE_ROWS
    return [(start, min(start + rows - 1, high)) for start in range(low, high + 1, rows)]

