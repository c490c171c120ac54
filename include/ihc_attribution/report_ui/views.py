"""What each page of the report shows, computed once per request and handed to its template.

The figures are :func:`ihc_attribution.charts.compute_figures` of the selected rows of
``channel_reporting``, rounded as the CSV rounds them; the templates only format them. The previous
period is summed the same way, so this period's figures in the comparison are the totals table's.
A channel without a row in one period had no session then: spend and revenue 0, ratios undefined.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlencode

from ihc_attribution.charts import TOTAL_LABEL, ChannelTotals, Figures, channel_label, compute_figures, currency, money
from ihc_attribution.daterange import MAX_RANGE_DAYS  # the limit of a run's range too
from ihc_attribution.report_ui import sources as sources
from ihc_attribution.settings import DAG_ID

if TYPE_CHECKING:
    from starlette.datastructures import QueryParams

    from ihc_attribution.export import ReportRow

DEFAULT_DAYS = 30
ISSUES_LIMIT = 200
REPORTS_LIMIT = 100
PATHS_LIMIT = 20


def run_link(run_id: str) -> str:
    """Link to the run's page in the Airflow UI, relative to the report pages (works under a base path)."""
    return f"../dags/{quote(DAG_ID, safe='')}/runs/{quote(run_id, safe='')}"


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text.strip()) if text else None
    except ValueError:
        return None


def _range(start: dt.date | None, end: dt.date | None, bounds: tuple[str, str] | None) -> tuple[dt.date, dt.date]:
    """The range to show: both dates as asked; one date with up to 30 days after or before it,
    within the report's dates; neither, the last 30 days of the report."""
    last = _date(bounds[1]) if bounds else dt.datetime.now(dt.timezone.utc).date()
    first = _date(bounds[0]) if bounds else last
    window = dt.timedelta(days=DEFAULT_DAYS - 1)
    if start is not None and end is not None:
        return start, end
    if end is not None:
        return (max(first, end - window) if first <= end else end - window), end
    if start is not None:
        return start, (min(last, start + window) if start <= last else start + window)
    return max(first, last - window), last


def _pick_range(params: Mapping[str, Any], bounds: tuple[str, str] | None) -> tuple[dt.date, dt.date, list[str]]:
    asked = {name: _date(params.get(name)) for name in ("start", "end")}
    start, end = _range(asked["start"], asked["end"], bounds)
    kept = next((name for name in ("start", "end") if asked[name] is not None), None)
    shown = {"start": f"up to {DEFAULT_DAYS} days from the start date", "end": f"up to {DEFAULT_DAYS} days to the end date",
             None: f"the default range (the last {DEFAULT_DAYS} days of the report)"}[kept]
    problems = [f"{name} date {params[name]!r} is not a date (YYYY-MM-DD); showing {start} to {end}, {shown}"
                for name in ("start", "end") if params.get(name) and asked[name] is None]
    if start > end:
        problems.append(f"start {start} is after end {end}; the two were swapped")
        start, end = end, start
    if (end - start).days >= MAX_RANGE_DAYS:
        problems.append(f"a range is at most {MAX_RANGE_DAYS} days; showing the last {MAX_RANGE_DAYS}")
        start = end - dt.timedelta(days=MAX_RANGE_DAYS - 1)
    return start, end, problems


def pick(params: QueryParams, channels: Sequence[str],
         bounds: tuple[str, str] | None) -> tuple[sources.Selection, list[str], tuple[str, ...]]:
    """The selection, what was wrong with what was asked, and the trend lines picked, from the query
    (``start``, ``end``, ``channel`` and ``line`` repeated): the last 30 days of the report, or up to 30
    from one date; a date that is not one is left out and the message says what is shown instead.
    Channels (with a message) and lines the report does not have are dropped."""
    start, end, problems = _pick_range(params, bounds)
    known = set(channels)
    asked = params.getlist("channel")
    unknown = [c for c in asked if c not in known]
    if unknown:
        problems.append("no report rows for channel(s) " + ", ".join(repr(channel_label(c)) for c in unknown))
    picked = tuple(dict.fromkeys(c for c in asked if c in known))
    lines = tuple(dict.fromkeys(c for c in params.getlist("line") if c in known))
    return sources.Selection(start.isoformat(), end.isoformat(), picked), problems, lines


