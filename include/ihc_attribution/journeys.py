"""Stage 2: find the run's conversions, check the input, and build their customer journeys.

A journey is every session of the conversion's user whose timestamp is strictly before the
conversion's timestamp (optionally limited by a look-back window). Journeys are built in SQL on
the database side, from a copy of the sessions of every user who converted, made in one pass
over ``session_sources``; the same copy tells which journeys attributed earlier no longer match
the sources (see :mod:`drift`). Python validates the conversions of the run and those sessions,
in bounded batches, so that malformed input is quarantined with a reason instead of being
compared as text and silently dropped; on SQLite only the rows the database cannot tell are
well-formed are read for that (see ``validation.CLEAN_SESSION``).

The reading (the pass, the validation, the comparison) writes only temporary tables, outside
the write transaction; the transaction then stages the run's conversions and journeys from
them, so the lock other writers wait for is held for the staging only.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import pandas as pd

from ihc_attribution import conversions, drift, reuse, validation
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import Database, storable
from ihc_attribution.schema import SESSION_SOURCES, STAGING_TABLES, has_index_on, has_unique_key, rowid_slices
from ihc_attribution.validation import (  # noqa: F401 - the reasons, where callers look for them
    API_REJECTED,
    DUPLICATE,
    INVALID_INPUT,
    NO_SESSIONS,
    OVERSIZED,
    UNPLACEABLE,
)

log = logging.getLogger(__name__)

_MAX_DETAIL_ITEMS = 5
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
    "SELECT CAST(user_id AS TEXT) AS user_id FROM conversions WHERE user_id IS NOT NULL "
    "UNION SELECT user_id FROM attribution_journeys WHERE user_id IS NOT NULL) AS u"
)


# The copy holds the ids as text, as the package's tables do, whatever type the source gives them
# (PostgreSQL compares a BIGINT id with text only once cast; SQLite stores them as they are).
_BUYER_SESSIONS_SELECT = """
SELECT {ids}, s.event_date, s.event_time, s.channel_name,
       s.holder_engagement, s.closer_engagement, s.impression_interaction,
       CASE WHEN {clean} THEN 1 ELSE 0 END AS clean
FROM session_sources s
WHERE s.user_id IN (SELECT {buyer} FROM {buyers})
"""
_IDS = {
    "sqlite": "s.session_id, s.user_id",
    "postgresql": "CAST(s.session_id AS TEXT) AS session_id, CAST(s.user_id AS TEXT) AS user_id",
}


def buyer_sessions_sql(dialect: str, buyer: str = "user_id") -> str:
    """The one pass over ``session_sources``: the sessions of the run's users, each marked clean or not.

    ``buyer`` is the buyers' id as the source's ``user_id`` column compares it (see
    :meth:`Database.cast_to_column`).
    """
    select = _BUYER_SESSIONS_SELECT.format(ids=_IDS[dialect], clean=validation.CLEAN_SESSION[dialect], buyer=buyer, buyers=BUYERS)
    return f"CREATE TEMP TABLE {BUYER_SESSIONS} AS{select}"


_BUYER_SESSIONS_SQL = buyer_sessions_sql("sqlite")
_TEMP_PAGE_SIZE = 65_536
# A user's sessions in the order of the conversion flag: the journeys need no sort. It holds
# every column the journeys read, so that they never look a row up in the table (a random read
# per session: on a large run the copy is far larger than the cache).
_BUYER_SESSIONS_INDEX = (
    f"CREATE INDEX attribution_tmp_ix_buyer_sessions ON {BUYER_SESSIONS} (user_id, event_date, event_time, session_id, "
    "channel_name, holder_engagement, closer_engagement, impression_interaction)"
)

# Session ids of the converting users that are present more than once anywhere in the table.
# Asked only when session_id has no primary key or unique index (then it is one more pass).
_DUPLICATE_SESSIONS_SQL = """
SELECT {session_id}, COUNT(*) FROM session_sources
WHERE {session_id} IN (SELECT session_id FROM {copy})
GROUP BY session_id HAVING COUNT(*) > 1
"""
# The id as the copy holds it (see _IDS).
_SESSION_ID = {"sqlite": "session_id", "postgresql": "CAST(session_id AS TEXT)"}

_USER_SESSIONS_SQL = f"""
SELECT s.session_id, s.user_id, CAST(s.event_date AS TEXT), CAST(s.event_time AS TEXT), s.channel_name,
       s.holder_engagement, s.closer_engagement, s.impression_interaction
