"""Stage 2: the run's conversions and their customer journeys, malformed input quarantined with a reason.

A journey is every session of the conversion's user strictly before the conversion (optionally
within a look-back window), built in SQL from the copy of the buyers' sessions (see :mod:`buyers`).
The reading writes only temporary tables; the write transaction holds its lock for the staging only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import logging
import operator
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import pandas as pd

from ihc_attribution import drift, settings, sources, validation
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import BYTE_ORDER, Database, storable
from ihc_attribution.buyers import BUYER_SESSIONS, copy_late_users, drop_buyer_sessions, stage_buyer_sessions
from ihc_attribution.schema import SESSION_SOURCES, STAGING_TABLES, has_unique_key
# The reasons, where callers look for them.
from ihc_attribution.validation import API_REJECTED, DUPLICATE, INVALID_INPUT, NO_SESSIONS, OVERSIZED, UNPLACEABLE  # noqa: F401

log = logging.getLogger(__name__)

_MAX_DETAIL_ITEMS = 5
# Session ids of the converting users that are present more than once anywhere in the table.
# Asked only when session_id has no primary key or unique index (then it is one more pass).
_DUPLICATE_SESSIONS_SQL = """
SELECT CAST(session_id AS TEXT), COUNT(*) FROM {sessions}
WHERE {session_id} IN (SELECT session_id FROM {copy})
GROUP BY session_id HAVING COUNT(*) > 1
"""
_USER_SESSIONS_SQL = f"""
SELECT s.session_id, s.user_id, CAST(s.event_date AS TEXT), CAST(s.event_time AS TEXT), s.channel_name,
       s.holder_engagement, s.closer_engagement, s.impression_interaction
FROM {BUYER_SESSIONS} s
"""
# A session of the conversion's user strictly before it (and within the look-back, if any).
_IN_JOURNEY = """s.user_id = c.user_id
      AND ({event_date} < c.conv_date OR ({event_date} = c.conv_date AND {event_time} < c.conv_time))
      {lookback}"""
# Latest first: the conversion flag marks the first session of a journey in this order (ties broken
# by the larger session id: deterministic), and a journey over the API's max_sessions_per_request
# keeps the first ones (no more of it can be sent: see packing.py).
_LATEST_FIRST = "{s}.event_date DESC, {s}.event_time DESC, {s}.session_id{byte_order} DESC"
# Each journey's kept sessions are read from the index of the user's sessions, latest first, and
# the reading stops at the limit: a user with a long history costs the sessions kept, not every
# journey row (100,000 sessions and 30 conversions: 2.5 million rows). SQLite has no LATERAL.
_KEPT_SESSIONS = {
    "sqlite": "JOIN {buyer_sessions} j ON j.rowid IN (\n"
              "    SELECT s.rowid FROM {buyer_sessions} s WHERE {in_journey} ORDER BY {latest_first} LIMIT ?)",
    "postgresql": "CROSS JOIN LATERAL (\n"
                  "    SELECT s.* FROM {buyer_sessions} s WHERE {in_journey} ORDER BY {latest_first} LIMIT ?) AS j",
}
_JOURNEYS_SQL = """
INSERT INTO attribution_stg_sessions (
    run_id, conv_id, session_id, event_ts, channel_name,
    holder_engagement, closer_engagement, impression_interaction, conversion
)
SELECT c.run_id, c.conv_id, j.session_id, j.event_date || ' ' || j.event_time, j.channel_name,
       j.holder_engagement, j.closer_engagement, j.impression_interaction,
       CASE WHEN ROW_NUMBER() OVER (PARTITION BY c.conv_id ORDER BY {latest_first}) = 1 THEN 1 ELSE 0 END
