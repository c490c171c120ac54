"""Builders, a fake IHC client and an independent recomputation of the pipeline's outputs.

The recomputation uses pandas on the raw tables and shares no code with the package, so a bug
in the package's SQL cannot hide in both.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
from hypothesis import strategies as st

from ihc_attribution.ihc.answers import IhcRequest, IhcResult, IhcRow, PartialFailure
from ihc_attribution.ihc.client import SendSummary
from ihc_attribution.ihc.errors import IhcRetriesExhaustedError
from ihc_attribution.schema import challenge_ddl

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def dag_stages() -> tuple[str, ...]:
    """The DAG's task ids in the order they run: the stage list, read from the DAG itself."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ihc_attribution"]
    return tuple(task.task_id for task in dag.topological_sort())


SESSION_COLUMNS = (
    "session_id", "user_id", "event_date", "event_time", "channel_name",
    "holder_engagement", "closer_engagement", "impression_interaction",
)


def source_ddl(*, keys: bool = True, id_type: str = "TEXT") -> str:
    """The challenge DDL, optionally without the source tables' primary keys (as many exports
    have them) and with another type for the id columns (``INTEGER``)."""
    ddl = challenge_ddl()
    results = ddl.index("CREATE TABLE IF NOT EXISTS attribution_customer_journey")
    sources = re.sub(r"(\w+_id) TEXT", rf"\1 {id_type}", ddl[:results])
    if not keys:
        sources = sources.replace(" PRIMARY KEY,", ",")
    return sources + ddl[results:]


def make_db(
    path: Path,
    sessions: Sequence[Sequence] = (),
    conversions: Sequence[Sequence] = (),
    costs: Sequence[Sequence] = (),
    *,
    ddl: str | None = None,
) -> Path:
    """A challenge database with the given rows.

    ``sessions``: (session_id, user_id, date, time, channel[, holder, closer, impression]);
    ``conversions``: (conv_id, user_id, date, time, revenue); ``costs``: (session_id, cost).
    ``ddl``: the schema (default: the challenge DDL, see :func:`source_ddl`).
    """
    conn = sqlite3.connect(path)
    conn.executescript(ddl or challenge_ddl())
    rows = [tuple(s) + (1, 1, 0)[len(s) - 5:] if len(s) < 8 else tuple(s) for s in sessions]
    conn.executemany("INSERT INTO session_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO conversions VALUES (?, ?, ?, ?, ?)", conversions)
    conn.executemany("INSERT INTO session_costs VALUES (?, ?)", costs)
    conn.commit()
    conn.close()
    return path


