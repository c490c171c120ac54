"""Demo database generator: a realistic, seeded challenge database in a few seconds (docs/demo_data.md).

``python -m ihc_attribution_dev.demo_data --out demo.db`` writes a SQLite file with the exact
challenge schema, the source tables filled. The same configuration always gives the same table
contents. The file is built under a temporary name and renamed into place, so an interrupted run
never leaves a half-written database behind. Its profile and draws are in :mod:`.demo_profile` and
:mod:`.demo_draw`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ihc_attribution.schema import CONVERSIONS, SESSION_COSTS, SESSION_SOURCES, challenge_ddl
from ihc_attribution_dev.demo_draw import SECONDS_PER_DAY, DemoTables, build_tables, hex_ids
from ihc_attribution_dev.demo_profile import CHANNEL_NAMES


@dataclass(frozen=True)
class DemoConfig:
    """What to generate: the command line's options (docs/demo_data.md).

    Sessions beyond the converting journeys belong to users who never convert; if the journeys
    alone need more than ``conversions * sessions_per_conversion``, the total is larger than asked.
    ``bad_rows`` adds the few bad rows of ``demo_profile.BAD_ROWS`` when there are buyers enough.
    """

    start: dt.date = dt.date(2024, 1, 1)
    end: dt.date = dt.date(2024, 1, 14)
    conversions: int = 1_500
    sessions_per_conversion: float = 100.0
    users: int | None = None
    seed: int = 42
    lookback_days: int = 60
    bad_rows: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` for a configuration that cannot be generated."""
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.conversions < 1:
            raise ValueError("conversions must be at least 1")
        if self.sessions_per_conversion < 1:
            raise ValueError("sessions_per_conversion must be at least 1")
        if self.lookback_days < 0:
            raise ValueError("lookback_days must not be negative")
        if self.users is not None and self.users < 1:
            raise ValueError("users must be at least 1")

    @property
    def window_start(self) -> dt.date:
        """First day that may hold sessions."""
        return self.start - dt.timedelta(days=self.lookback_days)

    @property
    def window_days(self) -> int:
        """Days from the first possible session to the end of the range."""
        return (self.end - self.window_start).days + 1


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate` wrote."""

    path: Path
    sessions: int
    conversions: int
    users: int
    buyers: int
    repeat_buyers: int
    journey_sessions: int
    post_purchase_sessions: int
    noise_sessions: int
    sessions_before_start: int
    cost_rows: int
    null_costs: int
    total_revenue: float
    first_session_date: str
    last_session_date: str
    seconds: float
    conversions_without_sessions: int = 0
    malformed_sessions: int = 0

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.sessions:,} sessions ({self.first_session_date} .. "
            f"{self.last_session_date}), {self.conversions:,} conversions, {self.users:,} users, "
            f"in {self.seconds:.2f} s"
        )

    def lines(self) -> list[str]:
        """A human-readable description, one fact per line."""
        return [
            f"wrote {self.path} in {self.seconds:.2f} s",
            f"sessions            {self.sessions:>12,}  "
            f"({self.first_session_date} .. {self.last_session_date})",
            f"  in journeys       {self.journey_sessions:>12,}",
            f"  after last order  {self.post_purchase_sessions:>12,}",
            f"  never converting  {self.noise_sessions:>12,}",
            f"  before start      {self.sessions_before_start:>12,}",
            f"conversions         {self.conversions:>12,}  (revenue {self.total_revenue:,.2f} EUR)",
            f"users               {self.users:>12,}  ({self.buyers:,} buyers, {self.repeat_buyers:,} repeat)",
            f"session_costs rows  {self.cost_rows:>12,}  ({self.null_costs:,} NULL)",
            f"bad rows on purpose {self.conversions_without_sessions + self.malformed_sessions:>12,}  "
            f"({self.conversions_without_sessions} conversions without sessions, "
            f"{self.malformed_sessions} malformed sessions)",
        ]


def _insert(conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    # Rows are zipped lazily from column lists: executemany streams them, no list is materialised.
    placeholders = ", ".join("?" for _ in columns)
    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)


def write_database(path: Path, tables: DemoTables) -> None:
    """Create the challenge schema in a new SQLite file at ``path`` and fill the source tables.

    Rows go in ordered by primary key: appending to the primary-key indexes is several times
    faster than inserting at random places, and the order of rows in a table carries no meaning.
    """
    start = tables.config.window_start
    days = np.array([(start + dt.timedelta(days=d)).isoformat() for d in range(tables.config.window_days)], dtype=object)
    clock = np.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(SECONDS_PER_DAY)], dtype=object)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Nothing to protect while the file is being built: it is renamed into place only once
        # complete, so journaling and fsync would only cost time.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.executescript(challenge_ddl())
        conn.execute("BEGIN")

        # Keys are unique, and hex of a 64-bit value sorts like the value.
        order = np.argsort(tables.session_keys)
        session_ids = hex_ids(tables.session_keys[order])
        t = tables.session_time[order]
        session_dates = days[t // SECONDS_PER_DAY]
        session_channels = np.array(CHANNEL_NAMES, dtype=object)[tables.session_channel[order]]
        for at in np.flatnonzero(np.isin(order, tables.bad_date_sessions)):
            session_dates[at] = session_dates[at][:8] + "00"  # day 00 of the session's month
        session_channels[np.isin(order, tables.bad_channel_sessions)] = ""
        session_rows = zip(
            session_ids.tolist(),
            tables.user_ids[tables.session_user[order]].tolist(),
            session_dates.tolist(),
            clock[t % SECONDS_PER_DAY].tolist(),
            session_channels.tolist(),
            tables.holder[order].tolist(),
            tables.closer[order].tolist(),
            tables.impression[order].tolist(),
            strict=True,
        )
        _insert(
            conn,
            SESSION_SOURCES,
            ("session_id", "user_id", "event_date", "event_time", "channel_name",
             "holder_engagement", "closer_engagement", "impression_interaction"),
            session_rows,
        )  # fmt: skip

        with_cost = tables.has_cost[order]
        costs = tables.cost[order][with_cost]
        cost_values = np.where(np.isnan(costs), None, costs).tolist()
        cost_rows = zip(session_ids[with_cost].tolist(), cost_values, strict=True)
        _insert(conn, SESSION_COSTS, ("session_id", "cost"), cost_rows)

        corder = np.argsort(tables.conv_keys)
        ct = tables.conv_time[corder]
        conv_users = tables.user_ids[tables.conv_user[corder]]
        for conv, user in zip(tables.sessionless_convs.tolist(), tables.sessionless_user_ids.tolist(), strict=True):
            conv_users[corder == conv] = user
        conv_rows = zip(
            hex_ids(tables.conv_keys[corder]).tolist(),
            conv_users.tolist(),
            days[ct // SECONDS_PER_DAY].tolist(),
            clock[ct % SECONDS_PER_DAY].tolist(),
            tables.revenue[corder].tolist(),
            strict=True,
        )
        _insert(conn, CONVERSIONS, ("conv_id", "user_id", "conv_date", "conv_time", "revenue"), conv_rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def generate(
    path: str | os.PathLike[str], config: DemoConfig | None = None, *, overwrite: bool = False
) -> DemoSummary:
    """Write a demo challenge database to ``path`` (:class:`DemoConfig` defaults without ``config``).

    ``path`` holds either its previous content or the full new database. An existing ``path``
    raises ``FileExistsError`` and is left untouched unless ``overwrite``.
    """
    config = config or DemoConfig()
    started = time.perf_counter()
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (use overwrite to replace it)")
    tables = build_tables(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target, so the final rename is atomic. SQLite creates the file itself,
    # with the usual permissions (mkstemp's would be owner-only).
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write_database(tmp, tables)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} appeared while generating (use overwrite to replace it)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return _summarise(target, tables, time.perf_counter() - started)


def _summarise(path: Path, tables: DemoTables, seconds: float) -> DemoSummary:
    config = tables.config
    times = tables.session_time
    start_s = config.lookback_days * SECONDS_PER_DAY
    first = config.window_start + dt.timedelta(days=int(times.min()) // SECONDS_PER_DAY)
    last = config.window_start + dt.timedelta(days=int(times.max()) // SECONDS_PER_DAY)
    return DemoSummary(
        path=path,
        sessions=len(times),
        conversions=len(tables.conv_keys),
        users=len(tables.user_ids),
        buyers=tables.buyers,
        repeat_buyers=tables.repeat_buyers,
        journey_sessions=tables.journey_sessions,
        post_purchase_sessions=tables.post_purchase_sessions,
        noise_sessions=len(times) - tables.journey_sessions - tables.post_purchase_sessions,
        sessions_before_start=int((times < start_s).sum()),
        cost_rows=int(tables.has_cost.sum()),
        null_costs=int((tables.has_cost & np.isnan(tables.cost)).sum()),
        total_revenue=round(float(tables.revenue.sum()), 2),
        first_session_date=first.isoformat(),
        last_session_date=last.isoformat(),
        seconds=seconds,
        conversions_without_sessions=len(tables.sessionless_convs),
        malformed_sessions=len(tables.bad_date_sessions) + len(tables.bad_channel_sessions),
    )


# One option per DemoConfig field but bad_rows: (field, type, help).
OPTIONS = (
    ("start", dt.date.fromisoformat, "first day with conversions, YYYY-MM-DD (default %(default)s)"),
    ("end", dt.date.fromisoformat, "last day with conversions, inclusive (default %(default)s)"),
    ("conversions", int, "number of conversions (default %(default)s)"),
    ("sessions_per_conversion", float, "total sessions per conversion (default %(default)s; the real data had ~225)"),
    ("users", int, "total distinct users (default: about 2.4 sessions per non-converting user)"),
    ("seed", int, "random seed (default %(default)s)"),
    ("lookback_days", int, "days before --start that sessions reach back (default %(default)s)"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ihc_attribution_dev.demo_data",
        description="Generate a realistic demo database with the challenge schema (SQLite).",
    )
    parser.add_argument("--out", required=True, type=Path, help="SQLite file to create")
    for name, kind, text in OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(DemoConfig(), name), help=text)
    parser.add_argument("--no-bad-rows", dest="bad_rows", action="store_false",
                        help="leave out the few bad rows (conversions without sessions, malformed sessions)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
    try:
        summary = generate(args.out, config, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