FROM {BUYER_SESSIONS} s
"""
_UNCLEAN_USER_SESSIONS_SQL = _USER_SESSIONS_SQL + "WHERE s.clean = 0\n"

# The conversion flag marks the latest session of each journey; equal timestamps are broken by
# the larger session id so the choice is deterministic. The user's sessions are read from the
# index in that order, so the window needs no sort.
_JOURNEYS_SQL = """
INSERT INTO attribution_stg_sessions (
    run_id, conv_id, session_id, event_ts, channel_name,
    holder_engagement, closer_engagement, impression_interaction, conversion
)
SELECT c.run_id, c.conv_id, s.session_id,
       s.event_date || ' ' || s.event_time,
       s.channel_name, s.holder_engagement, s.closer_engagement, s.impression_interaction,
       CASE WHEN ROW_NUMBER() OVER (
           PARTITION BY c.conv_id
           ORDER BY s.event_date DESC, s.event_time DESC, s.session_id DESC
       ) = 1 THEN 1 ELSE 0 END
FROM attribution_stg_conversions c
JOIN {buyer_sessions} s ON s.user_id = c.user_id
WHERE c.run_id = ? AND c.status = 'ready'
  AND ({event_date} < c.conv_date OR ({event_date} = c.conv_date AND {event_time} < c.conv_time))
  {lookback}
"""
# The staged conversion's date and time are text; PostgreSQL compares DATE and TIME columns
# with text only once cast (SQLite stores them as text already, and keeps its index use).
_SESSION_DATE = {"sqlite": "s.event_date", "postgresql": "CAST(s.event_date AS TEXT)"}
_SESSION_TIME = {"sqlite": "s.event_time", "postgresql": "CAST(s.event_time AS TEXT)"}
_LOOKBACK = {
    "sqlite": "AND s.event_date || ' ' || s.event_time >= datetime(c.conv_date || ' ' || c.conv_time, ?)",
    "postgresql": (
        "AND (s.event_date || ' ' || s.event_time) >= "
        "to_char((c.conv_date || ' ' || c.conv_time)::timestamp - (? || ' days')::interval, "
        "'YYYY-MM-DD HH24:MI:SS')"
    ),
}


def journeys_sql(dialect: str, *, lookback: bool = False) -> str:
    """The statement that stages the run's journeys (parameters: run id[, look-back])."""
    return _JOURNEYS_SQL.format(
        lookback=_LOOKBACK[dialect] if lookback else "",
        event_date=_SESSION_DATE[dialect],
        event_time=_SESSION_TIME[dialect],
        buyer_sessions=BUYER_SESSIONS,
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
    db.execute(_BUYERS_SQL)
    cache = _buyers_cache_sql(db) if db.is_sqlite else None
    if cache:
        db.execute(cache)
    create = buyer_sessions_sql(db.dialect, db.cast_to_column("user_id", SESSION_SOURCES, "user_id"))
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


@dataclass
class ExtractSummary:
    """Counts of the extraction stage (all small: safe for XCom)."""

    conversions: int = 0
    journeys: int = 0
    sessions: int = 0
    invalid_input: int = 0
    duplicates: int = 0
    no_sessions: int = 0
    unplaceable: int = 0
    max_journey_sessions: int = 0
    reused_answers: int = 0
    #: Attributed conversions of other days whose journeys changed (see drift.py).
    changed_elsewhere: int = 0
    #: Days of such conversions the run handled too (param reattribute_drift).
    reattributed_days: int = 0
    #: Ready conversions loaded while the run was reading, whose users' sessions were copied then.
    late_users: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# Kept when a run's staging is rebuilt: report dates only ever accumulate, and answers are
# reused for journeys whose fingerprint did not change (see reuse.fingerprint_journeys).
_KEPT_ON_REBUILD = ("attribution_stg_report_dates", "attribution_stg_results", "attribution_stg_answered")


def clear_run_staging(db: Database, run_id: str) -> None:
    """Delete the run's staging rows, except report dates and reusable answers."""
    for table in STAGING_TABLES:
        if table not in _KEPT_ON_REBUILD:
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))


