"""Rounding of answers to 4 decimals, keeping every column's sum exactly 1."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ihc_attribution_dev.server.journey import SessionCredit

#: Answers are rounded to 4 decimals, i.e. to integers of this many units per journey.
ROUND_UNITS = 10_000


def largest_remainder(values: Sequence[float], units: int = ROUND_UNITS) -> list[int]:
    """Integers proportional to ``values`` that sum to exactly ``units`` (all 0 if the values sum to 0).

    Each value is floored, and the units still missing go to the largest remainders; ties go to
    the earlier position, so the result is deterministic.
    """
    total = math.fsum(values)
    if total <= 0:
        return [0] * len(values)
    scaled = [v / total * units for v in values]
    result = [math.floor(x) for x in scaled]
    missing = units - sum(result)
    if missing == 0:
        return result
    order = sorted(range(len(values)), key=lambda i: (result[i] - scaled[i], i))
    for i in order[:missing]:
        result[i] += 1
    return result


def round_credits(credits: Sequence[SessionCredit]) -> list[SessionCredit]:
    """Round every column to 4 decimals so that each sums to exactly 1 (a dropped holder stays 0)."""
    if len(credits) == 1:
        # A single session's column is 1 or 0 already (what largest_remainder gives it).
        c = credits[0]
        return [SessionCredit(c.session_id, *(1.0 if v > 0 else 0.0 for v in (c.initializer, c.holder, c.closer, c.ihc)))]
    columns = {
        name: largest_remainder([getattr(c, name) for c in credits])
        for name in ("initializer", "holder", "closer", "ihc")
    }
    return [
        SessionCredit(
            c.session_id,
            columns["initializer"][i] / ROUND_UNITS,
            columns["holder"][i] / ROUND_UNITS,
            columns["closer"][i] / ROUND_UNITS,
            columns["ihc"][i] / ROUND_UNITS,
        )
        for i, c in enumerate(credits)
    ]
