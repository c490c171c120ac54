"""``attribution_credit``: each attributed session's credit under IHC and under the rules analysts know.

For every (conversion, session) the API credited: the session's date and channel, the IHC credit,
and the credit of four rule-based models computed locally over the same sessions (no request):
first touch, last touch, linear and position-based (40 % first, 40 % last, 20 % shared by the
sessions between; a journey of two splits 50/50, one of one gets everything). Credit is in
1/10,000 of an order and money in micro-euros, as exact integers: every model's credit sums to
exactly 10,000 per conversion (a remainder goes to the earliest sessions), and sums over any
rows are the same in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ihc_attribution.db import BYTE_ORDER, Database, round_div_sql

CREDIT = "attribution_credit"
#: The models, as (column prefix, label): the credit column is ``<prefix>_e4``.
MODELS = (
    ("ihc", "IHC"),
    ("last_touch", "Last touch"),
    ("first_touch", "First touch"),
    ("linear", "Linear"),
    ("position", "Position-based (40/20/40)"),
)
_ONE = 10_000

# pos: the session's place in its journey (1 = earliest; ties by session id, so the last is the
# session the conversion flag marks), n: the journey's sessions.
def _share(total: int, among: str, place: str) -> str:
    """``total`` split in whole parts among ``among`` sessions, the remainder one each to the first places.

    (The remainder is written without ``%``, which a driver's ``%s`` placeholders would misread.)
    """
    return f"{total} / ({among}) + CASE WHEN {place} <= {total} - ({total} / ({among})) * ({among}) THEN 1 ELSE 0 END"


_RULES = {
    "first_touch": f"CASE WHEN pos = 1 THEN {_ONE} ELSE 0 END",
    "last_touch": f"CASE WHEN pos = n THEN {_ONE} ELSE 0 END",
    "linear": _share(_ONE, "n", "pos"),
    "position": (
        f"CASE WHEN n = 1 THEN {_ONE} WHEN n = 2 THEN {_ONE // 2} WHEN pos = 1 OR pos = n THEN {_ONE * 2 // 5} "
        f"ELSE {_share(_ONE // 5, 'n - 2', 'pos - 1')} END"
    ),
}


def insert_sql(db: Database, journeys_sql: str) -> str:
    """The statement that adds the credit rows of ``journeys_sql``'s sessions.

    ``journeys_sql`` selects, per credited session: ``conv_id, conv_date, conv_ts, user_id, session_id, ts``
    (timestamps as ``YYYY-MM-DD HH:MM:SS``), ``channel_name, ihc, revenue`` (the conversion's).
    """
    ihc = db.units("j.ihc", 4)
    rules = ", ".join(f"{sql} AS {name}_e4" for name, sql in _RULES.items())
    revenue = db.round_div("ihc_e4 * revenue_micros", _ONE)
    return f"""
INSERT INTO {CREDIT} (conv_id, conv_date, conv_ts, user_id, session_id, session_ts, date, channel_name, revenue_micros,
                      ihc_e4, ihc_revenue_micros, first_touch_e4, last_touch_e4, linear_e4, position_e4)
SELECT conv_id, conv_date, conv_ts, user_id, session_id, session_ts, date, channel_name, revenue_micros, ihc_e4,
       {revenue}, first_touch_e4, last_touch_e4, linear_e4, position_e4
FROM (
    SELECT conv_id, conv_date, conv_ts, user_id, session_id, session_ts, date, channel_name, revenue_micros, ihc_e4,
           {rules}
    FROM (
        SELECT j.conv_id, j.conv_date, j.conv_ts, j.user_id, j.session_id, j.ts AS session_ts, substr(j.ts, 1, 10) AS date,
               j.channel_name,
               {db.units("j.revenue", 6)} AS revenue_micros, {ihc} AS ihc_e4,
               ROW_NUMBER() OVER (PARTITION BY j.conv_id ORDER BY j.ts, j.session_id{BYTE_ORDER[db.dialect]}) AS pos,
               COUNT(*) OVER (PARTITION BY j.conv_id) AS n
        FROM ({journeys_sql}) AS j
    ) AS placed
) AS credited
"""


@dataclass(frozen=True)
class ModelTotals:
    """One channel's attributed orders and revenue under each model (keys of :data:`MODELS`)."""

    channel_name: str
    orders: dict[str, Decimal]
    revenue: dict[str, Decimal]

    def shift(self, model: str = "ihc", against: str = "last_touch") -> Decimal | None:
        """How much more (or less) revenue ``model`` credits than ``against``, in percent of it, one
        decimal half up (as every percentage of the report); None when ``against`` credits none."""
        base = self.revenue[against]
        if base == 0:
            return None
        return ((self.revenue[model] - base) * 100 / abs(base)).quantize(Decimal("0.1"), ROUND_HALF_UP)


def _cells(db: Any, first_date: str, last_date: str, channels: list[str] | None = None) -> list[tuple]:
    """Per (channel, date) of ``[first_date, last_date]``: each model's credit (1/10,000 orders) and revenue in
    cents, in the order of :data:`MODELS`. Revenue is rounded to the cent per cell, as ``channel_reporting``
    holds it, so that sums over cells match the report."""
    sums = []
    for name, _ in MODELS:
        micros = round_div_sql(f"{name}_e4 * revenue_micros", _ONE, sqlite=db.is_sqlite)
        sums += [f"SUM({name}_e4)", round_div_sql(f"SUM({micros})", 10_000, sqlite=db.is_sqlite)]
    where, params = "date >= ? AND date <= ?", [first_date, last_date]
    if channels is not None:
        where += f" AND channel_name IN ({', '.join('?' * len(channels))})" if channels else " AND 1 = 0"
        params += channels
    return db.query(
        f"SELECT channel_name, date, {', '.join(sums)} FROM {CREDIT} WHERE {where} GROUP BY channel_name, date", params
    )


def model_columns(db: Any, first_date: str, last_date: str) -> tuple[tuple[str, ...], dict[tuple[str, str], tuple], tuple]:
    """The CSV's opt-in columns: per (channel, date), orders and revenue under each rule-based model."""
    names = tuple(f"{name}_{column}" for name, _ in MODELS[1:] for column in ("orders", "revenue"))

    def shown(sums: list) -> tuple:
        return tuple(
            (Decimal(int(v or 0)) / _ONE).quantize(Decimal("0.0001")) if i % 2 == 0
            else (Decimal(int(v or 0)) / 100).quantize(Decimal("0.01"))
            for i, v in enumerate(sums)
        )

    # MODELS[0] is IHC, already in the report's columns.
    values = {(str(channel), str(date)): shown(sums[2:]) for channel, date, *sums in _cells(db, first_date, last_date)}
    return names, values, shown([0] * len(names))


def model_totals(db: Any, first_date: str, last_date: str, channels: list[str] | None = None) -> list[ModelTotals]:
    """Per channel, over the sessions of ``[first_date, last_date]``: orders and revenue under every model.

    ``db`` has ``query(sql, params)`` and ``is_sqlite``. Revenue is summed from the cells' cents, so the
    IHC column equals the report's totals and each model's the sums of its CSV column.
    """
    sums: dict[str, list[int]] = {}
    for channel, _, *cell in _cells(db, first_date, last_date, channels):
        total = sums.setdefault(str(channel), [0] * len(cell))
        for i, value in enumerate(cell):
            total[i] += int(value or 0)
    out = [
        ModelTotals(channel, {name: Decimal(total[2 * i]) / _ONE for i, (name, _) in enumerate(MODELS)},
                    {name: Decimal(total[2 * i + 1]) / 100 for i, (name, _) in enumerate(MODELS)})
        for channel, total in sums.items()
    ]
    return sorted(out, key=lambda t: (-t.revenue["ihc"], t.channel_name))
