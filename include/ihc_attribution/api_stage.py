"""Stages 3 and 4: pack journeys into API requests, and send them with checkpoints.

Packing writes the plan (which journey goes into which request) to staging. Sending reads the
requests not yet answered, sends them concurrently through the IHC hook (or client), and commits
each answer together with the request's ``done`` mark, so a re-run after a crash or a failure
sends only what was not answered before: API calls cost quota.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ihc_attribution.db import BYTE_ORDER, Database
from ihc_attribution.errors import PermanentError
from ihc_attribution.ihc.answers import IhcRequest, IhcResult, examples
from ihc_attribution.ihc.client import IhcClient, SendProgress, SendSummary
from ihc_attribution.ihc.errors import IhcError, IhcRejectedJourneysError, IhcRetriesExhaustedError
from ihc_attribution.validation import API_REJECTED, OVERSIZED
from ihc_attribution.packing import lower_bound, pack_journeys

if TYPE_CHECKING:
    from ihc_attribution.ihc.hook import IhcHook

log = logging.getLogger(__name__)


@dataclass
class PackSummary:
    """Counts of the packing stage."""

    journeys: int = 0
    sessions: int = 0
    requests: int = 0
    lower_bound: int = 0
    truncated: int = 0
    skipped: int = 0
    reused: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class StagedJourneysCutError(PermanentError, ValueError):
    """The run's journeys were cut to fewer sessions than the session limit now allows."""


_CUT_SHORT_SQL = """
SELECT MIN(kept) FROM (
    SELECT COUNT(*) AS kept FROM attribution_stg_conversions c
    JOIN attribution_stg_sessions s ON s.run_id = c.run_id AND s.conv_id = c.conv_id
    WHERE c.run_id = ? AND c.status = 'ready'
    GROUP BY c.conv_id, c.n_sessions
    HAVING COUNT(*) < c.n_sessions AND COUNT(*) < ?
) AS cut
"""


def _check_staged_for(db: Database, run_id: str, max_sessions: int) -> None:
    """Fail when the extraction cut a journey to fewer sessions than ``max_sessions`` lets be sent now
    (``max_sessions_per_request`` was raised after the run's journeys were extracted)."""
    kept = db.scalar(_CUT_SHORT_SQL, (run_id, max_sessions))
    if kept is not None:
        raise StagedJourneysCutError(
            f"the journeys of run {run_id} were extracted for a limit of {kept} sessions per request, "
            f"lower than max_sessions_per_request={max_sessions} now: re-run extract_journeys and the tasks after it"
        )


