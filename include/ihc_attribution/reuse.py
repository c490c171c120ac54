"""Answers reused across runs: a fingerprint of every journey, and the answers other runs got for it.

The service answers a journey from the journey alone (it normalises each journey it is sent
whole), so an identical journey sent again would cost quota for the same numbers. This is what
makes a fresh run after a crash, a second ``make run`` of a range or a re-triggered run send only
what was never answered. Answers are kept as long as their run's staging
(``$ATTRIBUTION_STAGING_RETENTION_DAYS``).
"""

from __future__ import annotations

import hashlib
import itertools
import operator

from ihc_attribution.db import BYTE_ORDER, Database


def fingerprint_journeys(db: Database, run_id: str, answer_scope: str = "") -> None:
    """Record a fingerprint of every staged journey and drop answers that no longer fit.

    The fingerprint covers everything the API sees of a journey, and ``answer_scope``; an answer
    kept from an earlier attempt of the run is reused only when it was given for the same fingerprint.
    """
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
        fields = [
            f"[{sid!r}, {ts!r}, {channel!r}, {holder!r}, {closer!r}, {impression!r}, {flag!r}]"
            for _, sid, ts, channel, holder, closer, impression, flag in journey
        ]
        keys.append((run_id, conv_id, hashlib.sha256("".join([answer_scope, *fields]).encode()).hexdigest()))
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
