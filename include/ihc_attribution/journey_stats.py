"""Paths to conversion, journey lengths and times to conversion, from ``attribution_credit``.

A journey is exactly the sessions that shared a conversion's credit; conversions are selected by
their own date, their whole journeys counting. A *path* is the sessions' channels in session order
with consecutive repeats collapsed (Email, Email, Direct is ``Email > Direct``); the *time to
conversion* runs from the first session to the conversion. Revenue counts once per conversion.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from ihc_attribution.credit import CREDIT

PATH_SEPARATOR = " > "
_MICROS = Decimal(1_000_000)
_HOUR, _DAY = 3600, 86400

#: Journey length buckets: (fewest sessions, label), ascending; each runs up to the next one's lower bound.
LENGTH_BUCKETS: tuple[tuple[int, str], ...] = (
    (1, "1"), (2, "2"), (3, "3"), (4, "4-5"), (6, "6-10"), (11, "11-20"), (21, "21 or more"),
)  # fmt: skip
#: Time to conversion buckets: (from, in seconds, label), ascending; a bucket includes its lower bound.
TIME_BUCKETS: tuple[tuple[int, str], ...] = (
    (0, "under 1 hour"), (_HOUR, "1 to 24 hours"), (_DAY, "1 to 7 days"), (7 * _DAY, "7 to 30 days"),
    (30 * _DAY, "30 days or more"),
)  # fmt: skip


class Journey(NamedTuple):
    conv_id: str
    path: tuple[str, ...]
    sessions: int
    seconds: float | None  # None when the conversion has no readable timestamp
    revenue_micros: int


@dataclass(frozen=True)
class Count:
    """Conversions and their revenue (exact micro-units) under one label: a path or a bucket."""

    label: str
    conversions: int
    revenue_micros: int
    channels: tuple[str, ...] = ()

    @property
    def revenue(self) -> Decimal:
        """The revenue, rounded half up to the cent."""
        return (Decimal(self.revenue_micros) / _MICROS).quantize(Decimal("0.01"), ROUND_HALF_UP)


@dataclass(frozen=True)
class JourneyStats:
    """Every distinct path, the most frequent first (then the most revenue, then by channel names);
    every bucket of :data:`LENGTH_BUCKETS` and :data:`TIME_BUCKETS`, empty ones included; and
    ``untimed``: the conversions without a timestamp, which are in no time bucket."""

    conversions: int
    revenue_micros: int
    paths: tuple[Count, ...]
    lengths: tuple[Count, ...]
    times: tuple[Count, ...]
    untimed: int = 0

    @property
    def revenue(self) -> Decimal:
        """The conversions' revenue, rounded half up to the cent."""
        return Count("", self.conversions, self.revenue_micros).revenue

    def share(self, conversions: int) -> Decimal | None:
        """``conversions`` as a percentage of all, one decimal; ``None`` without any conversion."""
        if not self.conversions:
            return None
        return (Decimal(conversions) * 100 / self.conversions).quantize(Decimal("0.1"), ROUND_HALF_UP)

    def top(self, limit: int) -> tuple[Count, ...]:
        return self.paths[:limit]


def collapse(channels: Iterable[str]) -> tuple[str, ...]:
    """The channels with consecutive repeats collapsed into one: ``A, A, B, A`` gives ``A, B, A``."""
    return tuple(name for name, _ in itertools.groupby(channels))


def _timestamp(value: Any) -> dt.datetime | None:
    try:
        return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:  # None, or not a timestamp
        return None


def journeys(rows: Iterable[Sequence[Any]]) -> list[Journey]:
    """The journeys of credit rows ``(conv_id, conv_ts, session_ts, session_id, channel_name, revenue_micros)``.

    Sessions are ordered here, in code-point order of their timestamp and id, so that PostgreSQL
    and SQLite give the same paths whatever their collation.
    """
    found = []
    for conv_id, group in itertools.groupby(sorted(rows, key=operator.itemgetter(0, 2, 3)), key=operator.itemgetter(0)):
        sessions = list(group)
        _, conv_ts, first_ts, _, _, micros = sessions[0]
        converted, first = _timestamp(conv_ts), _timestamp(first_ts)
        seconds = None if converted is None or first is None else (converted - first).total_seconds()
        path = tuple(map(str, collapse(row[4] for row in sessions)))
        found.append(Journey(str(conv_id), path, len(sessions), seconds, int(micros)))
    return found


def _bucketed(buckets: Sequence[tuple[int, str]], values: Iterable[tuple[float, int]]) -> tuple[Count, ...]:
    lows = [low for low, _ in buckets]
    counts, revenue = [0] * len(buckets), [0] * len(buckets)
    for value, micros in values:
        # Sessions precede their conversion; a negative time (clock skew in the source) counts as 0.
        at = max(bisect.bisect_right(lows, value) - 1, 0)
        counts[at] += 1
        revenue[at] += micros
    return tuple(Count(label, counts[i], revenue[i]) for i, (_, label) in enumerate(buckets))


def summarize(found: Iterable[Journey]) -> JourneyStats:
    found = list(found)
    paths: dict[tuple[str, ...], list[int]] = {}
    for journey in found:
        cell = paths.setdefault(journey.path, [0, 0])
        cell[0] += 1
        cell[1] += journey.revenue_micros
    ranked = sorted(paths.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    timed = [(j.seconds, j.revenue_micros) for j in found if j.seconds is not None]
    return JourneyStats(
        conversions=len(found),
        revenue_micros=sum(j.revenue_micros for j in found),
        paths=tuple(Count(PATH_SEPARATOR.join(path), n, micros, path) for path, (n, micros) in ranked),
        lengths=_bucketed(LENGTH_BUCKETS, ((j.sessions, j.revenue_micros) for j in found)),
        times=_bucketed(TIME_BUCKETS, timed),
        untimed=len(found) - len(timed),
    )


def read_journey_stats(db: Any, first_date: str, last_date: str, channels: Sequence[str] = ()) -> JourneyStats:
    """Paths, journey lengths and times to conversion of the conversions dated ``[first_date, last_date]``
    (with a session of one of ``channels``, if any), read through anything with ``query(sql, params)``."""
    where, params = "conv_date >= ? AND conv_date <= ?", [first_date, last_date]
    if channels:
        marks = ", ".join("?" for _ in channels)
        where += (f" AND conv_id IN (SELECT conv_id FROM {CREDIT} WHERE conv_date >= ? AND conv_date <= ? "
                  f"AND channel_name IN ({marks}))")
        params += [first_date, last_date, *channels]
    rows = db.query(
        f"SELECT conv_id, conv_ts, session_ts, session_id, channel_name, revenue_micros FROM {CREDIT} WHERE {where}",
        params,
    )
    return summarize(journeys(rows))