FROM attribution_stg_conversions c
{kept_sessions}
WHERE c.run_id = ? AND c.status = 'ready'
"""
# Each journey's full length, cut or not (the oversized-journey policy and its record use it).
_JOURNEY_LENGTHS_SQL = """
UPDATE attribution_stg_conversions AS c SET n_sessions = (SELECT COUNT(*) FROM {buyer_sessions} s WHERE {in_journey})
WHERE c.run_id = ? AND c.status = 'ready'
"""
_SINCE = {
    "sqlite": "datetime(c.conv_date || ' ' || c.conv_time, ?)",
    "postgresql": "to_char((c.conv_date || ' ' || c.conv_time)::timestamp - (? || ' days')::interval, 'YYYY-MM-DD HH24:MI:SS')",
}
_WINDOWS_SQL = (
    "INSERT INTO attribution_stg_journey_windows (run_id, conv_id, since_ts) "
    "SELECT run_id, conv_id, {since} FROM attribution_stg_conversions c WHERE run_id = ? AND status = 'ready'"
)


# PostgreSQL compares DATE and TIME columns with the staged text only once cast; SQLite holds them as
# text already (and the cast would lose its index use).
def _text(dialect: str, expr: str) -> str:
    return expr if dialect == "sqlite" else f"CAST({expr} AS TEXT)"


def _in_journey(dialect: str, lookback: bool) -> str:
    since = f"AND s.event_date || ' ' || s.event_time >= {_SINCE[dialect]}" if lookback else ""
    return _IN_JOURNEY.format(lookback=since, event_date=_text(dialect, "s.event_date"),
                              event_time=_text(dialect, "s.event_time"))


def journeys_sql(dialect: str, *, lookback: bool = False) -> str:
    """The statement that stages the run's journeys; parameters: [look-back, ]sessions kept, run id."""
    byte_order = BYTE_ORDER[dialect]
    kept = _KEPT_SESSIONS[dialect].format(buyer_sessions=BUYER_SESSIONS, in_journey=_in_journey(dialect, lookback),
                                          latest_first=_LATEST_FIRST.format(s="s", byte_order=byte_order))
    return _JOURNEYS_SQL.format(kept_sessions=kept, latest_first=_LATEST_FIRST.format(s="j", byte_order=byte_order))


def journey_lengths_sql(dialect: str, *, lookback: bool = False) -> str:
    """The statement that sets each staged conversion's journey length; parameters: [look-back, ]run id."""
    return _JOURNEY_LENGTHS_SQL.format(buyer_sessions=BUYER_SESSIONS, in_journey=_in_journey(dialect, lookback))


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
# reused for journeys whose fingerprint did not change (see fingerprint_journeys).
_KEPT_ON_REBUILD = ("attribution_stg_report_dates", "attribution_stg_results", "attribution_stg_answered")


def extract_journeys(
    db: Database,
    run_id: str,
    run_range: RunRange,
    *,
    lookback_days: int | None = None,
    created_at: str = "",
    answer_scope: str = "",
    reuse_answers: bool = True,
    max_sessions: int | None = None,
    reattribute_drift: bool = False,
) -> ExtractSummary:
    """Stage the run's conversions and journeys, quarantining what cannot be attributed.

    Reads the sources into temporary tables first, then replaces the run's staging in one
    transaction: safe to re-run. Every attributed journey is compared with the sources (:mod:`drift`).

    :param answer_scope: what else decides an answer besides the journey (the API's address,
        conversion type and redistribution settings); part of every journey's fingerprint.
    :param reuse_answers: journeys another run got an answer for keep it instead of being sent again.
    :param max_sessions: stage only the latest this many sessions of each journey (no more of it
        can be sent); the conversion keeps its journey's full length. ``None`` stages every session.
    :param reattribute_drift: also handle the conversions of the days whose attributed journeys
        no longer match the sources, as a run of those days would.
    """
    summary = ExtractSummary()
    try:
        stage_buyer_sessions(db)
        bad_sessions = _malformed_sessions(db)
        started = time.perf_counter()
        changed = drift.detect(db)
        log.info("compared the attributed journeys with the sources in %.2f s: %d no longer match",
                 time.perf_counter() - started, changed)
        extra_days = drift.days_to_reattribute(db, run_range) if reattribute_drift else []
        with db.transaction():
            _stage(db, run_id, run_range, extra_days, bad_sessions, lookback_days, max_sessions, created_at, summary)
            summary.changed_elsewhere = drift.record(db, run_id)
            fingerprint_journeys(db, run_id, answer_scope)
            if reuse_answers:
                summary.reused_answers = reuse_other_runs_answers(db, run_id)
            sizes = [n for (n,) in db.query(
                "SELECT n_sessions FROM attribution_stg_conversions WHERE run_id = ? AND status = 'ready'", (run_id,))]
    except BaseException:
        db.abandon_reads()
        raise
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
    bad_sessions: list[tuple[str, str, str | None, str]], lookback_days: int | None, max_sessions: int | None,
    created_at: str, summary: ExtractSummary,
) -> None:
    for table in (t for t in STAGING_TABLES if t not in _KEPT_ON_REBUILD):
        db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
    db.execute(
        "INSERT INTO attribution_runs (run_id, range_start, range_end, created_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
        "range_start = excluded.range_start, range_end = excluded.range_end",
        (run_id, run_range.start_ts, run_range.end_ts, created_at),
    )
    counts = validation.stage_conversions(db, run_id, run_range)
    summary.conversions, summary.invalid_input, summary.duplicates, summary.unplaceable = counts
    _stage_extra_days(db, run_id, extra_days, summary)
    summary.late_users = copy_late_users(db, run_id)
    if summary.late_users:
        bad_sessions = _malformed_sessions(db)
    _quarantine_invalid_sessions(db, run_id, bad_sessions, lookback_days, summary)
    _stage_journeys(db, run_id, lookback_days, max_sessions)
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