def pack_requests(
    db: Database,
    run_id: str,
    *,
    max_journeys: int,
    max_sessions: int,
    oversized_policy: str = "truncate",
) -> PackSummary:
    """Plan the run's API requests: whole journeys, under both limits, close to the fewest.

    A journey longer than ``max_sessions`` is never split. With the ``truncate`` policy it is
    sent cut to its most recent ``max_sessions`` sessions; with ``skip`` it is not sent. Either
    way it is recorded as ``oversized_journey``. Replaces the run's plan; answers kept from an
    earlier attempt of the run for the same journey (same fingerprint, same size sent) are
    reused instead of planned again.
    """
    if oversized_policy not in ("truncate", "skip"):
        raise ValueError(f"unknown oversized journey policy {oversized_policy!r}; use one of truncate, skip")
    with db.transaction():
        for table in ("attribution_stg_requests", "attribution_stg_request_journeys"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        db.execute(
            "DELETE FROM attribution_stg_issues WHERE run_id = ? AND reason IN (?, ?)",
            (run_id, OVERSIZED, API_REJECTED),
        )
        sizes = dict(
            db.query(
                "SELECT conv_id, n_sessions FROM attribution_stg_conversions "
                f"WHERE run_id = ? AND status = 'ready' ORDER BY conv_id{BYTE_ORDER[db.dialect]}",
                (run_id,),
            )
        )
        _check_staged_for(db, run_id, max_sessions)
        over = {c: n for c, n in sizes.items() if n > max_sessions}
        truncate = oversized_policy == "truncate"
        issues = [
            (run_id, c, OVERSIZED, f"sent truncated to its latest {max_sessions} of {n} sessions" if truncate
             else f"not sent: {n} sessions, over the limit of {max_sessions} per request")
            for c, n in sorted(over.items())
        ]
        sizes = {c: min(n, max_sessions) for c, n in sizes.items() if truncate or c not in over}
        db.executemany("INSERT INTO attribution_stg_issues (run_id, conv_id, reason, detail) VALUES (?, ?, ?, ?)", issues)
        answered = dict(
            db.query("SELECT conv_id, n_sent FROM attribution_stg_answered WHERE run_id = ?", (run_id,))
        )
        reused = {c for c, n in sizes.items() if answered.get(c) == n}
        stale = [(run_id, c) for c in answered if c not in reused]
        for table in ("attribution_stg_answered", "attribution_stg_results"):
            db.executemany(f"DELETE FROM {table} WHERE run_id = ? AND conv_id = ?", stale)
        to_send = {c: n for c, n in sizes.items() if c not in reused}
        bins = pack_journeys(to_send, max_journeys, max_sessions)
        db.executemany(
            "INSERT INTO attribution_stg_requests (run_id, request_no, n_journeys, n_sessions, status) "
            "VALUES (?, ?, ?, ?, 'pending')",
            [(run_id, no, len(b), sum(to_send[c] for c in b)) for no, b in enumerate(bins)],
        )
        db.executemany(
            "INSERT INTO attribution_stg_request_journeys (run_id, conv_id, request_no) VALUES (?, ?, ?)",
            [(run_id, conv_id, no) for no, b in enumerate(bins) for conv_id in b],
        )
    return PackSummary(
        journeys=len(to_send), sessions=sum(to_send.values()), requests=len(bins),
        lower_bound=lower_bound(to_send, max_journeys, max_sessions),
        truncated=len(over) if truncate else 0, skipped=0 if truncate else len(over), reused=len(reused),
    )


_REQUEST_ROWS_SQL = """
SELECT j.conv_id, s.session_id, s.event_ts, s.channel_name, s.holder_engagement,
       s.closer_engagement, s.conversion, s.impression_interaction
FROM attribution_stg_request_journeys j
JOIN attribution_stg_sessions s ON s.run_id = j.run_id AND s.conv_id = j.conv_id
WHERE j.run_id = ? AND j.request_no = ?
ORDER BY j.conv_id{byte_order}, s.event_ts DESC, s.session_id{byte_order} DESC
"""


_FLAGS = ("holder_engagement", "closer_engagement", "conversion", "impression_interaction")


def build_request(db: Database, run_id: str, request_no: int, max_sessions: int) -> IhcRequest:
    """The API payload rows of one planned request, each journey in time order.

    Rows come newest first, so an oversized journey (``truncate`` policy) keeps its latest
    ``max_sessions`` sessions; each journey is then put back in time order.
    """
    rows: list[dict] = []
    # Ids in byte order on every engine: equal timestamps tie on them.
    newest_first = db.query(_REQUEST_ROWS_SQL.format(byte_order=BYTE_ORDER[db.dialect]), (run_id, request_no))
    for _, journey in itertools.groupby(newest_first, key=lambda row: row[0]):
        for conv_id, session_id, ts, channel, *flags in reversed(list(itertools.islice(journey, max_sessions))):
            rows.append({"conversion_id": conv_id, "session_id": session_id, "timestamp": ts, "channel_label": channel,
                         **{name: int(flag) for name, flag in zip(_FLAGS, flags)}})
    return IhcRequest(request_id=request_no, rows=rows)


def send_requests(
    db: Database,
    run_id: str,
    api: IhcHook | IhcClient,
    *,
    max_sessions: int,
    max_rejected_share: float = 1.0,
    progress: Callable[[SendProgress], None] | None = None,
    summary: SendSummary | None = None,
) -> SendSummary:
    """Send the run's unanswered requests and checkpoint each answer as it arrives.

    :param api: sends the requests (the IHC hook in the DAG; tests pass a client or a fake).
    :param max_rejected_share: once every answer is stored, fail when the service rejected at
        least this share of the run's journeys sent (1.0: only when it rejected all of them).
    :param summary: counters to fill in (so a caller sees them even when this raises).
    :raises IhcError: when the API refuses the configuration or an answer, or retries are exhausted (the
        answers received are kept, the unanswered requests marked failed), or for ``max_rejected_share``.
    """
    summary = summary if summary is not None else SendSummary()
    states = db.query(
        "SELECT request_no, status FROM attribution_stg_requests WHERE run_id = ? ORDER BY request_no", (run_id,)
    )
    pending = [no for no, status in states if status != "done"]
    summary.requests_total = len(states)
    summary.requests_already_done = len(states) - len(pending)

    requests = (build_request(db, run_id, no, max_sessions) for no in pending)
    answered: set[int] = set()

    def on_result(result: IhcResult) -> None:
        no = int(result.request_id)
        with db.transaction():
            db.execute(
                "DELETE FROM attribution_stg_results WHERE run_id = ? AND conv_id IN "
                "(SELECT conv_id FROM attribution_stg_request_journeys WHERE run_id = ? AND request_no = ?)",
                (run_id, run_id, no),
            )
            db.executemany(
                "INSERT INTO attribution_stg_results "
                "(run_id, conv_id, session_id, initializer, holder, closer, ihc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, r.conversion_id, r.session_id, r.initializer, r.holder, r.closer, r.ihc)
                    for r in result.rows
                ],
            )
            # Remember what was answered, so that redoing the run does not send it again. Read
            # from the request's journeys (CROSS JOIN keeps that order on SQLite), not from all
            # the run's results, so each answer costs the same however many came before it.
            db.execute(
                "INSERT INTO attribution_stg_answered (run_id, conv_id, journey_hash, n_sent) "
                "SELECT r.run_id, r.conv_id, k.journey_hash, COUNT(*) FROM attribution_stg_request_journeys j "
                "CROSS JOIN attribution_stg_results r "
                "JOIN attribution_stg_journey_keys k ON k.run_id = r.run_id AND k.conv_id = r.conv_id "
                "WHERE j.run_id = ? AND j.request_no = ? AND r.run_id = j.run_id AND r.conv_id = j.conv_id "
                "GROUP BY r.run_id, r.conv_id, k.journey_hash "
                "ON CONFLICT (run_id, conv_id) DO UPDATE SET "
                "journey_hash = excluded.journey_hash, n_sent = excluded.n_sent",
                (run_id, no),
            )
            if result.failed:
                db.executemany(
                    "INSERT INTO attribution_stg_issues (run_id, conv_id, reason, detail) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run_id, conv_id, reason) DO UPDATE SET detail = excluded.detail",
                    [(run_id, f.conversion_id, API_REJECTED, f"IHC API: {f.message}") for f in result.failed],
                )
            db.execute(
                "UPDATE attribution_stg_requests SET status = 'done', attempts = attempts + ?, "
                "http_status = ?, error = NULL WHERE run_id = ? AND request_no = ?",
                (result.attempts, result.status_code, run_id, no),
            )
        answered.add(no)

    try:
        api.compute_ihc(requests, on_result, progress=progress, total=len(pending), summary=summary)
    except IhcError as exc:
        summary.unanswered = [no for no in pending if no not in answered]
        message = str(exc)[:1000]
        with db.transaction():
            db.executemany(
                "UPDATE attribution_stg_requests SET status = 'failed', error = ? WHERE run_id = ? AND request_no = ?",
                [(message, run_id, no) for no in summary.unanswered],
            )
        kind = "retries exhausted" if isinstance(exc, IhcRetriesExhaustedError) else "request refused"
        log.error(
            "IHC API %s: %d of %d requests unanswered (numbers %s); a re-run sends only those",
            kind, len(summary.unanswered), summary.requests_total, examples(summary.unanswered, 20),
        )
        raise
    _check_rejected_share(db, run_id, max_rejected_share)
    return summary


def _check_rejected_share(db: Database, run_id: str, max_share: float) -> None:
    """Fail when the service rejected ``max_share`` or more of the run's journeys sent."""
    sent = db.scalar(
        "SELECT COUNT(*) FROM attribution_stg_request_journeys j JOIN attribution_stg_requests r "
        "ON r.run_id = j.run_id AND r.request_no = j.request_no WHERE j.run_id = ? AND r.status = 'done'",
        (run_id,),
    )
    rejected = db.query(
        "SELECT conv_id, detail FROM attribution_stg_issues WHERE run_id = ? AND reason = ? ORDER BY conv_id",
        (run_id, API_REJECTED),
    )
    if sent and len(rejected) / sent >= max_share:
        shown = "; ".join(f"{conv_id}: {detail}" for conv_id, detail in rejected[:3])
        raise IhcRejectedJourneysError(
            f"the IHC API rejected {len(rejected)} of {sent} journeys sent (at least the extra "
            f"max_rejected_share={max_share:g} of them), e.g. {shown}. The answers are stored and the "
            "rejections recorded as api_rejected; not retried: fix the journeys or the conversion type, "
            "or raise max_rejected_share"
        )
