"""The report page over the database: every figure it shows equals a recomputation from the tables.

The recomputation is independent of the package: pandas over the tables as stored, ratios and
rounding written out here again. The page is read the way an analyst reads it: headline cards,
the totals table, the numbers the charts draw (the page's JSON block) and the CSV download.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
import uuid
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from ihc_attribution.report_ui import app as report_app
from ihc_attribution.report_ui import sources as sources
from ihc_attribution import schema
from ihc_attribution.db import Database

CHANNELS = ["Direct Traffic", "Paid Search", "=HYPERLINK(\"x\")", "<b>Display</b> & Co", "Organic", "Email"]
RUN_A = "manual__2024-01-05T10:00:00+00:00"
RUN_B = "scheduled__2024-01-09T00:00:00+00:00"


# --- the database ------------------------------------------------------------------------------


def fill(db: Database, seed: int = 11) -> None:
    """Report rows over 2023-12-20 .. 2024-01-10 with zero spend, zero credit and missing days."""
    rng = random.Random(seed)
    rows = []
    for day in pd.date_range("2023-12-20", "2024-01-10").strftime("%Y-%m-%d"):
        for name in CHANNELS:
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
        db.executemany("INSERT INTO attribution_issues VALUES (?, ?, ?, ?, ?)", [
            ("c-1", "no_sessions", "no session before the conversion", RUN_A, "2024-01-05 10:00:20"),
            ("c-2", "invalid_input", "session s-9: event_date '2024-01-00' is not a date", RUN_A,
             "2024-01-05 10:00:21"),
            ("c-3", "no_sessions", "<script>alert(1)</script>", RUN_B, "2024-01-09 00:00:30"),
            ("c-4", "api_rejected", "journey failed: invalid timestamp", RUN_B, "2024-01-09 00:00:31"),
        ])


@pytest.fixture
def db_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "report.db"
    db = Database.connect_sqlite(str(path))
    db.executescript(schema.challenge_ddl())
    schema.ensure_schema(db)
    fill(db)
    db.close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    monkeypatch.delenv("ATTRIBUTION_CURRENCY", raising=False)
    return path


@pytest.fixture
def client() -> TestClient:
    return TestClient(report_app.create_app(require_auth=False))


# --- reading the page --------------------------------------------------------------------------


class Page(HTMLParser):
    """Headline cards, table rows by table id, links, and the JSON of the charts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[tuple[str, dict]] = []
        self.data: dict | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._card: str | None = None
        self._in_v = False
        self._json: list[str] | None = None
        self._link: dict | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "div" and "data-figure" in a:
            self._card = a["data-figure"]
        elif tag == "div" and a.get("class") == "v" and self._card:
            self._in_v = True
            self.cards[self._card] = ""
        elif tag == "script" and a.get("type") == "application/json":
            self._json = []
        elif tag == "a":
            self._link = dict(a, text="")
            self.links.append((a.get("href", ""), self._link))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "div" and self._in_v:
            self._in_v, self._card = False, None
        elif tag == "script" and self._json is not None:
            self.data = json.loads("".join(self._json))
            self._json = None
        elif tag == "a":
            self._link = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_v:
            self.cards[self._card] += data
        if self._json is not None:
            self._json.append(data)
        if self._link is not None:
            self._link["text"] += data


# --- the independent recomputation -------------------------------------------------------------


def q(value: float, places: str) -> Decimal:
    return Decimal(repr(float(value))).quantize(Decimal(places), ROUND_HALF_UP)


def eur(value: float | None) -> str:
    if value is None:
        return "n/a"
    v = q(value, "0.01")
    return f"{'-' if v < 0 else ''}\u20ac{abs(v):,}"


def num(value: float | None) -> str:
    return "n/a" if value is None else f"{q(value, '0.01'):,}"


def cpo(cost: float, ihc: float) -> float | None:
    return None if ihc == 0 else cost / ihc


def roas(cost: float, revenue: float) -> float | None:
    return None if cost == 0 else revenue / cost


