"""The report page over the database: every figure it shows equals a recomputation from the tables.

The recomputation is independent of the package: pandas and Decimal over the tables as stored,
each row rounded as the CSV rounds it, ratios and rounding written out here again. The page is
read the way an analyst reads it: headline cards, the totals table, the values the charts draw
(their SVG marks carry them), the legends and checkboxes, and the CSV download.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import random
import re
import sqlite3
import uuid
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from ihc_attribution import charts, export, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from ihc_attribution.report_ui import app as report_app
from ihc_attribution.report_ui import sources as sources
from ihc_attribution_dev.demo_data import DemoConfig, generate
from tests.helpers import run_pipeline

CHANNELS = ["Direct Traffic", "Paid Search", "=HYPERLINK(\"x\")", "<b>Display</b> & Co", "Organic", "Email"]
RUN_A = "manual__2024-01-05T10:00:00+00:00"
RUN_B = "scheduled__2024-01-09T00:00:00+00:00"


# --- the database ------------------------------------------------------------------------------


def fill(db: Database, seed: int = 11, channels: list[str] = CHANNELS) -> None:
    """Report rows over 2023-12-20 .. 2024-01-10 with zero spend, zero credit and missing days.

    The amounts are not rounded to the cent (as a database of an older version holds them), so a
    page that summed them unrounded would differ from the CSV's sums.
    """
    rng = random.Random(seed)
    rows = []
    for day in pd.date_range("2023-12-20", "2024-01-10").strftime("%Y-%m-%d"):
        for name in channels:
            if rng.random() < 0.15:
                continue  # no session of the channel that day: no row
            cost = 0.0 if name in ("Organic", "Email") else round(rng.uniform(0, 250), 2)
            ihc = 0.0 if rng.random() < 0.1 else rng.uniform(0, 12)
            rows.append((name, day, cost, ihc, ihc * rng.uniform(10, 120)))
    with db.transaction():
        db.executemany("INSERT INTO channel_reporting VALUES (?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO attribution_runs VALUES (?, ?, ?, ?)", [
            (RUN_A, "2024-01-01", "2024-01-05", "2024-01-05 10:00:01"),
            (RUN_B, "2024-01-08", "2024-01-08", "2024-01-09 00:00:03"),
        ])
        builds = [(d, RUN_A, None, "2024-01-05 10:00:00", "2024-01-05 10:00:40")
                  for d in pd.date_range("2023-12-20", "2024-01-05").strftime("%Y-%m-%d")]
        builds += [(d, RUN_B, 14, "2024-01-09 00:00:00", "2024-01-09 00:01:10")
                   for d in pd.date_range("2024-01-06", "2024-01-10").strftime("%Y-%m-%d")]
        db.executemany("INSERT INTO attribution_report_builds VALUES (?, ?, ?, ?, ?)", builds)
        db.executemany("INSERT INTO conversions VALUES (?, ?, ?, ?, ?)", [
            ("c-1", "u-1", "2024-01-02", "10:00:00", 50.0), ("c-2", "u-2", "2024-01-02", "11:00:00", 20.0),
            ("c-3", "u-3", "2024-01-08", "09:00:00", 70.0), ("c-4", "u-4", "2024-01-09", "09:00:00", 10.0),
        ])
        db.executemany("INSERT INTO attribution_issues (conv_id, reason, detail, run_id, recorded_at) VALUES (?, ?, ?, ?, ?)", [
            ("c-1", "no_sessions", "no session before the conversion", RUN_A, "2024-01-05 10:00:20"),
            ("c-2", "invalid_input", "session s-9: event_date '2024-01-00' is not a date", RUN_A,
             "2024-01-05 10:00:21"),
            ("c-3", "no_sessions", "<script>alert(1)</script>", RUN_B, "2024-01-09 00:00:30"),
            ("c-4", "api_rejected", "journey failed: invalid timestamp", RUN_B, "2024-01-09 00:00:31"),
        ])



def make_db(path: Path, channels: list[str] = CHANNELS) -> Path:
    db = Database.connect_sqlite(str(path))
    db.executescript(schema.challenge_ddl())
    schema.ensure_schema(db)
    fill(db, channels=channels)
    db.close()
    return path


def use_db(monkeypatch, path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))


@pytest.fixture
def db_path(tmp_path, monkeypatch) -> Path:
    path = make_db(tmp_path / "report.db")
    use_db(monkeypatch, path)
    monkeypatch.delenv("ATTRIBUTION_CURRENCY", raising=False)
    return path


@pytest.fixture
def client() -> TestClient:
    return TestClient(report_app.create_app(require_auth=False))


# --- reading the page --------------------------------------------------------------------------


class Page(HTMLParser):
    """Headline cards, table rows by table id, links, checkboxes, and the charts' marks by figure id.

    ``bars[figure][channel]``: the values of the channel's bars; ``labels[figure]``: the label
    texts of a bar chart; ``series[figure]``: the attributes of each line (``data-series``,
    ``data-kind``, ``data-values``); ``legends[figure]``: the legend's entries.
    """

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[tuple[str, dict]] = []
        self.boxes: dict[str, dict[str, dict]] = {}
        self.bars: dict[str, dict[str, list[str]]] = {}
        self.labels: dict[str, list[str]] = {}
        self.series: dict[str, list[dict]] = {}
        self.legends: dict[str, list[str]] = {}
        self.notes: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._card: str | None = None
        self._in_v = False
        self._link: dict | None = None
        self._text: list[str] | None = None
        self._into: tuple[str, str] | None = None
        self._figure: str | None = None
        self._bar: str | None = None
        self._box: dict | None = None
        self.feed(text)
        self.close()

    def _collect(self, into: tuple[str, str]) -> None:
        self._text, self._into = [], into

    def handle_starttag(self, tag, attrs):  # noqa: C901  (one branch per element the tests read)
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "div" and "data-figure" in a:
            self._card = a["data-figure"]
        elif tag == "div" and cls == "v" and self._card:
            self._in_v = True
            self.cards[self._card] = ""
        elif tag == "a":
            self._link = dict(a, text="")
            self.links.append((a.get("href", ""), self._link))
        elif tag == "figure":
            self._figure = a.get("id")
        elif tag == "g" and cls == "bar-row":
            self._bar = a["data-channel"]
            self.bars.setdefault(self._figure, {})[self._bar] = []
        elif tag == "rect" and "data-value" in a:
            self.bars[self._figure][self._bar].append(a["data-value"])
        elif tag == "text" and cls == "label":
            self._collect(("labels", self._figure))
        elif tag == "g" and cls == "series":
            self.series.setdefault(self._figure, []).append(a)
        elif tag == "li" and self._figure:
            self._collect(("legends", self._figure))
        elif tag == "p" and "clip-note" in cls:
            self._collect(("notes", self._figure))
        elif tag == "input" and a.get("type") == "checkbox":
            self._box = dict(a, text="")
            self.boxes.setdefault(a["name"], {})[a["value"]] = self._box

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "div" and self._in_v:
            self._in_v, self._card = False, None
        elif tag == "a":
            self._link = None
        elif tag == "figure":
            self._figure = None
        elif tag == "label":
            self._box = None
        elif tag in ("text", "li", "p") and self._text is not None:
            kind, figure = self._into
            text = "".join(self._text).strip()
            if kind == "notes":
                self.notes[figure] = text
            else:
                getattr(self, kind).setdefault(figure, []).append(text)
            self._text = None

    def handle_data(self, data):
        for sink in (self._cell, self._text):
            if sink is not None:
                sink.append(data)
        if self._in_v:
            self.cards[self._card] += data
        if self._link is not None:
            self._link["text"] += data
        if self._box is not None:
            self._box["text"] += data

    def drawn(self, figure: str) -> dict[str, list[str]]:
        """The lines of a trend chart: channel name (or "Other" or "Selection") -> values."""
        names = {"other": "Other", "total": "Selection"}
        return {names.get(a["data-kind"], a["data-series"]): a["data-values"].split(" ")
                for a in self.series.get(figure, [])}


# --- the independent recomputation -------------------------------------------------------------

CENT, FOUR = Decimal("0.01"), Decimal("0.0001")


def q(value: float, places: str) -> Decimal:
    return Decimal(repr(float(value))).quantize(Decimal(places), ROUND_HALF_UP)


def eur(value: Decimal | None) -> str:
    if value is None:
        return "n/a"
    v = value.quantize(CENT, ROUND_HALF_UP)
    return f"{'-' if v < 0 else ''}\u20ac{abs(v):,}"


def num(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value.quantize(CENT, ROUND_HALF_UP):,}"


def cpo(cost: Decimal, ihc: Decimal) -> Decimal | None:
    return None if ihc == 0 else (cost / ihc).quantize(CENT, ROUND_HALF_UP)


def roas(cost: Decimal, revenue: Decimal) -> Decimal | None:
    return None if cost == 0 else (revenue / cost).quantize(FOUR, ROUND_HALF_UP)


def table(path: Path, start: str, end: str, channels: list[str]) -> pd.DataFrame:
    """The selection's rows, each rounded as the CSV rounds it (columns c, i, r as Decimal)."""
    with sqlite3.connect(path) as conn:
        frame = pd.read_sql_query("SELECT * FROM channel_reporting", conn)
    frame = frame[(frame.date >= start) & (frame.date <= end)]
    frame = frame[frame.channel_name.isin(channels)] if channels else frame
    frame = frame.assign(c=[q(v, "0.01") for v in frame.cost], i=[q(v, "0.0001") for v in frame.ihc],
                         r=[q(v, "0.01") for v in frame.ihc_revenue])
    return frame


