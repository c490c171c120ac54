"""Table names and schema set-up.

The DDL lives in ``sql/``: the challenge schema (source tables and the two result tables) and
the package's own tables (issues, runs, staging) with the indexes the queries rely on.
"""

from __future__ import annotations

from importlib import resources

from include.attribution.db import Database

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
    "attribution_stg_issues",
    "attribution_stg_report_dates",
)


def read_sql(name: str) -> str:
    """Return the text of a file in the package's ``sql/`` folder."""
    return resources.files("include.attribution").joinpath("sql", name).read_text(encoding="utf-8")


def challenge_ddl() -> str:
    """The clean DDL of the challenge database."""
    return read_sql("challenge_schema.sql")


def ensure_schema(db: Database) -> None:
    """Create every table and index the pipeline needs, leaving existing data untouched."""
    with db.transaction():
        db.executescript(challenge_ddl())
        db.executescript(read_sql("package_schema.sql"))
