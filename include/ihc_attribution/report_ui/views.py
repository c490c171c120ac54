"""What each page of the report shows, computed once per request and handed to its template.

The figures come from :func:`ihc_attribution.charts.compute_figures` over the rows of
``channel_reporting`` the analyst selected (a date range, and channels or all of them); the
templates only format them, and the charts draw the same numbers from a JSON block of the page.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from ihc_attribution.report_ui import sources as sources

from ihc_attribution.settings import DAG_ID
DEFAULT_DAYS = 30
ISSUES_LIMIT = 200
REPORTS_LIMIT = 100
MAX_RANGE_DAYS = 3660
# Colours of the channels, by their place in the list of all channels, so that a channel keeps
# its colour whatever else is selected (Tableau 10 and its lighter companions).
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
)  # fmt: skip


def run_link(run_id: str) -> str:
    """Link to the run's page in the Airflow UI, relative to the report pages (works under a base path)."""
    return f"../dags/{quote(DAG_ID, safe='')}/runs/{quote(run_id, safe='')}"


def file_link(name: str) -> str:
    return f"files/{quote(name, safe='')}"


def _date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        return None


@dataclass
class Picked:
    """The selection of a request, and what was wrong with what was asked."""

    selection: sources.Selection
    problems: list[str] = field(default_factory=list)


def pick(params: Mapping[str, Any], channels: Sequence[str], bounds: tuple[str, str] | None) -> Picked:
    """The selection from the query (``start``, ``end``, ``channel`` repeated).

    Without dates: the last 30 days of ``channel_reporting``. A malformed date falls back to the
    default with a message; channels that the report does not have are dropped with a message.
    """
    problems: list[str] = []
    last = _date(bounds[1]) if bounds else dt.datetime.now(dt.timezone.utc).date()
    first = _date(bounds[0]) if bounds else last
    default_start = max(first, last - dt.timedelta(days=DEFAULT_DAYS - 1))
    start, end = _date(params.get("start")), _date(params.get("end"))
    for name, asked, got in (("start", params.get("start"), start), ("end", params.get("end"), end)):
        if asked and got is None:
            problems.append(f"{name} date {asked!r} is not a date (YYYY-MM-DD); showing the default range")
    if start is None or end is None:
        start, end = (start or default_start), (end or last)
    if start > end:
        problems.append(f"start {start} is after end {end}; the two were swapped")
        start, end = end, start
    if (end - start).days >= MAX_RANGE_DAYS:
        problems.append(f"a range is at most {MAX_RANGE_DAYS} days; showing the last {MAX_RANGE_DAYS}")
        start = end - dt.timedelta(days=MAX_RANGE_DAYS - 1)
    asked_channels = [c for c in params.get("channel", []) if c != ""]
    known = set(channels)
    unknown = [c for c in asked_channels if c not in known]
    if unknown:
        problems.append("no report rows for channel(s) " + ", ".join(repr(c) for c in unknown))
    picked = tuple(dict.fromkeys(c for c in asked_channels if c in known))
    return Picked(sources.Selection(start.isoformat(), end.isoformat(), picked), problems)


def selection_query(selection: sources.Selection) -> str:
    """The query string that selects ``selection`` again."""
    return urlencode([("start", selection.start), ("end", selection.end),
                      *(("channel", c) for c in selection.channels)])


def _series(values: Sequence[Any | None], attr: str, kind: str) -> list[float | None]:
    from ihc_attribution.charts import plain

    return [None if v is None else plain(getattr(v, attr), kind) for v in values]


def _amounts(values: Sequence[Any | None], attr: str) -> list[float]:
    # No row for a channel and date means no session: nothing spent, nothing attributed.
    from ihc_attribution.charts import plain

    return [0.0 if v is None else plain(getattr(v, attr), "money") for v in values]


def chart_data(figures: Any, all_channels: Sequence[str], currency: str) -> dict[str, Any]:
    """The numbers the page's charts draw: the same figures as its tables, rounded as shown."""
    from ihc_attribution.charts import plain

    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(all_channels)}
    return {
        "currency": currency,
        "dates": list(figures.dates),
        "channels": [
            {"name": t.channel_name, "color": colour.get(t.channel_name, "#5c6578"),
             "cost": plain(t.cost, "money"), "ihc_revenue": plain(t.ihc_revenue, "money"),
             "ihc": plain(t.ihc, "ihc"), "cpo": plain(t.cpo, "money"), "roas": plain(t.roas, "ihc")}
            for t in figures.channels
        ],
        "daily": [
            {"name": name, "color": colour.get(name, "#5c6578"),
             "cost": _amounts(days, "cost"), "ihc_revenue": _amounts(days, "ihc_revenue"),
             "cpo": _series(days, "cpo", "money"), "roas": _series(days, "roas", "ihc")}
            for name, days in figures.daily.items()
        ],
        "total": {
            "cost": _amounts(figures.per_date, "cost"), "ihc_revenue": _amounts(figures.per_date, "ihc_revenue"),
            "cpo": _series(figures.per_date, "cpo", "money"), "roas": _series(figures.per_date, "roas", "ihc"),
        },
    }


def report_context(db: sources.ReportDb, params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the report page shows for the request's selection."""
    from ihc_attribution import charts

    channels = sources.report_channels(db)
    bounds = sources.report_bounds(db)
    picked = pick(params, channels, bounds)
    selection = picked.selection
    rows = sources.report_rows(db, selection)
    figures = charts.compute_figures(rows)
    code = charts.currency()
    issues = sources.read_issues(db, limit=0)
    in_range = sum(n for date, _, n in issues.by_date if selection.start <= date <= selection.end)
    return {
        "selection": selection,
        "problems": picked.problems,
        "all_channels": channels,
        "bounds": bounds,
        "rows": rows,
        "figures": figures,
        "currency": code,
        "money": lambda v: charts.money(v, code),
        "number": charts.number,
        "builds": sources.report_builds(db, selection),
        "issues_in_range": in_range,
        "issues_total": issues.total,
        "query": selection_query(selection),
        "chart_data": chart_data(figures, channels, code),
    }


def csv_name(selection: sources.Selection) -> str:
    suffix = f"_{len(selection.channels)}-channels" if selection.channels else ""
    return f"channel_reporting_{selection.start}_{selection.end}{suffix}.csv"


def selection_csv(rows: Sequence[sources.ReportCell]) -> str:
    """The selected rows as the export writes them: same columns, rounding and formula setting."""
    from ihc_attribution.export import report_row, write_rows
    from ihc_attribution.settings import csv_escape_formulas

    out = io.StringIO()
    report_rows = (report_row(c.channel_name, c.date, c.cost, c.ihc, c.ihc_revenue) for c in rows)
    write_rows(out, report_rows, escape_formulas=csv_escape_formulas())
    return out.getvalue()