def sums(frame: pd.DataFrame) -> tuple[Decimal, Decimal, Decimal]:
    return (sum(frame.c, Decimal(0)), sum(frame.i, Decimal(0)), sum(frame.r, Decimal(0)))


def per_channel(frame: pd.DataFrame) -> dict[str, tuple[Decimal, Decimal, Decimal, int]]:
    return {name: (*sums(g), g.date.nunique()) for name, g in frame.groupby("channel_name")}


def by_revenue(per: dict) -> list[str]:
    return sorted(per, key=lambda n: (-per[n][2], -per[n][0], n))


def day_values(frame: pd.DataFrame, dates: list[str]) -> dict[str, list[str]]:
    """Spend, revenue, ROAS and CPO of ``frame``'s rows per date, as the charts' marks carry them."""
    out: dict[str, list[str]] = {"cost": [], "ihc_revenue": [], "roas": [], "cpo": []}
    for day in dates:
        rows = frame[frame.date == day]
        c, i, r = sums(rows)
        out["cost"].append(str(c.quantize(CENT)))  # a day without a row: nothing spent, 0.00
        out["ihc_revenue"].append(str(r.quantize(CENT)))
        out["roas"].append("n/a" if rows.empty or roas(c, r) is None else str(roas(c, r)))
        out["cpo"].append("n/a" if rows.empty or cpo(c, i) is None else str(cpo(c, i)))
    return out


TRENDS = {"chart-daily-cost": "cost", "chart-daily-revenue": "ihc_revenue", "chart-roas": "roas", "chart-cpo": "cpo"}
SELECTIONS = [
    ("2024-01-01", "2024-01-07", ["Direct Traffic", "Paid Search"]),
    ("2023-12-20", "2024-01-10", []),
    ("2024-01-03", "2024-01-03", ["Organic", "<b>Display</b> & Co", "=HYPERLINK(\"x\")"]),
]


