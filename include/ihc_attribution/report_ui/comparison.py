"""The selected range against the previous period of the same length, per channel.

Both periods are summed as the page sums its selection (``sources.report_rows``, then
``compute_figures``), so this period's figures are the totals table's to the cent. A channel
without a row in one period had no session then: spend and revenue 0 there, ratios undefined.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple
from decimal import ROUND_HALF_UP, Decimal

from ihc_attribution.charts import TOTAL_LABEL, ChannelTotals, Figures, compute_figures
from ihc_attribution.report_ui import sources as sources

_ZERO = Decimal(0)
#: What the comparison shows per channel: (attribute of ``ChannelTotals``, heading, kind of number).
METRICS = (
    ("cost", "Spend", "money"),
    ("ihc_revenue", "Attributed revenue", "money"),
    ("roas", "ROAS", "number"),
    ("cpo", "CPO", "money"),
)


class Change(NamedTuple):
    """One figure in both periods, the difference, and that in percent of the previous value (one
    decimal); ``None`` where undefined (a ratio over 0, a percent of 0)."""

    current: Decimal | None
    previous: Decimal | None
    delta: Decimal | None
    percent: Decimal | None


@dataclass(frozen=True)
class ChannelChange:
    """A channel's totals (or the selection's) in both periods; ``change(metric)`` for each of :data:`METRICS`."""

    channel_name: str
    current: ChannelTotals
    previous: ChannelTotals

    def change(self, metric: str) -> Change:
        now, before = getattr(self.current, metric), getattr(self.previous, metric)
        delta = None if now is None or before is None else now - before
        percent = None if delta is None or not before else (delta * 100 / abs(before)).quantize(Decimal("0.1"), ROUND_HALF_UP)
        return Change(now, before, delta, percent)


@dataclass(frozen=True)
class Comparison:
    """The selection against its previous period: ``days`` each, ``*_dates`` of them with report rows;
    ``channels`` in the totals table's order, then those only in the previous period."""

    current: sources.Selection
    previous: sources.Selection
    days: int
    current_dates: int
    previous_dates: int
    channels: tuple[ChannelChange, ...]
    total: ChannelChange

    @property
    def empty(self) -> bool:
        """Whether the previous period has no report row to compare with."""
        return self.previous_dates == 0


def previous_period(selection: sources.Selection) -> sources.Selection:
    """The days just before the selection, as many as it has, with the same channels.

    ``2024-01-08 .. 2024-01-14`` gives ``2024-01-01 .. 2024-01-07``.
    """
    start, end = dt.date.fromisoformat(selection.start), dt.date.fromisoformat(selection.end)
    days = (end - start).days + 1
    # Ordinals, so that a range asked for near year 1 gives an (empty) period instead of an error.
    first, last = (dt.date.fromordinal(max(start.toordinal() - n, 1)) for n in (days, 1))
    return sources.Selection(first.isoformat(), last.isoformat(), selection.channels)


def compare(db: sources.ReportDb, selection: sources.Selection, current: Figures) -> Comparison:
    """The selection (whose figures are ``current``) against the previous period of the same length."""
    period = previous_period(selection)
    previous = compute_figures(sources.report_rows(db, period))
    before = {t.channel_name: t for t in previous.channels}
    now = {t.channel_name: t for t in current.channels}
    nothing = ChannelTotals("", _ZERO, _ZERO, _ZERO, 0)
    rows = [ChannelChange(t.channel_name, t, before.get(t.channel_name, nothing)) for t in current.channels]
    rows += [ChannelChange(t.channel_name, nothing, t) for t in previous.channels if t.channel_name not in now]
    days = (dt.date.fromisoformat(selection.end) - dt.date.fromisoformat(selection.start)).days + 1
    return Comparison(selection, period, days, len(current.dates), len(previous.dates), tuple(rows),
                      ChannelChange(TOTAL_LABEL, current.total, previous.total))