def table(path: Path, start: str, end: str, channels: list[str]) -> pd.DataFrame:
    with sqlite3.connect(path) as conn:
        frame = pd.read_sql_query("SELECT * FROM channel_reporting", conn)
    frame = frame[(frame.date >= start) & (frame.date <= end)]
    return frame[frame.channel_name.isin(channels)] if channels else frame


def expected_figures(frame: pd.DataFrame) -> dict:
    total = frame[["cost", "ihc", "ihc_revenue"]].sum()
    per = frame.groupby("channel_name")[["cost", "ihc", "ihc_revenue"]].sum()
    per["days"] = frame.groupby("channel_name").date.nunique()
    return {"total": total, "per": per}


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
    exp = expected_figures(frame)
    total, per = exp["total"], exp["per"]

    # headline cards
    assert page.cards == {
        "spend": eur(total.cost), "ihc_revenue": eur(total.ihc_revenue), "ihc": num(total.ihc),
        "roas": num(roas(total.cost, total.ihc_revenue)), "cpo": eur(cpo(total.cost, total.ihc)),
    }

    # totals table: one row per channel, by attributed revenue, and the selection's row
    rows = page.tables["channel-totals"]
    assert rows[0][0] == "Channel"
    body, foot = rows[1:-1], rows[-1]
    order = per.sort_values(["ihc_revenue", "cost"], ascending=False).index.tolist()
    assert [r[0] for r in body] == order
    for r in body:
        e = per.loc[r[0]]
        assert r[1:] == [eur(e.cost), num(e.ihc), eur(e.ihc_revenue), eur(cpo(e.cost, e.ihc)),
                         num(roas(e.cost, e.ihc_revenue)), str(int(e.days))], r[0]
    assert foot[:6] == ["All channels", eur(total.cost), num(total.ihc), eur(total.ihc_revenue),
                        eur(cpo(total.cost, total.ihc)), num(roas(total.cost, total.ihc_revenue))]

    # what the charts draw
    data = page.data
    dates = sorted(frame.date.unique())
    assert data["dates"] == dates and data["currency"] == "EUR"
    for c in data["channels"]:
        e = per.loc[c["name"]]
        assert c["cost"] == float(q(e.cost, "0.01")) and c["ihc_revenue"] == float(q(e.ihc_revenue, "0.01"))
        assert c["roas"] == (None if e.cost == 0 else float(q(e.ihc_revenue / e.cost, "0.0001")))
        assert c["cpo"] == (None if e.ihc == 0 else float(q(e.cost / e.ihc, "0.01")))
    cells = frame.set_index(["channel_name", "date"])
    for series in data["daily"]:
        for i, day in enumerate(dates):
            if (series["name"], day) not in cells.index:
                assert (series["cost"][i], series["ihc_revenue"][i], series["roas"][i], series["cpo"][i]) == (
                    0.0, 0.0, None, None)
                continue
            e = cells.loc[(series["name"], day)]
            assert series["cost"][i] == float(q(e.cost, "0.01"))
            assert series["ihc_revenue"][i] == float(q(e.ihc_revenue, "0.01"))
            assert series["roas"][i] == (None if e.cost == 0 else float(q(e.ihc_revenue / e.cost, "0.0001")))
            assert series["cpo"][i] == (None if e.ihc == 0 else float(q(e.cost / e.ihc, "0.01")))
    per_day = frame.groupby("date")[["cost", "ihc", "ihc_revenue"]].sum()
    assert data["total"]["cost"] == [float(q(v, "0.01")) for v in per_day.cost]
    assert data["total"]["roas"] == [None if c == 0 else float(q(r / c, "0.0001"))
                                     for c, r in zip(per_day.cost, per_day.ihc_revenue, strict=True)]
    assert data["total"]["cpo"] == [None if i == 0 else float(q(c / i, "0.01"))
                                    for c, i in zip(per_day.cost, per_day.ihc, strict=True)]
    for bad in ("Infinity", "NaN"):
        assert bad not in response.text


