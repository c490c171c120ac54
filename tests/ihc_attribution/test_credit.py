"""The rule-based credits beside IHC, recomputed independently from the stored attribution and the sources."""

from __future__ import annotations

import sqlite3
from decimal import ROUND_HALF_UP, Decimal

import pytest

from ihc_attribution import credit
from ihc_attribution.db import Database
from tests.helpers import random_db, read_table, run_pipeline


def _expected_rules(n: int) -> dict[str, list[int]]:
    """Each model's credit of a journey of ``n`` sessions, earliest first, in 1/10,000 (written out by hand)."""
    def split(total, parts):
        base, extra = divmod(total, parts)
        return [base + (1 if i < extra else 0) for i in range(parts)]

    if n == 1:
        position = [10_000]
    elif n == 2:
        position = [5_000, 5_000]
    else:
        position = [4_000, *split(2_000, n - 2), 4_000]
    return {
        "first_touch": [10_000] + [0] * (n - 1),
        "last_touch": [0] * (n - 1) + [10_000],
        "linear": split(10_000, n),
        "position": position,
    }


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = random_db(tmp_path_factory.mktemp("credit") / "db.sqlite", seed=7, users=80)
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10")
    return path


def test_rule_based_credits_match_an_independent_recomputation(db_path):
    got = read_table(db_path, "attribution_credit")
    sessions = read_table(db_path, "session_sources")
    sessions["ts"] = sessions["event_date"] + " " + sessions["event_time"]
    journeys = read_table(db_path, "attribution_customer_journey").merge(sessions[["session_id", "ts"]], on="session_id")
    assert len(got) == len(journeys) > 50
    checked = 0
    for conv_id, journey in journeys.groupby("conv_id"):
        ordered = journey.sort_values(["ts", "session_id"])["session_id"].tolist()
        stored = got[got.conv_id == conv_id].set_index("session_id").loc[ordered]
        for model, shares in _expected_rules(len(ordered)).items():
            assert stored[f"{model}_e4"].tolist() == shares, (conv_id, model)
        checked += len(ordered) > 2
    assert checked > 5, "journeys long enough for position-based credit to share the middle"


def test_model_totals_sum_each_model_over_the_selection_and_match_the_report(db_path):
    got = read_table(db_path, "attribution_credit")
    conversions = read_table(db_path, "conversions").set_index("conv_id")["revenue"]
    db = Database.connect_sqlite(str(db_path))
    try:
        totals = {t.channel_name: t for t in credit.model_totals(db, "2023-12-01", "2024-01-31")}
    finally:
        db.close()
    for channel, rows in got.groupby("channel_name"):
        for model, _ in credit.MODELS:
            assert totals[channel].orders[model] == Decimal(int(rows[f"{model}_e4"].sum())) / 10_000
    # every model hands out the same orders in all: one per attributed conversion
    for model, _ in credit.MODELS:
        assert sum(t.orders[model] for t in totals.values()) == got.conv_id.nunique()
    # IHC revenue per channel is the report's, to the cent
    with sqlite3.connect(db_path) as conn:
        report = dict(conn.execute("SELECT channel_name, SUM(ihc_revenue) FROM channel_reporting GROUP BY 1").fetchall())
    for channel, t in totals.items():
        assert t.revenue["ihc"] == Decimal(repr(report[channel])).quantize(Decimal("0.01"))
    # last touch: the revenue of the conversions whose last session is of the channel, per cell to the cent
    last = got[got.last_touch_e4 == 10_000].assign(revenue=lambda f: f.conv_id.map(conversions).map(lambda v: Decimal(repr(v))))
    cells = last.groupby(["channel_name", "date"])["revenue"].agg(lambda v: sum(v, Decimal(0)))
    expected = cells.map(lambda v: v.quantize(Decimal("0.01"), ROUND_HALF_UP)).groupby(level=0).sum()
    for channel, value in expected.items():
        assert totals[channel].revenue["last_touch"] == value


def test_the_csv_can_carry_each_models_orders_and_revenue_summing_to_its_totals(db_path, tmp_path):
    import csv

    from ihc_attribution import export
    from ihc_attribution.daterange import range_from_params

    rng = range_from_params({"start_date": "2023-12-01", "end_date": "2024-01-31"})
    db = Database.connect_sqlite(str(db_path))
    try:
        rows = export.read_report(db, rng)
        extra = credit.model_columns(db, "2023-12-01", "2024-01-31")
        totals = {t.channel_name: t for t in credit.model_totals(db, "2023-12-01", "2024-01-31")}
    finally:
        db.close()
    plain = export.write_csv(rows, tmp_path / "plain.csv")
    wide = export.write_csv(rows, tmp_path / "wide.csv", extra=extra)
    assert plain.read_text().splitlines()[0] == ",".join(export.CSV_COLUMNS), "the default keeps the challenge's columns"
    with open(wide, newline="") as handle:
        got = list(csv.DictReader(handle))
    assert list(got[0])[len(export.CSV_COLUMNS):] == [
        "last_touch_orders", "last_touch_revenue", "first_touch_orders", "first_touch_revenue",
        "linear_orders", "linear_revenue", "position_orders", "position_revenue",
    ]
    for channel, t in totals.items():
        mine = [r for r in got if r["channel_name"] == channel]
        for model in ("last_touch", "first_touch", "linear", "position"):
            assert sum(Decimal(r[f"{model}_revenue"]) for r in mine) == t.revenue[model], (channel, model)
            assert sum(Decimal(r[f"{model}_orders"]) for r in mine) == t.orders[model], (channel, model)


@pytest.mark.parametrize(("ihc", "last", "shift"), [
    ("100.25", "100.00", Decimal("0.3")),  # half up, as the comparison's percentages: not 0.2
    ("99.75", "100.00", Decimal("-0.3")),
    ("100.35", "100.00", Decimal("0.4")),
    ("250.00", "100.00", Decimal("150.0")),
    ("12.00", "0.00", None),  # last touch credits the channel nothing: no percentage of it
])
def test_the_shift_against_last_touch_is_a_percentage_rounded_half_up(ihc, last, shift):
    zero = {name: Decimal(0) for name, _ in credit.MODELS}
    totals = credit.ModelTotals("Email", zero, dict(zero, ihc=Decimal(ihc), last_touch=Decimal(last)))
    assert totals.shift() == shift