@pytest.mark.parametrize(("start", "end", "channels"), SELECTIONS)
def test_every_figure_equals_a_recomputation_from_the_table(client, db_path, start, end, channels):
    response = client.get("/", params={"start": start, "end": end, "channel": channels})
    assert response.status_code == 200
    page = Page(response.text)
    frame = table(db_path, start, end, channels)
    cost, ihc, revenue = sums(frame)
    per = per_channel(frame)

    # headline cards: the sums of the CSV's rows
    assert page.cards == {"spend": eur(cost), "ihc_revenue": eur(revenue), "ihc": num(ihc),
                          "roas": num(roas(cost, revenue)), "cpo": eur(cpo(cost, ihc))}

    # totals table: one row per channel, by attributed revenue, and the selection's row
    rows = page.tables["channel-totals"]
    assert rows[0][0] == "Channel"
    body, foot = rows[1:-1], rows[-1]
    assert [r[0] for r in body] == by_revenue(per)
    for r in body:
        c, i, rev, days = per[r[0]]
        assert r[1:] == [eur(c), num(i), eur(rev), eur(cpo(c, i)), num(roas(c, rev)), str(days)], r[0]
    assert foot[:6] == ["All channels", eur(cost), num(ihc), eur(revenue), eur(cpo(cost, ihc)), num(roas(cost, revenue))]

    # what the charts draw: every channel's bars, and every line of the trends day by day
    assert page.bars["chart-channels"] == {n: [str(v[0]), str(v[2])] for n, v in per.items()}
    assert page.labels["chart-channels"] == by_revenue(per)
    assert page.bars["chart-roas-channels"] == {n: [] if v[0] == 0 else [str(roas(v[0], v[2]))] for n, v in per.items()}
    dates = sorted(frame.date.unique())
    if len(dates) < 2:
        assert not page.series and "A selection of one date has no trend" in response.text
    for figure, metric in TRENDS.items() if len(dates) > 1 else ():
        drawn = page.drawn(figure)
        assert set(drawn) - {"Selection"} == set(per), "at most 7 channels: every one has its own line"
        for name in per:
            assert drawn[name] == day_values(frame[frame.channel_name == name], dates)[metric], (figure, name)
        if metric in ("roas", "cpo") and len(per) > 1:
            assert drawn["Selection"] == day_values(frame, dates)[metric]
    for bad in ("Infinity", "NaN", "inf"):
        assert bad not in " ".join(" ".join(v) for f in page.series for v in page.drawn(f).values())


@pytest.mark.parametrize(("start", "end", "channels"), SELECTIONS)
def test_csv_of_the_selection_equals_the_table(client, db_path, start, end, channels):
    response = client.get("/report.csv", params={"start": start, "end": end, "channel": channels})
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    got = list(csv.DictReader(io.StringIO(response.text)))
    frame = table(db_path, start, end, channels).sort_values(["date", "channel_name"])
    assert len(got) == len(frame)
    for row, e in zip(got, frame.itertuples(), strict=True):
        assert row["channel_name"] == e.channel_name, "names exactly as stored (formula escaping is opt-in)"
        assert row["date"] == e.date
        assert Decimal(row["cost"]) == q(e.cost, "0.01")
        assert Decimal(row["ihc"]) == q(e.ihc, "0.0001")
        assert Decimal(row["ihc_revenue"]) == q(e.ihc_revenue, "0.01")
        assert row["CPO"] == ("" if e.ihc == 0 else str(q(e.cost / e.ihc, "0.01")))
        assert row["ROAS"] == ("" if e.cost == 0 else str(q(e.ihc_revenue / e.cost, "0.0001")))


@pytest.mark.parametrize(("start", "end", "channels"), SELECTIONS)
def test_page_totals_are_the_sums_of_its_csv(client, db_path, start, end, channels):
    params = {"start": start, "end": end, "channel": channels}
    got = list(csv.DictReader(io.StringIO(client.get("/report.csv", params=params).text)))
    page = Page(client.get("/", params=params).text)
    cost, ihc, revenue = (sum((Decimal(r[k]) for r in got), Decimal(0)) for k in ("cost", "ihc", "ihc_revenue"))
    assert page.tables["channel-totals"][-1][1:4] == [eur(cost), num(ihc), eur(revenue)]
    assert (page.cards["spend"], page.cards["ihc_revenue"]) == (eur(cost), eur(revenue))


def test_one_total_on_the_page_the_chart_file_the_csv_and_the_run_summary(client, tmp_path, monkeypatch):
    path = tmp_path / "demo.db"
    generate(path, DemoConfig(start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 4), conversions=150,
                              sessions_per_conversion=15, lookback_days=10))
    summary = run_pipeline(path, "manual__2024-01-05T00:00:00+00:00", "2024-01-01", "2024-01-04")
    use_db(monkeypatch, path)
    monkeypatch.delenv("ATTRIBUTION_CURRENCY", raising=False)
    params = {"start": "2024-01-01", "end": "2024-01-04"}

    got = list(csv.DictReader(io.StringIO(client.get("/report.csv", params=params).text)))
    assert len({r["channel_name"] for r in got}) >= 10
    csv_sums = [sum((Decimal(r[k]) for r in got), Decimal(0)) for k in ("cost", "ihc", "ihc_revenue")]
    expected = [eur(csv_sums[0]), num(csv_sums[1]), eur(csv_sums[2])]
    assert [summary.cost, summary.ihc, summary.ihc_revenue] == csv_sums, "the run summary (check_run)"
    page = Page(client.get("/", params=params).text)
    assert page.tables["channel-totals"][-1][1:4] == expected
    db = Database.connect_sqlite(str(path))
    try:
        rows = export.read_report(db, range_from_params({"start_date": "2024-01-01", "end_date": "2024-01-04"}))
    finally:
        db.close()
    chart = Page(charts.render_chart(rows, "t"))
    assert chart.tables["channel-totals"][-1][1:4] == expected
    assert chart.tables["channel-totals"] == page.tables["channel-totals"]
    assert chart.bars == page.bars

    # the models beside IHC: the IHC revenue per channel is the totals table's, every model hands
    # out the same orders in all, and the table is the one model_totals computes
    models = {row[0]: row for row in page.tables["model-comparison"][2:]}
    totals = {row[0]: row for row in page.tables["channel-totals"][1:-1]}
    assert models and set(models) == set(totals) - {name for name, row in totals.items() if row[2] == num(Decimal(0))}
    for name, row in models.items():
        assert row[1 + 5] == totals[name][3], name  # IHC revenue == attributed revenue
    # over every date the journeys reach, each model hands out one order per attributed conversion
    whole = Page(client.get("/", params={"start": "2023-01-01", "end": "2024-01-04"}).text)
    rows = whole.tables["model-comparison"][2:]
    per_model = [sum(Decimal(row[1 + i]) for row in rows) for i in range(5)]
    assert per_model == [Decimal(summary.attributed)] * 5