@pytest.mark.parametrize(("start", "end", "channels"), SELECTIONS)
def test_csv_of_the_selection_equals_the_table(client, db_path, start, end, channels):
    response = client.get("/report.csv", params={"start": start, "end": end, "channel": channels})
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    got = list(csv.DictReader(io.StringIO(response.text)))
    frame = table(db_path, start, end, channels).sort_values(["date", "channel_name"])
    assert len(got) == len(frame)
    for row, e in zip(got, frame.itertuples(), strict=True):
        name = e.channel_name
        assert row["channel_name"] == name, "names exactly as stored (formula escaping is opt-in)"
        assert row["date"] == e.date
        assert Decimal(row["cost"]) == q(e.cost, "0.01")
        assert Decimal(row["ihc"]) == q(e.ihc, "0.0001")
        assert Decimal(row["ihc_revenue"]) == q(e.ihc_revenue, "0.01")
        assert row["CPO"] == ("" if e.ihc == 0 else str(q(e.cost / e.ihc, "0.01")))
        assert row["ROAS"] == ("" if e.cost == 0 else str(q(e.ihc_revenue / e.cost, "0.0001")))


def test_changing_the_selection_changes_the_figures(client, db_path):
    two = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-07",
                                       "channel": ["Direct Traffic", "Paid Search"]}).text)
    everything = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-07"}).text)
    assert two.cards["spend"] != everything.cards["spend"]
    assert {s["name"] for s in two.data["daily"]} == {"Direct Traffic", "Paid Search"}
    assert len(everything.data["daily"]) == len(CHANNELS)


def test_currency_comes_from_the_environment(client, db_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "usd")
    page = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-07"}).text)
    assert page.cards["spend"].startswith("$") and page.data["currency"] == "USD"
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "CHF")
    assert Page(client.get("/").text).cards["spend"].startswith("CHF\u00a0")


def test_default_is_the_last_30_days_of_the_report(client, db_path):
    page = client.get("/").text
    assert 'name="start" value="2023-12-20"' in page and 'name="end" value="2024-01-10"' in page
    assert "2023-12-20 to 2024-01-10" in page  # fewer than 30 days of rows here


def test_bad_selection_is_explained_not_an_error(client, db_path):
    response = client.get("/", params={"start": "2024-13-01", "end": "2024-01-03", "channel": ["Nope"]})
    assert response.status_code == 200
    assert "is not a date" in response.text and "no report rows for channel(s) &#39;Nope&#39;" in response.text
    swapped = client.get("/", params={"start": "2024-01-05", "end": "2024-01-02"}).text
    assert "were swapped" in swapped and 'name="start" value="2024-01-02"' in swapped


def test_channel_names_are_text_everywhere(client, db_path):
    text = client.get("/", params={"start": "2024-01-01", "end": "2024-01-10"}).text
    assert "<b>Display</b>" not in text and "&lt;b&gt;Display&lt;/b&gt; &amp; Co" in text
    # In the JSON block too: nothing in it can close the script element.
    block = text[text.index('id="report-data">'):]
    assert "</b>" not in block[: block.index("</script>")]


def test_builds_show_run_trigger_time_and_lookback_linked_to_the_run(client, db_path):
    page = Page(client.get("/", params={"start": "2024-01-01", "end": "2024-01-10"}).text)
    rows = page.tables["builds"][1:]
    assert rows == [
        ["2024-01-01 \u2192 2024-01-05", RUN_A, "2024-01-01 \u2192 2024-01-05", "2024-01-05 10:00:00",
         "unlimited", "2024-01-05 10:00:40"],
        ["2024-01-06 \u2192 2024-01-10", RUN_B, "2024-01-08 \u2192 2024-01-08", "2024-01-09 00:00:00",
         "14 days", "2024-01-09 00:01:10"],
    ]
    hrefs = [href for href, a in page.links if "data-airflow-page" in a]
    assert "../dags/ihc_attribution/runs/manual__2024-01-05T10%3A00%3A00%2B00%3A00" in hrefs
    assert "../dags/ihc_attribution/runs/scheduled__2024-01-09T00%3A00%3A00%2B00%3A00" in hrefs


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
