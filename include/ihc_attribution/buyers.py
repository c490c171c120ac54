"""The extraction's copy of the sessions of every user who converted: one pass over ``session_sources``.

The run's journeys, the validation of their sessions and the comparison of the journeys
attributed earlier (see :mod:`drift`) all read this copy, a temporary table of the connection
(about 1% of the sessions), instead of the source table. Making it writes no table of the
database, so it happens outside the write transaction.
"""

from __future__ import annotations

from ihc_attribution import sources, validation
from ihc_attribution.db import Database
from ihc_attribution.schema import CONVERSIONS, SESSION_SOURCES, has_index_on, rowid_slices

# Every user with a conversion in the sources or an attributed journey, and every session of
# theirs: one pass over session_sources that probes the small table of users, instead of an
# index over the whole table built beforehand. Validation, duplicate detection, the journeys and
# the comparison of the attributed ones then read the copy (about 1% of the sessions).
# CREATE TABLE ... AS SELECT keeps the source columns' types, so values are copied unchanged.
BUYERS = "attribution_tmp_buyers"
BUYER_SESSIONS = "attribution_tmp_buyer_sessions"
#: Users of conversions loaded while the run was reading (see :func:`_copy_late_users`).
LATE_BUYERS = "attribution_tmp_late_buyers"
_BUYERS_DDL = f"CREATE TEMP TABLE {BUYERS} (user_id TEXT PRIMARY KEY)"
_BUYERS_SQL = (
    f"INSERT INTO {BUYERS} (user_id) SELECT u.user_id FROM ("
    "SELECT CAST(user_id AS TEXT) AS user_id FROM {conversions} WHERE user_id IS NOT NULL "
    "UNION SELECT user_id FROM attribution_journeys WHERE user_id IS NOT NULL) AS u"
)


# The copy holds the session ids as text, as the package's tables do, whatever type the source
# gives them: equal timestamps are then ordered by the id in byte order on every engine (an
# INTEGER 10 after 9 as the text '10' is before '9', as the credit and the comparison order them).
# PostgreSQL compares a BIGINT user id with text only once cast; SQLite compares an INTEGER one
# with text by its affinity, so it is copied as it is.
_BUYER_SESSIONS_SELECT = """
SELECT {ids}, s.event_date, s.event_time, s.channel_name,
       s.holder_engagement, s.closer_engagement, s.impression_interaction,
       CASE WHEN {clean} THEN 1 ELSE 0 END AS clean
FROM {sessions}
WHERE s.user_id IN (SELECT {buyer} FROM {buyers})
"""
_IDS = {
    "sqlite": "CAST(s.session_id AS TEXT) AS session_id, s.user_id",
    "postgresql": "CAST(s.session_id AS TEXT) AS session_id, CAST(s.user_id AS TEXT) AS user_id",
}


def buyer_sessions_sql(dialect: str, buyer: str = "user_id", sessions: str = "session_sources s",
                       buyers: str = BUYERS) -> str:
    """The one pass over ``session_sources``: the sessions of the users in ``buyers``, each marked clean or not.

    ``buyer`` is the buyers' id as the source's ``user_id`` column compares it (see
    :func:`sources.cast_to_column`); ``sessions`` the source aliased ``s`` (see :func:`sources.table`).
    """
    select = _BUYER_SESSIONS_SELECT.format(
        ids=_IDS[dialect], clean=validation.CLEAN_SESSION[dialect], buyer=buyer, buyers=buyers, sessions=sessions
    )
    return f"CREATE TEMP TABLE {BUYER_SESSIONS} AS{select}"


def _buyer_sessions_sql(db: Database, buyers: str = BUYERS) -> str:
    return buyer_sessions_sql(db.dialect, sources.cast_to_column(db, "user_id", SESSION_SOURCES, "user_id"),
                              f"{sources.table(db, SESSION_SOURCES)} s", buyers)


_BUYER_SESSIONS_SQL = buyer_sessions_sql("sqlite")
_TEMP_PAGE_SIZE = 65_536
# A user's sessions in the order of the conversion flag: the journeys need no sort. It holds
# every column the journeys read, so that they never look a row up in the table (a random read
# per session: on a large run the copy is far larger than the cache).
_BUYER_SESSIONS_INDEX = (
    f"CREATE INDEX attribution_tmp_ix_buyer_sessions ON {BUYER_SESSIONS} (user_id, event_date, event_time, session_id, "
    "channel_name, holder_engagement, closer_engagement, impression_interaction)"
)