def split_evenly(n: int) -> list[float]:
    """n shares of 1 rounded to 4 decimals that sum to exactly 1."""
    base = [10_000 // n] * n
    for i in range(10_000 - sum(base)):
        base[-1 - i] += 1
    return [b / 10_000 for b in base]


class FakeIhcClient:
    """Answers like the API with linear credit; can reject journeys or fail after N requests."""

    def __init__(self, reject: Iterable[str] = (), fail_after: int | None = None) -> None:
        self.reject = set(reject)
        self.fail_after = fail_after
        self.sent: list[IhcRequest] = []

    def compute_ihc(self, requests, on_result: Callable[[IhcResult], None], *, progress=None, total=None,
                    summary=None):
        summary = summary if summary is not None else SendSummary()
        for request in requests:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise IhcRetriesExhaustedError("gave up", request_ids=[request.request_id], last_errors={})
            self.sent.append(request)
            summary.requests_sent += 1
            by_conv: dict[str, list[str]] = {}
            for row in sorted(request.rows, key=lambda r: (r["timestamp"], r["session_id"])):
                by_conv.setdefault(row["conversion_id"], []).append(row["session_id"])
            rows, failed = [], []
            for conv, sessions in by_conv.items():
                if conv in self.reject:
                    failed.append(PartialFailure(conv, "rejected by the fake"))
                    continue
                for sid, share in zip(sessions, split_evenly(len(sessions))):
                    rows.append(IhcRow(conv, sid, share, share, share, share))
            on_result(IhcResult(request.request_id, rows, failed, 1, 206 if failed else 200))
            summary.requests_answered += 1
            summary.journeys_rejected += len(failed)
        return summary


# --- independent recomputation ---------------------------------------------------------------


def read_table(db_path: Path, table: str) -> pd.DataFrame:
    with sqlite3.connect(db_path) as conn:
        return pd.read_sql_query(f"SELECT * FROM {table}", conn)


def expected_journeys(
    db_path: Path, start: str, end: str, lookback_days: int | None = None
) -> dict[str, set[str]]:
    """conv_id -> session ids of its journey, for conversions with timestamp in [start, end).

    A journey is every session of the same user strictly before the conversion and, with a
    look-back, not earlier than the conversion's timestamp minus ``lookback_days`` days.
    """
    return {cid: set(sids) for cid, sids in expected_journey_order(db_path, start, end, lookback_days).items()}


def expected_journey_order(
    db_path: Path, start: str, end: str, lookback_days: int | None = None
) -> dict[str, list[str]]:
    """Like :func:`expected_journeys`, each journey's session ids ordered by (timestamp, session_id)."""
    s = read_table(db_path, "session_sources")
    c = read_table(db_path, "conversions")
    c["ts"] = c["conv_date"] + " " + c["conv_time"]
    s["ts"] = s["event_date"] + " " + s["event_time"]
    c = c[(c["ts"] >= start) & (c["ts"] < end)]
    merged = c.merge(s, on="user_id", suffixes=("_c", "_s"))
    merged = merged[merged["ts_s"] < merged["ts_c"]]
    if lookback_days is not None:
        limit = merged["ts_c"].map(lambda ts: _ts_text(dt.datetime.fromisoformat(ts) - dt.timedelta(days=lookback_days)))
        merged = merged[merged["ts_s"] >= limit]
    out: dict[str, list[tuple[str, str]]] = {cid: [] for cid in c["conv_id"]}
    for cid, ts, sid in zip(merged["conv_id"], merged["ts_s"], merged["session_id"]):
        out[cid].append((ts, sid))
    return {cid: [sid for _, sid in sorted(items)] for cid, items in out.items()}


def _ids_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("session_id", "conv_id", "user_id"):
        if column in frame:
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return frame


def expected_credit(db_path: Path, start: str, end: str, lookback_days: int | None = None) -> dict[tuple[str, str], float]:
    """(conv_id, session_id) -> ihc the linear :class:`FakeIhcClient` gives, for the range's journeys."""
    return {
        (cid, sid): share
        for cid, sids in expected_journey_order(db_path, start, end, lookback_days).items()
        if sids
        for sid, share in zip(sids, split_evenly(len(sids)))
    }


def _ts_text(value: dt.datetime) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"


def _exact(value) -> Decimal:
    return Decimal(0) if value is None or pd.isna(value) else Decimal(repr(float(value)))


def _half_up(value: Decimal, places: str) -> float:
    return float(value.quantize(Decimal(places), ROUND_HALF_UP))


def expected_report(db_path: Path, dates: Iterable[str] | None = None) -> pd.DataFrame:
    """channel_reporting recomputed from the source tables and the stored attribution.

    Every (channel, session date) with a session gets a row; ``dates`` limits it to those dates.
    Sums are exact (Decimal) and rounded once, half away from zero: money to the cent, credit to
    4 decimals, as the report stores them.
    """
    # A row present twice (a table without its primary key) is the same session, cost or order.
    # Ids are compared as text, as the pipeline stores them (sources may hold INTEGER ids).
    s = _ids_as_text(read_table(db_path, "session_sources")).drop_duplicates()
    costs = _ids_as_text(read_table(db_path, "session_costs")).drop_duplicates()
    a = read_table(db_path, "attribution_customer_journey")
    c = _ids_as_text(read_table(db_path, "conversions")).drop_duplicates("conv_id")
    s = s.merge(costs, on="session_id", how="left")
    s["cost"] = s["cost"].map(_exact)
    spend = s.groupby(["channel_name", "event_date"], as_index=False)["cost"].agg(lambda v: sum(v, Decimal(0)))
    credit = a.merge(s[["session_id", "channel_name", "event_date"]], on="session_id").merge(
        c[["conv_id", "revenue"]], on="conv_id"
    )
    credit["ihc"] = credit["ihc"].map(_exact)
    credit["ihc_revenue"] = [i * _exact(r) for i, r in zip(credit["ihc"], credit["revenue"])]
    credit = credit.groupby(["channel_name", "event_date"], as_index=False)[["ihc", "ihc_revenue"]].agg(
        lambda v: sum(v, Decimal(0))
    )
    out = spend.merge(credit, on=["channel_name", "event_date"], how="left")
    out["cost"] = out["cost"].map(lambda v: _half_up(v, "0.01"))
    out["ihc"] = out["ihc"].map(lambda v: 0.0 if pd.isna(v) else _half_up(v, "0.0001"))
    out["ihc_revenue"] = out["ihc_revenue"].map(lambda v: 0.0 if pd.isna(v) else _half_up(v, "0.01"))
    out = out.rename(columns={"event_date": "date"})
    if dates is not None:
        out = out[out["date"].isin(set(dates))].reset_index(drop=True)
    return out


def run_pipeline(db_path: Path, run_id: str, start: str, end: str, client=None, **options):
    """Run every stage in order, as the DAG does, without Airflow, on a SQLite file.

    ``options`` are those of :func:`run_stages`. Returns the run summary.
    """
    from ihc_attribution.db import Database

    db = Database.connect_sqlite(str(db_path))
    try:
        return run_stages(db, run_id, start, end, client, **options)
    finally:
        db.close()


def run_stages(
    db,
    run_id: str,
    start: str,
    end: str,
    client=None,
    *,
    max_journeys: int = 100,
    max_sessions: int = 3000,
    policy: str = "truncate",
    output_dir: Path | None = None,
    lookback_days: int | None = None,
    refresh_spend: bool = False,
    cut_journeys: bool = True,
    reattribute_drift: bool = False,
):
    """Run every stage in order on an open :class:`Database` (SQLite or PostgreSQL).

    ``cut_journeys=False`` stages every session of a journey, however many can be sent.
    """
    from ihc_attribution import api_stage, checks, journeys, load, report, schema
    from ihc_attribution.daterange import range_from_params

    rng = range_from_params({"start_date": start, "end_date": end})
    client = client or FakeIhcClient()
    schema.ensure_schema(db)
    journeys.extract_journeys(db, run_id, rng, lookback_days=lookback_days, created_at="2024-01-01 00:00:00",
                              max_sessions=max_sessions if cut_journeys else None,
                              reattribute_drift=reattribute_drift)
    api_stage.pack_requests(db, run_id, max_journeys=max_journeys, max_sessions=max_sessions, oversized_policy=policy)
    api_stage.send_requests(db, run_id, client, max_sessions=max_sessions)
    load.load_attribution(db, run_id, rng, recorded_at="2024-01-01 00:00:00")
    report.build_report(db, run_id, rng, refresh_spend=refresh_spend)
    if output_dir is not None:
        export_report(db, rng, output_dir)
    return checks.check_run(db, run_id, rng)


def export_report(db, run_range, output_dir: Path) -> tuple[Path, int]:
    """Export the report of the range's dates as the export task does; return the file's path and its row count."""
    from ihc_attribution import export

    rows = export.read_report(db, run_range)
    return export.write_csv(rows, export.csv_path(output_dir, run_range)), len(rows)


def random_db(path: Path, seed: int = 0, users: int = 60, days: int = 10) -> Path:
    """A small random database: repeat buyers, equal timestamps, sessions before the range."""
    import random

    rnd = random.Random(seed)
    channels = ["Direct Traffic", "Paid Search Brand", "FB & IG Ads", "Organic Traffic", "Referral, Partner"]
    sessions, conversions, costs = [], [], []
    for u in range(users):
        n = rnd.choice([1, 1, 1, 2, 2, 3, 5, 8])
        for k in range(n):
            day = rnd.randint(-5, days - 1)
            date = (pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)).strftime("%Y-%m-%d")
            time = f"{rnd.randint(0, 23):02d}:{rnd.choice([0, 30]):02d}:00"
            sid = f"s{u}_{k}"
            sessions.append((sid, f"u{u}", date, time, rnd.choice(channels), rnd.randint(0, 1), rnd.randint(0, 1), 0))
            r = rnd.random()
            if r < 0.8:
                costs.append((sid, round(rnd.uniform(0, 3), 2)))
            elif r < 0.9:
                costs.append((sid, None))
        for k in range(rnd.choice([0, 1, 1, 2])):
            day = rnd.randint(0, days - 1)
            date = (pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)).strftime("%Y-%m-%d")
            time = f"{rnd.randint(0, 23):02d}:{rnd.choice([0, 30]):02d}:00"
            conversions.append((f"c{u}_{k}", f"u{u}", date, time, round(rnd.uniform(5, 150), 2)))
    return make_db(path, sessions, conversions, costs)


