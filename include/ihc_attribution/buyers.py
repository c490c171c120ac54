"""The extraction's copy of the sessions of every user who converted: one pass over ``session_sources``.

The run's journeys, the validation of their sessions and the comparison of the journeys attributed
earlier (see :mod:`drift`) read this temporary table (about 1% of the sessions) instead of the
source. Making it writes no table of the database, so it happens outside the write transaction.
"""

from __future__ import annotations

from ihc_attribution import sources, validation
from ihc_attribution.db import Database
from ihc_attribution.schema import CONVERSIONS, SESSION_SOURCES, has_index_on, rowid_slices

# Every user with a conversion in the sources or an attributed journey: the pass probes this small
# table instead of an index over the whole source built beforehand.
BUYERS = "attribution_tmp_buyers"
BUYER_SESSIONS = "attribution_tmp_buyer_sessions"
LATE_BUYERS = "attribution_tmp_late_buyers"
_BUYERS_SQL = (
    f"INSERT INTO {BUYERS} (user_id) SELECT u.user_id FROM ("
    "SELECT CAST(user_id AS TEXT) AS user_id FROM {conversions} WHERE user_id IS NOT NULL "
    "UNION SELECT user_id FROM attribution_journeys WHERE user_id IS NOT NULL) AS u"
)
# Session ids are copied as text, as the package's tables hold them, so that equal timestamps are
# ordered by the id in byte order on every engine (the INTEGER 10 as '10' is before '9', as the
# credit and the comparison order them). PostgreSQL compares a BIGINT user id with text only once
# cast; SQLite compares an INTEGER one by its affinity. CREATE TABLE ... AS SELECT keeps the other
# columns' types, so values are copied unchanged.
_SELECT = """
SELECT {ids}, s.event_date, s.event_time, s.channel_name,
       s.holder_engagement, s.closer_engagement, s.impression_interaction,
       CASE WHEN {clean} THEN 1 ELSE 0 END AS clean
FROM {sessions} s
WHERE s.user_id IN (SELECT {buyer} FROM {buyers})
"""
_IDS = {
    "sqlite": "CAST(s.session_id AS TEXT) AS session_id, s.user_id",
    "postgresql": "CAST(s.session_id AS TEXT) AS session_id, CAST(s.user_id AS TEXT) AS user_id",
}
# A user's sessions in the order of the conversion flag, with every column the journeys read, so
# that they never sort nor look a row up in the table (a random read per session).
_BUYER_SESSIONS_INDEX = (
    f"CREATE INDEX attribution_tmp_ix_buyer_sessions ON {BUYER_SESSIONS} (user_id, event_date, event_time, session_id, "
    "channel_name, holder_engagement, closer_engagement, impression_interaction)"
)
# SQLite's default page cache (2,000 KiB) does not hold the users' key of a month on a large
# database (120,000 users: 6 MB): each search of the pass then reads the temporary file again,
# and the pass took 3 to 4 times as long.
_DEFAULT_CACHE_KIB = 2000


def buyer_sessions_select(db: Database, buyers: str = BUYERS) -> str:
    """The one pass over ``session_sources``: the sessions of the users in ``buyers``, each marked clean or not."""
    return _SELECT.format(
        ids=_IDS[db.dialect], clean=validation.CLEAN_SESSION[db.dialect], buyers=buyers,
        buyer=sources.cast_to_column(db, "user_id", SESSION_SOURCES, "user_id"), sessions=sources.table(db, SESSION_SOURCES),
    )


def stage_buyer_sessions(db: Database) -> None:
    """Copy every session of every converting or attributed user into a temporary table (one pass)."""
    if db.is_sqlite:
        # In 64 KiB pages the users' key of a daily run is one page instead of two levels of 4 KiB
        # ones: each search is about a fifth cheaper. It takes effect only before the connection's
        # own temporary database exists (as in a task's connection), and changes nothing else.
        db.execute("PRAGMA temp.page_size = 65536")
    drop_buyer_sessions(db)
    db.execute(f"CREATE TEMP TABLE {BUYERS} (user_id TEXT PRIMARY KEY)")
    db.execute(_BUYERS_SQL.format(conversions=sources.relation(db, CONVERSIONS)))
    if db.is_sqlite:
        size_kib = int(db.scalar("PRAGMA temp.page_count")) * int(db.scalar("PRAGMA temp.page_size")) // 1024
        if size_kib > _DEFAULT_CACHE_KIB // 2:
            db.execute(f"PRAGMA temp.cache_size = -{_DEFAULT_CACHE_KIB + size_kib}")
    select = buyer_sessions_select(db)
    # Without an index on user_id the pass reads every row: in slices on SQLite (see rowid_slices).
    slices = None if has_index_on(db, SESSION_SOURCES, "user_id") else rowid_slices(db, SESSION_SOURCES)
    if slices is None:
        db.execute(f"CREATE TEMP TABLE {BUYER_SESSIONS} AS{select}")
    else:
        db.execute(f"CREATE TEMP TABLE {BUYER_SESSIONS} AS{select}  AND 1 = 0")
        for low, high in slices:
            db.execute(f"INSERT INTO {BUYER_SESSIONS}{select}  AND s.rowid BETWEEN ? AND ?", (low, high))
    db.execute(_BUYER_SESSIONS_INDEX)


def drop_buyer_sessions(db: Database) -> None:
    for table in (BUYER_SESSIONS, BUYERS, LATE_BUYERS):
        db.execute(f"DROP TABLE IF EXISTS {table}")


def copy_late_users(db: Database, run_id: str) -> int:
    """Copy the sessions of the users of staged conversions that were not in the sources when the copy was made.

    A loader may commit a new user's sessions and conversion between the copy and the staging.
    Sessions of users already copied that arrive meanwhile are the next run's to see (the
    comparison then names the journey). Returns the users read late.
    """
    db.execute(f"DROP TABLE IF EXISTS {LATE_BUYERS}")
    db.execute(f"CREATE TEMP TABLE {LATE_BUYERS} (user_id TEXT PRIMARY KEY)")
    late = db.execute(
        f"INSERT INTO {LATE_BUYERS} (user_id) SELECT DISTINCT user_id FROM attribution_stg_conversions "
        f"WHERE run_id = ? AND status = 'ready' AND user_id IS NOT NULL AND user_id NOT IN (SELECT user_id FROM {BUYERS})",
        (run_id,),
    )
    if late > 0:
        db.execute(f"INSERT INTO {BUYER_SESSIONS}{buyer_sessions_select(db, LATE_BUYERS)}")
        db.execute(f"INSERT INTO {BUYERS} (user_id) SELECT user_id FROM {LATE_BUYERS}")
    return max(late, 0)