def stage_buyer_sessions(db: Database) -> None:
    """Copy every session of every converting or attributed user into a temporary table (one pass).

    Writes temporary tables only (no write lock on the database). The tables live as long as the
    connection; :func:`drop_buyer_sessions` removes them.
    """
    if db.is_sqlite:
        # The pass searches the users' key once per session of the database. In 64 KiB pages the
        # key of up to about 3,000 users (a daily run) is one page instead of two levels of 4 KiB
        # ones, which makes each search about a fifth cheaper. It only takes effect before the
        # connection's temporary database exists (as in a task's own connection); later it is
        # ignored, which changes nothing else. The temporary database is the connection's own.
        db.execute(f"PRAGMA temp.page_size = {_TEMP_PAGE_SIZE}")
    drop_buyer_sessions(db)
    db.execute(_BUYERS_DDL)
    db.execute(_BUYERS_SQL.format(conversions=sources.relation(db, CONVERSIONS)))
    cache = _buyers_cache_sql(db) if db.is_sqlite else None
    if cache:
        db.execute(cache)
    create = _buyer_sessions_sql(db)
    # Without an index on user_id the pass reads every row: in slices on SQLite (see rowid_slices).
    slices = None if has_index_on(db, SESSION_SOURCES, "user_id") else rowid_slices(db, SESSION_SOURCES)
    if slices is None:
        db.execute(create)
    else:
        db.execute(create + "  AND 1 = 0")
        select = create.split(" AS", 1)[1]
        for low, high in slices:
            db.execute(f"INSERT INTO {BUYER_SESSIONS}{select}  AND s.rowid BETWEEN ? AND ?", (low, high))
    db.execute(_BUYER_SESSIONS_INDEX)


# SQLite's default page cache (2,000 KiB) holds the users' key of a daily run many times over,
# but not that of a month on a large database (120,000 users: 6 MB): each of the pass's searches
# then reads pages of the temporary file again, and the pass took 3 to 4 times as long.
_DEFAULT_CACHE_KIB = 2000


def _buyers_cache_sql(db: Database) -> str | None:
    """The statement that lets the temporary database's cache hold the users' key and the default more."""
    size_kib = int(db.scalar("PRAGMA temp.page_count")) * int(db.scalar("PRAGMA temp.page_size")) // 1024
    return f"PRAGMA temp.cache_size = -{_DEFAULT_CACHE_KIB + size_kib}" if size_kib > _DEFAULT_CACHE_KIB // 2 else None


def drop_buyer_sessions(db: Database) -> None:
    """Remove the temporary tables of :func:`stage_buyer_sessions`."""
    for table in (BUYER_SESSIONS, BUYERS, LATE_BUYERS):
        db.execute(f"DROP TABLE IF EXISTS {table}")


def copy_late_users(db: Database, run_id: str) -> int:
    """Copy the sessions of the users of staged conversions that were not in the sources when the copy was made.

    A loader may commit a new user's sessions and conversion between the copy and the staging;
    such a user's sessions are read now (a probe of ``session_sources`` for those users only).
    Sessions of users already copied that arrive meanwhile are the next run's to see (the
    comparison then names the journey). Returns the number of users read late.
    """
    db.execute(f"DROP TABLE IF EXISTS {LATE_BUYERS}")
    db.execute(f"CREATE TEMP TABLE {LATE_BUYERS} (user_id TEXT PRIMARY KEY)")
    late = db.execute(
        f"INSERT INTO {LATE_BUYERS} (user_id) SELECT DISTINCT user_id FROM attribution_stg_conversions "
        f"WHERE run_id = ? AND status = 'ready' AND user_id IS NOT NULL AND user_id NOT IN (SELECT user_id FROM {BUYERS})",
        (run_id,),
    )
    if late > 0:
        select = _buyer_sessions_sql(db, LATE_BUYERS).split(" AS", 1)[1]
        db.execute(f"INSERT INTO {BUYER_SESSIONS}{select}")
        db.execute(f"INSERT INTO {BUYERS} (user_id) SELECT user_id FROM {LATE_BUYERS}")
    return max(late, 0)