def _stage_journeys(db: Database, run_id: str, lookback_days: int | None, max_sessions: int | None) -> None:
    lookback = [] if lookback_days is None else [f"-{int(lookback_days)} days" if db.is_sqlite else int(lookback_days)]
    kept = int(max_sessions) if max_sessions is not None else (-1 if db.is_sqlite else None)
    db.execute(journeys_sql(db.dialect, lookback=bool(lookback)), [*lookback, kept, run_id])
    db.execute(journey_lengths_sql(db.dialect, lookback=bool(lookback)), [*lookback, run_id])
    if lookback:
        db.execute(_WINDOWS_SQL.format(since=_SINCE[db.dialect]), [*lookback, run_id])


def _stage_extra_days(db: Database, run_id: str, days: list[str], summary: ExtractSummary) -> None:
    """Stage the conversions of ``days`` besides the run's range, as the runs of those days would."""
    for day in days:
        first = dt.datetime.fromisoformat(day)
        staged, invalid, duplicates, _ = validation.stage_conversions(db, run_id, RunRange(first, first + dt.timedelta(days=1)))
        summary.conversions += staged
        summary.invalid_input += invalid
        summary.duplicates += duplicates
    db.executemany("INSERT INTO attribution_stg_extra_days (run_id, day) VALUES (?, ?)", [(run_id, d) for d in days])
    summary.reattributed_days = len(days)


def _quarantine_invalid_sessions(
    db: Database, run_id: str, bad_sessions: list[tuple[str, str, str | None, str]], lookback_days: int | None,
    summary: ExtractSummary,
) -> None:
    """Quarantine the run's ready conversions whose journey would hold one of ``bad_sessions``."""
    if not bad_sessions:
        return
    by_user: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for conv_id, user_id, conv_ts in db.query(
        "SELECT conv_id, user_id, conv_date || ' ' || conv_time FROM attribution_stg_conversions "
        "WHERE run_id = ? AND status = 'ready'",
        (run_id,),
    ):
        by_user[str(user_id)].append((conv_id, conv_ts))
    window = None if lookback_days is None else dt.timedelta(days=lookback_days)
    affected: dict[str, list[str]] = defaultdict(list)
    for session_id, user_id, ts, problem in bad_sessions:
        session_id = "(none)" if session_id is None else storable(str(session_id))
        for conv_id, conv_ts in by_user.get(str(user_id), ()):
            # A session with an unreadable timestamp may or may not precede the conversion:
            # the journey cannot be known, so the conversion is quarantined either way.
            if ts is None or (ts < conv_ts and (window is None or dt.datetime.fromisoformat(ts)
                                                >= dt.datetime.fromisoformat(conv_ts) - window)):
                affected[conv_id].append(f"session {session_id}: {problem}")
    issues = []
    for conv_id, items in sorted(affected.items()):
        more = f"; and {len(items) - _MAX_DETAIL_ITEMS} more" if len(items) > _MAX_DETAIL_ITEMS else ""
        issues.append((run_id, conv_id, INVALID_INPUT, "; ".join(items[:_MAX_DETAIL_ITEMS]) + more))
    db.executemany(
        "UPDATE attribution_stg_conversions SET status = ? WHERE run_id = ? AND conv_id = ?",
        [(INVALID_INPUT, run_id, conv_id) for conv_id in affected],
    )
    validation.insert_issues(db, issues)
    summary.invalid_input += len(affected)


def _malformed_sessions(db: Database) -> list[tuple[str, str, str | None, str]]:
    """(session id, user id, timestamp or None when unreadable, problem) of the copied sessions that are malformed.

    Malformed: a field missing or out of its domain (see :func:`validation.session_problems`), or a
    session id present more than once in ``session_sources``, whose channel and time are then ambiguous.
    """
    # A primary key (or unique index) on session_id means no id is present twice: no lookup.
    duplicated = {} if has_unique_key(db, SESSION_SOURCES, "session_id") else {
        sid: int(n) for sid, n in db.query(_DUPLICATE_SESSIONS_SQL.format(
            session_id=sources.text_id(db, "session_id", SESSION_SOURCES, "session_id"), copy=BUYER_SESSIONS,
            sessions=sources.relation(db, SESSION_SOURCES)))
    }
    # Clean sessions pass every check (see validation.CLEAN_SESSION); a duplicated one may be clean.
    bad_sessions: list[tuple[str, str, str | None, str]] = []
    for batch in db.iter_query(_USER_SESSIONS_SQL + ("" if duplicated else "WHERE s.clean = 0\n"), batch_size=50_000):
        frame = pd.DataFrame(batch, columns=list(settings.SOURCE_COLUMNS[SESSION_SOURCES]), dtype=object)
        problems = validation.session_problems(frame)
        counts = frame["session_id"].map(duplicated)
        dup = counts.notna()
        problems[dup] = [f"{p}, present {int(n)} times in session_sources" if p else f"present {int(n)} times in session_sources"
                         for p, n in zip(problems[dup], counts[dup])]
        bad = problems.ne("")
        sub = frame[bad]
        ts_ok = validation.valid_date(sub["event_date"]) & validation.valid_time(sub["event_time"])
        text = sub["event_date"].astype(str) + " " + sub["event_time"].astype(str)
        ts = [t if ok else None for t, ok in zip(text, ts_ok)]
        bad_sessions.extend(zip(sub["session_id"], sub["user_id"], ts, problems[bad]))
    return bad_sessions