def extract_journeys(
    db: Database,
    run_id: str,
    run_range: RunRange,
    *,
    lookback_days: int | None = None,
    created_at: str = "",
    answer_scope: str = "",
    reuse_answers: bool = True,
    reattribute_drift: bool = False,
) -> ExtractSummary:
    """Stage the run's conversions and journeys, quarantining what cannot be attributed.

    Reads the sources into temporary tables first, then stages in one transaction, which
    replaces the run's staging: safe to re-run. Every attributed journey is compared with the
    sources on the way (see :mod:`drift`).

    :param answer_scope: what else decides an answer besides the journey (the API's address,
        conversion type and redistribution settings); part of every journey's fingerprint.
    :param reuse_answers: let journeys whose fingerprint another run's answer was given for keep
        that answer instead of being sent again (see :func:`reuse.reuse_other_runs_answers`).
    :param reattribute_drift: also handle the conversions of the days whose attributed journeys
        no longer match the sources, as a run of those days would.
    """
    summary = ExtractSummary()
    try:
        stage_buyer_sessions(db)
        bad_sessions = _malformed_sessions(db)
        started = time.perf_counter()
        changed = drift.detect(db, BUYER_SESSIONS, _copy_ts(db), _SESSION_ID_TEXT[db.dialect])
        log.info("compared the attributed journeys with the sources in %.2f s: %d no longer match",
                 time.perf_counter() - started, changed)
        extra_days = drift.days_to_reattribute(db, run_range) if reattribute_drift else []
        with db.transaction():
            _stage(db, run_id, run_range, extra_days, bad_sessions, lookback_days, created_at, summary)
            summary.changed_elsewhere = drift.record(db, run_id)
            sizes = reuse.fingerprint_journeys(db, run_id, answer_scope)
            if reuse_answers:
                summary.reused_answers = reuse.reuse_other_runs_answers(db, run_id)
    finally:
        drop_buyer_sessions(db)
        drift.drop(db)
    if extra_days:
        log.info("re-attributing the conversions of %d days whose journeys changed: %s",
                 len(extra_days), ", ".join(extra_days))
    summary.journeys, summary.sessions, summary.max_journey_sessions = len(sizes), sum(sizes), max(sizes, default=0)
    return summary


def _stage(
    db: Database, run_id: str, run_range: RunRange, extra_days: list[str],
    bad_sessions: list[tuple[str, str, str | None, str]], lookback_days: int | None, created_at: str,
    summary: ExtractSummary,
) -> None:
    """Stage the run's conversions and their journeys from the copy (in the caller's transaction)."""
    clear_run_staging(db, run_id)
    db.execute(
        "INSERT INTO attribution_runs (run_id, range_start, range_end, created_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
        "range_start = excluded.range_start, range_end = excluded.range_end",
        (run_id, run_range.start_ts, run_range.end_ts, created_at),
    )
    conversions.stage_conversions(db, run_id, run_range, summary)
    _stage_extra_days(db, run_id, extra_days, summary)
    summary.late_users = _copy_late_users(db, run_id)
    if summary.late_users:
        bad_sessions = _malformed_sessions(db)
    _quarantine_invalid_sessions(db, run_id, bad_sessions, lookback_days, summary)
    params: list = [run_id]
    if lookback_days is not None:
        params.append(f"-{int(lookback_days)} days" if db.is_sqlite else int(lookback_days))
    db.execute(journeys_sql(db.dialect, lookback=lookback_days is not None), params)
    if lookback_days is not None:
        db.execute(_WINDOWS_SQL[db.dialect], [params[1], run_id])
    db.execute(
        "UPDATE attribution_stg_conversions SET n_sessions = ("
        " SELECT COUNT(*) FROM attribution_stg_sessions s"
        " WHERE s.run_id = attribution_stg_conversions.run_id"
        " AND s.conv_id = attribution_stg_conversions.conv_id)"
        " WHERE run_id = ? AND status = 'ready'",
        (run_id,),
    )
    db.execute(
        "INSERT INTO attribution_stg_issues (run_id, conv_id, reason, detail) "
        "SELECT run_id, conv_id, ?, ? FROM attribution_stg_conversions "
        "WHERE run_id = ? AND status = 'ready' AND n_sessions = 0",
        (NO_SESSIONS, "no session of the user before the conversion", run_id),
    )
    summary.no_sessions = db.execute(
        "UPDATE attribution_stg_conversions SET status = ? "
        "WHERE run_id = ? AND status = 'ready' AND n_sessions = 0",
        (NO_SESSIONS, run_id),
    )