# --- random source data for property-based tests ------------------------------------------------

CHANNELS = ("Direct Traffic", "Paid Search Brand", "FB & IG Ads", "Organic Traffic", "Referral, Partner")
# Few distinct times, so that sessions tie with each other and with conversions; midnight and
# the last second of a day sit on range boundaries.
TIMES = ("00:00:00", "00:00:01", "09:30:00", "12:00:00", "23:59:59")
# Dates next to month ends, year ends and leap days, far from the demo's 2024 as well.
EDGE_DATES = tuple(
    dt.date.fromisoformat(d)
    for d in (
        "1990-01-01", "1996-02-27", "1999-12-30", "2000-02-28", "2000-12-30", "2019-02-27",
        "2023-01-30", "2023-12-31", "2024-02-28", "2024-12-31", "2028-02-28", "2030-12-29",
    )
)


@dataclass(frozen=True)
class SourceData:
    """Rows for :func:`make_db` and a run's inclusive date range."""

    sessions: list[tuple]
    conversions: list[tuple]
    costs: list[tuple]
    start_date: str
    end_date: str
    lookback_days: int | None

    @property
    def start_ts(self) -> str:
        return f"{self.start_date} 00:00:00"

    @property
    def end_ts(self) -> str:
        return f"{dt.date.fromisoformat(self.end_date) + dt.timedelta(days=1)} 00:00:00"

    def days(self) -> list[str]:
        first, last = dt.date.fromisoformat(self.start_date), dt.date.fromisoformat(self.end_date)
        return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