def test_changing_the_selection_changes_the_figures(client, db_path):
    two = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-07",
                                       "channel": ["Direct Traffic", "Paid Search"]}).text)
    everything = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-07"}).text)
    assert two.cards["spend"] != everything.cards["spend"]
    assert set(two.drawn("chart-daily-cost")) == {"Direct Traffic", "Paid Search"}
    assert len(everything.drawn("chart-daily-cost")) == len(CHANNELS)


def test_currency_comes_from_the_environment(client, db_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "usd")
    text = client.get("/", params={"start": "2024-01-01", "end": "2024-01-07"}).text
    assert Page(text).cards["spend"].startswith("$") and ">$0<" in text  # the axis of a trend chart
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "CHF")
    assert Page(client.get("/").text).cards["spend"].startswith("CHF\u00a0")


def test_default_is_the_last_30_days_of_the_report(client, db_path):
    page = client.get("/").text
    assert 'name="start" value="2023-12-20"' in page and 'name="end" value="2024-01-10"' in page
    assert "2023-12-20 to 2024-01-10" in page  # fewer than 30 days of rows here


def shown_range(text: str) -> tuple[str, str]:
    boxes = {name: text.split(f'name="{name}" value="')[1].split('"')[0] for name in ("start", "end")}
    return boxes["start"], boxes["end"]


@pytest.mark.parametrize(("params", "shown", "message"), [
    ({"start": "2024-13-01", "end": "2024-01-03"}, ("2023-12-20", "2024-01-03"),
     "start date &#39;2024-13-01&#39; is not a date (YYYY-MM-DD); showing 2023-12-20 to 2024-01-03, "
     "up to 30 days to the end date"),
    ({"start": "2024-01-02", "end": "soon"}, ("2024-01-02", "2024-01-10"),
     "end date &#39;soon&#39; is not a date (YYYY-MM-DD); showing 2024-01-02 to 2024-01-10, "
     "up to 30 days from the start date"),
    ({"start": "x", "end": ""}, ("2023-12-20", "2024-01-10"),
     "start date &#39;x&#39; is not a date (YYYY-MM-DD); showing 2023-12-20 to 2024-01-10, the default range"),
    ({"end": "2023-12-25"}, ("2023-12-20", "2023-12-25"), None),
    ({"start": "2024-01-05", "end": "2024-01-02"}, ("2024-01-02", "2024-01-05"), "were swapped"),
])
def test_a_bad_or_partial_range_says_what_it_shows(client, db_path, params, shown, message):
    response = client.get("/", params=params)
    assert response.status_code == 200
    assert shown_range(response.text) == shown
    assert f"<h2 id=\"figures-title\">{shown[0]} to {shown[1]}," in response.text
    if message is None:
        assert 'class="warn"' not in response.text
    else:
        assert message in response.text


def test_unknown_channels_are_explained_not_an_error(client, db_path):
    response = client.get("/", params={"start": "2024-01-01", "end": "2024-01-03", "channel": ["Nope"]})
    assert response.status_code == 200 and "no report rows for channel(s) &#39;Nope&#39;" in response.text


def test_channel_names_are_text_everywhere(client, db_path):
    text = client.get("/", params={"start": "2024-01-01", "end": "2024-01-10"}).text
    assert "<b>Display</b>" not in text and "&lt;b&gt;Display&lt;/b&gt; &amp; Co" in text
    assert "<b>" not in text.split("<svg")[1]


# --- many channels -----------------------------------------------------------------------------

MANY = [f"Channel {i:02d}" for i in range(1, 18)] + [""]


@pytest.fixture
def many_path(tmp_path, monkeypatch) -> Path:
    path = make_db(tmp_path / "many.db", MANY)
    use_db(monkeypatch, path)
    monkeypatch.delenv("ATTRIBUTION_CURRENCY", raising=False)
    return path


def test_every_channel_is_labelled_in_the_channel_charts(client, many_path):
    page = Page(client.get("/", params={"start": "2023-12-20", "end": "2024-01-10"}).text)
    per = per_channel(table(many_path, "2023-12-20", "2024-01-10", []))
    assert len(per) == 18
    for figure in ("chart-channels", "chart-roas-channels"):
        assert page.labels[figure] == [charts.channel_label(n) for n in by_revenue(per)]
        assert set(page.bars[figure]) == set(MANY)


def test_trends_draw_the_top_channels_and_other_unless_lines_are_picked(client, many_path):
    start, end = "2023-12-20", "2024-01-10"
    frame = table(many_path, start, end, [])
    dates = sorted(frame.date.unique())
    top = by_revenue(per_channel(frame))[:6]
    page = Page(client.get("/", params={"start": start, "end": end}).text)
    for figure, metric in TRENDS.items():
        drawn = page.drawn(figure)
        assert list(drawn) == top + ["Other"] + (["Selection"] if metric in ("roas", "cpo") else [])
        assert drawn["Other"] == day_values(frame[~frame.channel_name.isin(top)], dates)[metric], figure
    assert page.legends["chart-cpo"][-2:] == ["Other (12 channels)", "Selection"]
    assert not any(box.get("checked") is not None for box in page.boxes["line"].values())

    picked = ["Channel 03", ""]
    page = Page(client.get("/", params={"start": start, "end": end, "line": picked}).text)
    drawn = page.drawn("chart-daily-revenue")
    assert set(drawn) == {"Channel 03", "", "Other"}
    assert drawn[""] == day_values(frame[frame.channel_name == ""], dates)["ihc_revenue"]
    assert drawn["Other"] == day_values(frame[~frame.channel_name.isin(picked)], dates)["ihc_revenue"]
    assert {v for v, box in page.boxes["line"].items() if "checked" in box} == set(picked)
    assert "(empty name)" in page.legends["chart-daily-revenue"]