# The copy's timestamp and session id as text, as the package's tables hold them.
_SESSION_ID_TEXT = {"sqlite": "CAST(s.session_id AS TEXT)", "postgresql": "s.session_id"}


def _copy_ts(db: Database) -> str:
    return f"{_SESSION_DATE[db.dialect]} || ' ' || {_SESSION_TIME[db.dialect]}"


# Where each staged journey's look-back window starts, as the journeys' filter computes it.
_WINDOWS_SQL = {
    "sqlite": "INSERT INTO attribution_stg_journey_windows (run_id, conv_id, since_ts) "
              "SELECT run_id, conv_id, datetime(conv_date || ' ' || conv_time, ?) FROM attribution_stg_conversions "
              "WHERE run_id = ? AND status = 'ready'",
    "postgresql": "INSERT INTO attribution_stg_journey_windows (run_id, conv_id, since_ts) "
                  "SELECT run_id, conv_id, to_char((conv_date || ' ' || conv_time)::timestamp - (? || ' days')::interval, "
                  "'YYYY-MM-DD HH24:MI:SS') FROM attribution_stg_conversions WHERE run_id = ? AND status = 'ready'",
}


def _stage_extra_days(db: Database, run_id: str, days: list[str], summary: ExtractSummary) -> None:
    """Stage the conversions of ``days`` besides the run's range, as the runs of those days would."""
    for day in days:
        first = dt.datetime.fromisoformat(day)
        extra = ExtractSummary()
        conversions.stage_conversions(db, run_id, RunRange(first, first + dt.timedelta(days=1)), extra)
        summary.conversions += extra.conversions
        summary.invalid_input += extra.invalid_input
        summary.duplicates += extra.duplicates
    db.executemany("INSERT INTO attribution_stg_extra_days (run_id, day) VALUES (?, ?)", [(run_id, d) for d in days])
    summary.reattributed_days = len(days)


def _copy_late_users(db: Database, run_id: str) -> int:
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
        buyer = db.cast_to_column("user_id", SESSION_SOURCES, "user_id")
        select = _BUYER_SESSIONS_SELECT.format(
            ids=_IDS[db.dialect], clean=validation.CLEAN_SESSION[db.dialect], buyer=buyer, buyers=LATE_BUYERS
        )
        db.execute(f"INSERT INTO {BUYER_SESSIONS}{select}")
        db.execute(f"INSERT INTO {BUYERS} (user_id) SELECT user_id FROM {LATE_BUYERS}")
    return max(late, 0)


def _quarantine_invalid_sessions(
    db: Database, run_id: str, bad_sessions: list[tuple[str, str, str | None, str]], lookback_days: int | None,
    summary: ExtractSummary,
) -> None:
    """Quarantine the run's conversions whose journey would include one of ``bad_sessions``.

    Malformed: a field that is missing or out of its domain (see :func:`validation.session_problems`),
    or a session id present more than once in ``session_sources``, whose channel and time are then
    ambiguous (see :func:`_malformed_sessions`).
    """
    if not bad_sessions:
        return
    affected = _conversions_holding(db, run_id, bad_sessions, lookback_days)
    issues = []
    for conv_id, items in sorted(affected.items()):
        detail = "; ".join(items[:_MAX_DETAIL_ITEMS])
        if len(items) > _MAX_DETAIL_ITEMS:
            detail += f"; and {len(items) - _MAX_DETAIL_ITEMS} more"
        issues.append((run_id, conv_id, INVALID_INPUT, detail))
    db.executemany(
        "UPDATE attribution_stg_conversions SET status = ? WHERE run_id = ? AND conv_id = ?",
        [(INVALID_INPUT, run_id, conv_id) for conv_id in affected],
    )
    conversions.insert_issues(db, issues)
    summary.invalid_input += len(affected)