def report_context(db: sources.ReportDb, params: QueryParams) -> dict[str, Any]:
    """Everything the report page shows for the request's selection."""
    from ihc_attribution import credit
    from ihc_attribution.journey_stats import read_journey_stats
    from ihc_attribution.report_ui import svg

    channels = sources.report_channels(db)
    bounds = sources.report_bounds(db)
    selection, problems, lines = pick(params, channels, bounds)
    rows = sources.report_rows(db, selection)
    figures = compute_figures(rows)
    code = currency()
    colors = svg.channel_colors(channels)
    issues = sources.read_issues(db, limit=0)
    has_credit = db.has_table(credit.CREDIT)
    models = credit.model_totals(db, selection.start, selection.end, list(selection.channels) or None) if has_credit else []
    in_range = sum(n for date, _, n in issues.by_date if selection.start <= date <= selection.end)
    journeys = None  # the paths and journey distributions of the selection's conversions, or why they cannot be read
    if has_credit:
        try:  # credit rows older than the conversion timestamps fail here alone: the rest of the page shows
            journeys = read_journey_stats(db, selection.start, selection.end, selection.channels)
        except Exception as exc:
            journeys = f"{type(exc).__name__}: {exc}"
    return {
        "selection": selection,
        "problems": problems,
        "all_channels": channels,
        "bounds": bounds,
        "rows": rows,
        "figures": figures,
        "currency": code,
        "money": lambda v: money(v, code),
        "builds": sources.report_builds(db, selection),
        "issues_in_range": in_range,
        "query": urlencode([("start", selection.start), ("end", selection.end),
                            *(("channel", c) for c in selection.channels)]),
        "colors": colors,
        "lines": lines,
        "top": svg.TREND_TOP,
        "charts": svg.report_charts(figures, colors, code, lines),
        "models": models,
        "model_names": credit.MODELS,
        "comparison": compare(db, selection, figures) if figures.dates else None,
        "metrics": METRICS,
        "journeys": journeys,
        "paths_limit": PATHS_LIMIT,
    }


# --- the previous period ----------------------------------------------------------------------

_ZERO = Decimal(0)
#: What the comparison shows per channel: (attribute of ``ChannelTotals``, heading, kind of number).
METRICS = (
    ("cost", "Spend", "money"),
    ("ihc_revenue", "Attributed revenue", "money"),
    ("roas", "ROAS", "number"),
    ("cpo", "CPO", "money"),
)


# One figure in both periods, the difference, and that in percent of the previous value (one decimal);
# None where undefined (a ratio over 0, a percent of 0).
Change = NamedTuple("Change", [("current", Decimal | None), ("previous", Decimal | None), ("delta", Decimal | None),
                               ("percent", Decimal | None)])


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


def previous_period(selection: sources.Selection) -> sources.Selection:
    """The days just before the selection, as many, same channels (``01-08..01-14`` gives ``01-01..01-07``)."""
    start, end = dt.date.fromisoformat(selection.start), dt.date.fromisoformat(selection.end)
    days = (end - start).days + 1
    # Ordinals, so that a range asked for near year 1 gives an (empty) period instead of an error.
    first, last = (dt.date.fromordinal(max(start.toordinal() - n, 1)) for n in (days, 1))
    return sources.Selection(first.isoformat(), last.isoformat(), selection.channels)


def compare(db: sources.ReportDb, selection: sources.Selection, current: Figures) -> dict[str, Any]:
    """The selection (whose figures are ``current``) against the previous period of the same length:
    ``days`` each, ``*_dates`` of them with report rows; ``channels`` in the totals table's order, then
    those only in the previous period."""
    period = previous_period(selection)
    previous = compute_figures(sources.report_rows(db, period))
    before = {t.channel_name: t for t in previous.channels}
    now = {t.channel_name: t for t in current.channels}
    nothing = ChannelTotals("", _ZERO, _ZERO, _ZERO, 0)
    rows = [ChannelChange(t.channel_name, t, before.get(t.channel_name, nothing)) for t in current.channels]
    rows += [ChannelChange(t.channel_name, nothing, t) for t in previous.channels if t.channel_name not in now]
    days = (dt.date.fromisoformat(selection.end) - dt.date.fromisoformat(selection.start)).days + 1
    return {"current": selection, "previous": period, "days": days, "current_dates": len(current.dates),
            "previous_dates": len(previous.dates), "channels": rows,
            "total": ChannelChange(TOTAL_LABEL, current.total, previous.total)}


def csv_name(selection: sources.Selection) -> str:
    suffix = f"_{len(selection.channels)}-channels" if selection.channels else ""
    return f"channel_reporting_{selection.start}_{selection.end}{suffix}.csv"


def selection_csv(rows: Sequence[ReportRow]) -> str:
    """The selected rows as the export writes them: same columns, rounding and formula setting."""
    from ihc_attribution.export import write_rows
    from ihc_attribution import settings

    out = io.StringIO()
    write_rows(out, rows, escape_formulas=settings.get("csv_escape_formulas"))
    return out.getvalue()
