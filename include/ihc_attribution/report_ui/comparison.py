"""The selected range against the previous period of the same length, per channel.

Both periods are summed as the page sums its selection (``sources.report_rows``, then
``compute_figures``), so this period's figures are the totals table's to the cent. A channel
without a row in one period had no session then: spend and revenue 0 there, ratios undefined.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Change:
    """One figure in both periods; ``None`` where it is undefined (a ratio over 0)."""

    current: Decimal | None
    previous: Decimal | None

    @property
    def delta(self) -> Decimal | None:
        """Current less previous; ``None`` when either is undefined."""
        return None if self.current is None or self.previous is None else self.current - self.previous

    @property
    def percent(self) -> Decimal | None:
        """The change in percent of the previous value, one decimal; ``None`` when that is 0 or undefined."""
        delta = self.delta
        if delta is None or not self.previous:
            return None
        return (delta * 100 / abs(self.previous)).quantize(Decimal("0.1"), ROUND_HALF_UP)


@dataclass(frozen=True)
class ChannelChange:
    """A channel's totals (or the selection's) in both periods; ``change(metric)`` for each of :data:`METRICS`."""

    channel_name: str
    current: ChannelTotals
    previous: ChannelTotals

    def change(self, metric: str) -> Change:
        return Change(getattr(self.current, metric), getattr(self.previous, metric))


@dataclass(frozen=True)
class Comparison:
    """The selection against its previous period.

    ``current_dates`` and ``previous_dates`` count the dates with report rows in each period, of
    ``days``; ``channels`` are those of the current period in the totals table's order, then
    those only in the previous period.
    """

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