def test_the_empty_channel_name_reads_the_same_everywhere(client, many_path):
    page = Page(client.get("/", params={"start": "2023-12-20", "end": "2024-01-10", "line": [""]}).text)
    assert page.boxes["channel"][""]["text"].strip() == "(empty name)"
    assert page.boxes["line"][""]["text"].strip() == "(empty name)"
    assert "(empty name)" in page.labels["chart-channels"] and "" not in page.labels["chart-channels"]
    assert "(empty name)" in page.legends["chart-cpo"]
    assert "(empty name)" in [r[0] for r in page.tables["channel-totals"]]
    assert "" not in [r[0] for r in page.tables["channel-totals"]]
    # and it can be selected like any other channel
    only = Page(client.get("/", params={"start": "2023-12-20", "end": "2024-01-10", "channel": [""]}).text)
    assert [r[0] for r in only.tables["channel-totals"][1:-1]] == ["(empty name)"]
    assert "checked" in only.boxes["channel"][""]


def test_an_outlier_ratio_is_clipped_and_marked_not_flattening_the_chart(client, many_path):
    with sqlite3.connect(many_path) as conn:  # two steady channels, then a CPO of 125.47 / 0.0104 = 12,064.42
        conn.execute("UPDATE channel_reporting SET cost = 90 + CAST(substr(date, 9, 2) AS INT), ihc = 2, "
                     "ihc_revenue = 300 WHERE channel_name IN ('Channel 01', 'Channel 02')")
        conn.execute("UPDATE channel_reporting SET cost = 125.47, ihc = 0.0104, ihc_revenue = 2 "
                     "WHERE channel_name = 'Channel 01' AND date = '2024-01-03'")
    text = client.get("/", params={"start": "2024-01-01", "end": "2024-01-10", "line": ["Channel 01", "Channel 02"]}).text
    page = Page(text)
    values = page.drawn("chart-cpo")["Channel 01"]
    assert values[2] == "12064.42", "the mark keeps the value"
    assert page.notes["chart-cpo"].startswith("1 point above ")
    top = Decimal(page.notes["chart-cpo"].split(" above \u20ac")[1].split(" ")[0].replace(",", ""))
    others = [Decimal(v) for line in page.drawn("chart-cpo").values() for v in line if v not in ("n/a", "12064.42")]
    assert max(others) <= top < 1000, "the axis ends near the other values"
    assert "2024-01-03: Channel 01 \u20ac12,064.42 (above the axis)" in text
    assert "chart-roas" not in page.notes, "ROAS has no outlier here"


# --- paths to conversion -----------------------------------------------------------------------

LENGTH_EDGES, LENGTH_LABELS = [1, 2, 3, 4, 6, 11, 21, float("inf")], ["1", "2", "3", "4-5", "6-10", "11-20", "21 or more"]
TIME_EDGES = [0, 3600, 86400, 7 * 86400, 30 * 86400, float("inf")]
TIME_LABELS = ["under 1 hour", "1 to 24 hours", "1 to 7 days", "7 to 30 days", "30 days or more"]


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory) -> Path:
    """Two weeks of generated conversions whose journeys reach up to 45 days back, through the pipeline."""
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    generate(path, DemoConfig(start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 14), conversions=400,
                              sessions_per_conversion=15, lookback_days=45))
    run_pipeline(path, "manual__2024-01-15T00:00:00+00:00", "2024-01-01", "2024-01-14")
    return path


@pytest.fixture
def demo(demo_path, monkeypatch) -> Path:
    use_db(monkeypatch, demo_path)
    monkeypatch.delenv("ATTRIBUTION_CURRENCY", raising=False)
    return demo_path


def text_of(page: str, element_id: str) -> str:
    """The text of the paragraph with ``element_id``, its tags dropped and its spaces collapsed."""
    inner = page.split(f'id="{element_id}">')[1].split("</p>")[0]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", inner)).split())


def pct(part: int, whole: int) -> str:
    return f"{(Decimal(part) * 100 / whole).quantize(Decimal('0.1'), ROUND_HALF_UP)} %"


def micros_eur(micros: int) -> str:
    return eur(Decimal(int(micros)) / 1_000_000)


def conversions_of(path: Path, start: str, end: str, channels: list[str]) -> pd.DataFrame:
    """One row per conversion dated [start, end] (touching ``channels``, if any): path, sessions, seconds, revenue."""
    with sqlite3.connect(path) as conn:
        credit = pd.read_sql_query("SELECT * FROM attribution_credit", conn)
    credit = credit[(credit.conv_date >= start) & (credit.conv_date <= end)]
    if channels:
        credit = credit[credit.conv_id.isin(credit[credit.channel_name.isin(channels)].conv_id)]
    credit = credit.sort_values(["conv_id", "session_ts", "session_id"])
    steps = credit[credit.channel_name != credit.groupby("conv_id").channel_name.shift()]
    out = credit.groupby("conv_id").agg(sessions=("session_id", "size"), first=("session_ts", "min"),
                                        conv_ts=("conv_ts", "first"), revenue=("revenue_micros", "first"))
    out["path"] = steps.groupby("conv_id").channel_name.agg(tuple)
    out["seconds"] = (pd.to_datetime(out.conv_ts) - pd.to_datetime(out["first"])).dt.total_seconds()
    return out