_SESSION_COLUMNS = [
    "session_id", "user_id", "event_date", "event_time", "channel_name",
    "holder_engagement", "closer_engagement", "impression_interaction",
]


def _malformed_sessions(db: Database) -> list[tuple[str, str, str | None, str]]:
    """(session id, user id, timestamp or None when unreadable, problem) of the copied sessions that are malformed."""
    # A primary key (or unique index) on session_id means no id is present twice: no lookup.
    duplicated = (
        {} if has_unique_key(db, SESSION_SOURCES, "session_id")
        else {sid: int(n) for sid, n in db.query(
            _DUPLICATE_SESSIONS_SQL.format(session_id=_SESSION_ID[db.dialect], copy=BUYER_SESSIONS))}
    )
    # Clean sessions pass every check (see validation.CLEAN_SESSION); a duplicated one may be clean.
    sessions_sql = _USER_SESSIONS_SQL if duplicated else _UNCLEAN_USER_SESSIONS_SQL
    bad_sessions: list[tuple[str, str, str | None, str]] = []
    for batch in db.iter_query(sessions_sql, batch_size=50_000):
        frame = pd.DataFrame(batch, columns=_SESSION_COLUMNS, dtype=object)
        problems = validation.session_problems(frame)
        if duplicated:
            counts = frame["session_id"].map(duplicated)
            dup = counts.notna()
            problems[dup] = [
                f"{p}, present {int(n)} times in session_sources" if p else f"present {int(n)} times in session_sources"
                for p, n in zip(problems[dup], counts[dup])
            ]
        bad = problems.ne("")
        sub = frame[bad]
        ts_ok = validation.valid_date(sub["event_date"]) & validation.valid_time(sub["event_time"])
        text = sub["event_date"].astype(str) + " " + sub["event_time"].astype(str)
        ts = [t if ok else None for t, ok in zip(text, ts_ok)]
        bad_sessions.extend(zip(sub["session_id"], sub["user_id"], ts, problems[bad]))
    return bad_sessions


def _conversions_holding(
    db: Database, run_id: str, bad_sessions: list[tuple[str, str, str | None, str]], lookback_days: int | None
) -> dict[str, list[str]]:
    """The run's ready conversions whose journey holds one of ``bad_sessions``, with what is wrong."""
    by_user: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for conv_id, user_id, conv_ts in db.query(
        "SELECT conv_id, user_id, conv_date || ' ' || conv_time FROM attribution_stg_conversions "
        "WHERE run_id = ? AND status = 'ready'",
        (run_id,),
    ):
        by_user[str(user_id)].append((conv_id, conv_ts))
    affected: dict[str, list[str]] = defaultdict(list)
    for session_id, user_id, ts, problem in bad_sessions:
        session_id = "(none)" if session_id is None else storable(str(session_id))
        for conv_id, conv_ts in by_user.get(str(user_id), ()):
            # A session with an unreadable timestamp may or may not precede the conversion:
            # the journey cannot be known, so the conversion is quarantined either way.
            if ts is None or (ts < conv_ts and _within_lookback(ts, conv_ts, lookback_days)):
                affected[conv_id].append(f"session {session_id}: {problem}")
    return affected


def _within_lookback(ts: str, conv_ts: str, lookback_days: int | None) -> bool:
    if lookback_days is None:
        return True
    limit = dt.datetime.fromisoformat(conv_ts) - dt.timedelta(days=lookback_days)
    return dt.datetime.fromisoformat(ts) >= limit