@st.composite
def source_data(draw, max_buyers: int = 3, max_sessions: int = 6, max_days: int = 5) -> SourceData:
    """A small random database and range: repeat buyers, sessions tied with each other and with
    the conversion, sessions before and after the range, users who never buy, missing, NULL,
    zero and negative costs, costs of sessions that do not exist, and a look-back of None or a
    few days.
    """
    first = draw(st.one_of(st.dates(dt.date(1990, 1, 1), dt.date(2030, 12, 31)), st.sampled_from(EDGE_DATES)))
    span = draw(st.integers(0, max_days - 1))
    last = first + dt.timedelta(days=span)

    def day(lo: int, hi: int) -> str:
        return (first + dt.timedelta(days=draw(st.integers(lo, hi)))).isoformat()

    cost_values = st.sampled_from([0.0, 0.01, 1.5, 2.25, 10.0, -0.5])
    sessions, conversions, costs = [], [], []
    buyers = draw(st.integers(1, max_buyers))
    for u in range(buyers + draw(st.integers(0, 2))):
        user = f"u{u}"
        stamps = []
        for _ in range(draw(st.integers(1 if u < buyers else 0, max_sessions))):
            sid = f"s{len(sessions)}"
            if stamps and draw(st.integers(0, 2)) == 0:
                stamp = draw(st.sampled_from(stamps))  # tied with an earlier session of the user
            else:
                stamp = (day(-4, span + 1), draw(st.sampled_from(TIMES)))
            stamps.append(stamp)
            flags = draw(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)))
            sessions.append((sid, user, *stamp, draw(st.sampled_from(CHANNELS)), *flags))
            kind = draw(st.sampled_from(["missing", "null", "value", "value"]))
            if kind != "missing":
                costs.append((sid, None if kind == "null" else draw(cost_values)))
        for k in range(draw(st.integers(1, 3)) if u < buyers else 0):
            where = draw(st.sampled_from(["tied", "in range", "in range", "in range", "near"]))
            if stamps and where == "tied":
                stamp = draw(st.sampled_from(stamps))  # at the very time of one of the user's sessions
            else:
                stamp = (day(0, span) if where == "in range" else day(-1, span + 1), draw(st.sampled_from(TIMES)))
            revenue = draw(st.sampled_from([0.0, 9.99, 25.0, 120.5]))
            conversions.append((f"c{u}_{k}", user, *stamp, revenue))
    for k in range(draw(st.integers(0, 2))):
        costs.append((f"gone{k}", draw(cost_values)))  # cost of a session that does not exist
    lookback = draw(st.sampled_from([None, None, 1, 2, 3]))
    return SourceData(sessions, conversions, costs, first.isoformat(), last.isoformat(), lookback)