def bucket_rows(values: pd.Series, revenue: pd.Series, edges: list[float], labels: list[str]) -> list[list[str]]:
    """The rows of a distribution table: label, conversions, share and revenue of each bucket."""
    cut = pd.cut(values, edges, right=False, labels=labels)
    total = len(values)
    return [[label, str(int((cut == label).sum())), pct(int((cut == label).sum()), total),
             micros_eur(revenue[cut == label].sum())] for label in labels]


PATH_SELECTIONS = [
    ("2024-01-08", "2024-01-14", []),
    ("2024-01-01", "2024-01-14", []),
    ("2024-01-03", "2024-01-09", ["Newsletter & Email", "Referral"]),
]


@pytest.mark.parametrize(("start", "end", "channels"), PATH_SELECTIONS)
def test_paths_and_journey_distributions_equal_a_recomputation_from_the_credit_table(client, demo, start, end, channels):
    response = client.get("/", params={"start": start, "end": end, "channel": channels})
    page = Page(response.text)
    found = conversions_of(demo, start, end, channels)
    total = len(found)
    assert total > 50 and found.path.map(len).max() >= 3, "journeys of several channels to check"

    paths = found.groupby("path").agg(n=("sessions", "size"), revenue=("revenue", "sum"))
    ranked = sorted(paths.itertuples(), key=lambda p: (-p.n, -p.revenue, p.Index))
    expected = [[str(i), " > ".join(charts.channel_label(c) for c in p.Index), str(p.n), pct(p.n, total),
                 micros_eur(p.revenue)] for i, p in enumerate(ranked[:20], start=1)]
    assert page.tables["paths"][1:] == expected
    assert len(ranked) > 20 or channels
    scope = text_of(response.text, "paths-scope")
    assert f"{total} attributed conversion(s) with a conversion date from {start} to {end}" in scope

    lengths = bucket_rows(found.sessions, found.revenue, LENGTH_EDGES, LENGTH_LABELS)
    assert [r[:4] for r in page.tables["journey-lengths"][1:]] == lengths
    times = bucket_rows(found.seconds, found.revenue, TIME_EDGES, TIME_LABELS)
    assert [r[:4] for r in page.tables["time-to-conversion"][1:]] == times
    assert sum(int(r[1]) > 0 for r in times) >= 4 and sum(int(r[1]) > 0 for r in lengths) >= 5, "buckets filled"


def test_paths_of_a_range_without_conversions_say_so(client, demo):
    text = client.get("/", params={"start": "2023-12-01", "end": "2023-12-07"}).text
    assert 'id="paths-none"' in text and 'id="paths"' not in text


@pytest.mark.parametrize(("change", "message"), [
    ("DROP TABLE attribution_credit", "holds no attributed journeys yet"),
    ("ALTER TABLE attribution_credit DROP COLUMN conv_ts", "The journeys cannot be read: OperationalError"),
])
def test_a_database_without_journeys_shows_the_rest_of_the_page(client, db_path, change, message):
    with sqlite3.connect(db_path) as conn:
        conn.execute(change)
    text = client.get("/", params={"start": "2024-01-01", "end": "2024-01-07"}).text
    assert message in text and 'id="channel-totals"' in text and 'id="period-comparison"' in text


# --- the previous period -----------------------------------------------------------------------


def change(now: Decimal | None, before: Decimal | None, fmt) -> str:
    if now is None or before is None:
        return "n/a"
    delta = now - before
    text = ("+" if delta > 0 else "") + fmt(delta)
    if before == 0:
        return text
    return f"{text} ({format((delta * 100 / abs(before)).quantize(Decimal('0.1'), ROUND_HALF_UP), '+')} %)"


def compared(now: tuple, before: tuple) -> list[str]:
    """The 12 cells of a comparison row: spend, revenue, ROAS and CPO, each now, before and the change."""
    cells = []
    for pick, fmt in ((lambda c, i, r: c, eur), (lambda c, i, r: r, eur), (lambda c, i, r: roas(c, r), num),
                      (lambda c, i, r: cpo(c, i), eur)):
        a, b = pick(*now[:3]), pick(*before[:3])
        cells += [fmt(a), fmt(b), change(a, b, fmt)]
    return cells


def previous(start: str, end: str) -> tuple[str, str]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    days = (last - first).days + 1
    return str(first - dt.timedelta(days=days)), str(first - dt.timedelta(days=1))


def check_comparison(page: Page, path: Path, start: str, end: str, channels: list[str]) -> None:
    """The comparison table against a recomputation, and its current columns against the totals table."""
    now = per_channel(table(path, start, end, channels))
    before = per_channel(table(path, *previous(start, end), channels))
    zero = (Decimal(0), Decimal(0), Decimal(0))
    rows = page.tables["period-comparison"]
    assert rows[1] == ["This period", "Previous", "Change"] * 4
    body, foot = rows[2:-1], rows[-1]
    order = by_revenue(now) + [n for n in by_revenue(before) if n not in now]
    assert [r[0] for r in body] == [charts.channel_label(n) for n in order]
    for r, name in zip(body, order, strict=True):
        assert r[1:] == compared(now.get(name, zero), before.get(name, zero)), name
    cur, prev = sums(table(path, start, end, channels)), sums(table(path, *previous(start, end), channels))
    assert foot == ["All channels", *compared(cur, prev)]

    # this period's columns are the totals table's cells, to the cent
    totals = {r[0]: r for r in page.tables["channel-totals"][1:]}
    for r in [*body, foot]:
        if r[0] in totals:
            t = totals[r[0]]
            assert [r[1], r[4], r[7], r[10]] == [t[1], t[3], t[5], t[4]], r[0]
    assert {r[0] for r in body} >= set(totals) - {"All channels"}