# The service answers a journey from the journey alone (it normalises each journey it is sent whole),
# so an identical journey sent again would cost quota for the same numbers: a fresh run after a crash,
# a second ``make run`` or a re-trigger sends only what was never answered. Answers are kept as long
# as their run's staging ($ATTRIBUTION_STAGING_RETENTION_DAYS).


def fingerprint_journeys(db: Database, run_id: str, answer_scope: str = "") -> None:
    """Record a fingerprint of everything the API sees of each staged journey, and ``answer_scope``; drop
    the answers of the run's earlier attempts that were given for another fingerprint."""
    rows = itertools.chain.from_iterable(
        db.iter_query(
            "SELECT conv_id, session_id, event_ts, channel_name, holder_engagement, closer_engagement, "
            "impression_interaction, conversion FROM attribution_stg_sessions WHERE run_id = ? "
            f"ORDER BY conv_id{BYTE_ORDER[db.dialect]}, event_ts, session_id{BYTE_ORDER[db.dialect]}",
            (run_id,),
        )
    )
    # The scope, then the repr of each session's fields as a list, in order: one digest per journey.
    keys = []
    for conv_id, journey in itertools.groupby(rows, key=operator.itemgetter(0)):
        text = answer_scope + "".join(repr(session) for _, *session in journey)
        keys.append((run_id, conv_id, hashlib.sha256(text.encode()).hexdigest()))
    db.executemany(
        "INSERT INTO attribution_stg_journey_keys (run_id, conv_id, journey_hash) VALUES (?, ?, ?)", keys
    )
    db.execute(
        "DELETE FROM attribution_stg_answered WHERE run_id = ? AND NOT EXISTS ("
        " SELECT 1 FROM attribution_stg_journey_keys k WHERE k.run_id = attribution_stg_answered.run_id"
        " AND k.conv_id = attribution_stg_answered.conv_id"
        " AND k.journey_hash = attribution_stg_answered.journey_hash)",
        (run_id,),
    )
    db.execute(
        "DELETE FROM attribution_stg_results WHERE run_id = ? AND NOT EXISTS ("
        " SELECT 1 FROM attribution_stg_answered a WHERE a.run_id = attribution_stg_results.run_id"
        " AND a.conv_id = attribution_stg_results.conv_id)",
        (run_id,),
    )


# Another run's answer for a journey with the same fingerprint (the same sessions, sent to the
# same API host and conversion type): the oldest such run, so the choice is deterministic.
_UNANSWERED_KEYS = """
FROM attribution_stg_journey_keys k
JOIN {table} src ON src.conv_id = k.conv_id AND src.run_id = (
    SELECT MIN(a.run_id) FROM attribution_stg_answered a
    WHERE a.conv_id = k.conv_id AND a.journey_hash = k.journey_hash AND a.run_id <> k.run_id
)
WHERE k.run_id = ? AND NOT EXISTS (
    SELECT 1 FROM attribution_stg_answered mine WHERE mine.run_id = k.run_id AND mine.conv_id = k.conv_id
)
"""


def reuse_other_runs_answers(db: Database, run_id: str) -> int:
    """Copy the answers other runs got for journeys identical to this run's unanswered ones; return how many."""
    db.execute(
        "INSERT INTO attribution_stg_results (run_id, conv_id, session_id, initializer, holder, closer, ihc) "
        "SELECT k.run_id, src.conv_id, src.session_id, src.initializer, src.holder, src.closer, src.ihc "
        + _UNANSWERED_KEYS.format(table="attribution_stg_results"),
        (run_id,),
    )
    return db.execute(
        "INSERT INTO attribution_stg_answered (run_id, conv_id, journey_hash, n_sent) "
        "SELECT k.run_id, src.conv_id, src.journey_hash, src.n_sent "
        + _UNANSWERED_KEYS.format(table="attribution_stg_answered"),
        (run_id,),
    )