@pytest.mark.parametrize(("start", "end", "channels"), [
    ("2024-01-01", "2024-01-07", []),
    ("2024-01-04", "2024-01-10", ["Direct Traffic", "Paid Search", "Organic"]),
    ("2023-12-31", "2024-01-10", []),
])
def test_the_selection_is_compared_with_the_period_before_it(client, db_path, start, end, channels):
    page = Page(client.get("/", params={"start": start, "end": end, "channel": channels}).text)
    check_comparison(page, db_path, start, end, channels)


def test_a_channel_without_rows_in_one_period_counts_zero_there(client, db_path):
    with sqlite3.connect(db_path) as conn:  # Paid Search only before, Email only now
        conn.execute("DELETE FROM channel_reporting WHERE channel_name = 'Paid Search' AND date >= '2024-01-04'")
        conn.execute("DELETE FROM channel_reporting WHERE channel_name = 'Email' AND date < '2024-01-04'")
    page = Page(client.get("/", params={"start": "2024-01-04", "end": "2024-01-10"}).text)
    check_comparison(page, db_path, "2024-01-04", "2024-01-10", [])
    rows = {r[0]: r for r in page.tables["period-comparison"][2:]}
    assert rows["Paid Search"][1] == "\u20ac0.00" and rows["Paid Search"][7] == rows["Paid Search"][9] == "n/a"
    assert rows["Email"][5] == "\u20ac0.00" and rows["Email"][6].startswith("+") and "(" not in rows["Email"][6], \
        "no percent of nothing"
    assert "Paid Search" not in {r[0] for r in page.tables["channel-totals"]}


@pytest.mark.parametrize(("start", "end", "note"), [
    ("2023-12-24", "2023-12-31", "Dates with report rows: 8 of 8 in this period, 4 of 8 in the previous one."),
    ("2023-12-20", "2023-12-26", None),
])
def test_a_previous_period_with_few_or_no_rows_says_so(client, db_path, start, end, note):
    text = client.get("/", params={"start": start, "end": end}).text
    if note is None:
        assert 'id="comparison-none"' in text and 'id="period-comparison"' not in text
        assert text_of(text, "comparison-none").startswith("No report rows from 2023-12-13 to 2023-12-19, the 7 day(s) before")
    else:
        assert text_of(text, "comparison-periods").endswith(note)
        check_comparison(Page(text), db_path, start, end, [])


def test_the_comparison_of_a_pipeline_run_shows_the_totals_table(client, demo):
    page = Page(client.get("/", params={"start": "2024-01-08", "end": "2024-01-14"}).text)
    check_comparison(page, demo, "2024-01-08", "2024-01-14", [])
    assert len(page.tables["period-comparison"]) > 10


def test_the_wide_tables_scroll_in_a_box_of_their_own_not_the_page(client, demo):
    """The models' and the periods' tables have a group of columns per model or figure, wider than a
    laptop's window: each scrolls in its own box, so that the cards and charts above do not move
    sideways with it (the models' table used to widen the whole page to 1,219 px)."""
    text = client.get("/", params={"start": "2024-01-08", "end": "2024-01-14"}).text
    for table_id in ("model-comparison", "period-comparison"):
        assert re.search(rf'<div class="scroll"><table id="{table_id}" class="compact">', text), table_id
    css = (Path(report_app.STATIC_DIR) / "report.css").read_text(encoding="utf-8")
    assert re.search(r"\.scroll\{overflow-x:auto\}", css)
    assert re.search(r"#model-comparison td\{text-align:right;white-space:nowrap\}", css)


# --- the runs behind the numbers ---------------------------------------------------------------


def test_builds_show_when_each_run_started_and_its_lookback_linked_to_the_run(client, db_path):
    page = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-10"}).text)
    assert page.tables["builds"][0][3] == "Started (UTC)"
    assert page.tables["builds"][1:] == [
        ["2024-01-01 \u2192 2024-01-05", RUN_A, "2024-01-01 \u2192 2024-01-05", "2024-01-05 10:00:01",
         "unlimited", "2024-01-05 10:00:40"],
        ["2024-01-06 \u2192 2024-01-10", RUN_B, "2024-01-08 \u2192 2024-01-08", "2024-01-09 00:00:03",
         "14 days", "2024-01-09 00:01:10"],
    ]
    hrefs = [href for href, a in page.links if "data-airflow-page" in a]
    assert "../dags/ihc_attribution/runs/manual__2024-01-05T10%3A00%3A00%2B00%3A00" in hrefs
    assert "../dags/ihc_attribution/runs/scheduled__2024-01-09T00%3A00%3A00%2B00%3A00" in hrefs


def test_a_backfill_run_shows_when_it_ran_not_its_logical_date(client, db_path):
    # A backfill over 2024-01-03, triggered on 2024-02-01: the build stage records the run's
    # run-after time (the end of its data interval), not when it was triggered.
    backfill = "backfill__2024-01-04T00:00:00+00:00"
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO attribution_runs VALUES (?, '2024-01-03 00:00:00', '2024-01-04 00:00:00', "
                     "'2024-02-01 09:30:02')", (backfill,))
        conn.execute("UPDATE attribution_report_builds SET run_id = ?, triggered_at = '2024-01-04 00:00:00', "
                     "built_at = '2024-02-01 09:30:40' WHERE report_date = '2024-01-03'", (backfill,))
        conn.execute("DELETE FROM attribution_runs WHERE run_id = ?", (RUN_B,))  # staging purged
    rows = Page(client.get("/", params={"start": "2024-01-03", "end": "2024-01-06"}).text).tables["builds"][1:]
    assert [r[:4] for r in rows] == [
        ["2024-01-03", backfill, "2024-01-03 00:00:00 \u2192 2024-01-04 00:00:00", "2024-02-01 09:30:02"],
        ["2024-01-04 \u2192 2024-01-05", RUN_A, "2024-01-01 \u2192 2024-01-05", "2024-01-05 10:00:01"],
        ["2024-01-06", RUN_B, "unknown", "unknown"],
    ]


def test_page_links_to_the_csv_of_its_selection_and_to_its_issues(client, db_path):
    page = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-07",
                                        "channel": ["Direct Traffic", "Paid Search"]}).text)
    (csv_href,) = [href for href, a in page.links if a.get("id") == "download-csv"]
    assert csv_href == "/report.csv?start=2024-01-01&end=2024-01-07&channel=Direct+Traffic&channel=Paid+Search"
    (issues,) = [a for href, a in page.links if href.startswith("/issues?")]
    assert issues["text"].startswith("2 conversion(s)")  # c-1 and c-2 of 2024-01-02


def test_issues_by_reason_and_date_linked_to_their_runs(client, db_path):
    text = client.get("/issues").text
    page = Page(text)
    with sqlite3.connect(db_path) as conn:
        expected = pd.read_sql_query(
            "SELECT i.reason, c.conv_date FROM attribution_issues i LEFT JOIN conversions c USING (conv_id)", conn)
    counts = expected.groupby(["conv_date", "reason"]).size()
    head, *rows = page.tables["issues-by-date"]
    reasons = head[1:]
    assert sorted(reasons) == sorted(expected.reason.unique())
    for r in rows:
        for reason, cell in zip(reasons, r[1:], strict=True):
            assert cell == str(counts.get((r[0], reason), "")), (r[0], reason)
    assert [r[0] for r in rows] == sorted(expected.conv_date.unique(), reverse=True)
    listed = page.tables["issues"][1:]
    assert [r[0] for r in listed] == ["c-4", "c-3", "c-2", "c-1"]  # newest first
    assert "&lt;script&gt;" in text and "<script>alert" not in text
    runs = {href for href, a in page.links if "data-airflow-page" in a}
    assert runs == {f"../dags/ihc_attribution/runs/{r}".replace(":", "%3A").replace("+", "%2B")
                    for r in (RUN_A, RUN_B)}
    only = Page(client.get("/issues", params={"reason": "no_sessions"}).text)
    assert [r[0] for r in only.tables["issues"][1:]] == ["c-3", "c-1"]


def test_database_missing_is_a_message(client, tmp_path, monkeypatch):
    missing = tmp_path / "none" / "x.db"
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(missing)}))
    for path in ("/", "/issues"):
        response = client.get(path)
        assert response.status_code == 200 and "does not exist" in response.text
    assert client.get("/report.csv").status_code == 503
    assert not missing.parent.exists()


def test_database_without_report_tables_is_a_message(client, tmp_path, monkeypatch):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(empty)}))
    assert "No report yet" in client.get("/").text
    assert "No issue table yet" in client.get("/issues").text


def test_database_is_opened_read_only(client, db_path, monkeypatch):
    opened = []
    real_connect = sqlite3.connect

    def spy(database, *args, **kwargs):
        opened.append((database, kwargs.get("uri")))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sources.sqlite3, "connect", spy)
    before = db_path.read_bytes()
    assert client.get("/").status_code == 200 and client.get("/issues").status_code == 200
    assert opened and all(database.endswith("?mode=ro") and uri for database, uri in opened)
    assert db_path.read_bytes() == before


# --- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_reads_the_same_figures_as_sqlite(db_path):
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    name = "report_view_" + uuid.uuid4().hex[:10]
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
        cur.execute(f"SET search_path TO {name}")
    try:
        db = Database(conn)
        db.executescript(schema.challenge_ddl())
        schema.ensure_schema(db)
        fill(db)
        pg = sources.ReportDb(conn, "postgres")
        lite = sources.ReportDb(sqlite3.connect(db_path), "sqlite")
        for start, end, channels in SELECTIONS:
            selection = sources.Selection(start, end, tuple(channels))
            assert sources.report_rows(pg, selection) == sources.report_rows(lite, selection)
            assert sources.report_builds(pg, selection) == sources.report_builds(lite, selection)
        assert sources.report_channels(pg) == sources.report_channels(lite)
        assert sources.report_bounds(pg) == sources.report_bounds(lite)
        a, b = sources.read_issues(pg), sources.read_issues(lite)
        assert (a.total, a.by_reason, a.by_date, a.latest) == (b.total, b.by_reason, b.by_date, b.latest)
        assert sources.read_issues(pg, reason="no_sessions").total == 2
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()


def test_the_pages_postgres_connection_refuses_writes(monkeypatch):
    """The pages read through a session that PostgreSQL itself keeps read-only, with dates in ISO."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps(
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test",
         "extra": {"options": "-cDateStyle=German"}}))  # as a database's own setting would have it
    db = sources.open_db()
    try:
        assert db.query("SELECT 1") == [(1,)]
        assert db.query("SELECT CAST(DATE '2024-01-02' AS TEXT)") == [("2024-01-02",)]
        with pytest.raises(Exception, match="read-only transaction"):
            db.query("CREATE TABLE attribution_written_through_the_page (x INT)")
    finally:
        db.close()


def test_the_issues_page_names_the_days_whose_sources_changed_after_attribution(client, db_path):
    assert "changed-days-table" not in Page(client.get("/issues").text).tables
    with sqlite3.connect(db_path) as conn:
        conn.executemany("INSERT INTO attribution_drift (conv_id, conv_date, run_id, detail) VALUES (?, ?, ?, ?)", [
            ("c-10", "2024-01-03", RUN_B, "attributed over 2 sessions; the sources now hold 3 before the conversion"),
            ("c-11", "2024-01-03", RUN_B, "attributed over 5 sessions; the sources now hold 4 before the conversion"),
            ("c-12", "2024-01-05", RUN_B, "attributed over 1 sessions; the sources now hold 2 before the conversion"),
        ])
    page = Page(client.get("/issues").text)
    assert page.tables["changed-days-table"][1:] == [["2024-01-03", "2"], ["2024-01-05", "1"]]
