"""The IHC model and the rounding, as pure functions (no HTTP)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ihc_attribution_dev.server.contract import parse_redistribution, parse_timestamp
from ihc_attribution_dev.server.model import (
    FITTED_PARAMS,
    Curve,
    PhaseWeights,
    RedistributionRule,
    SessionCredit,
    Touchpoint,
    attribute_journey,
    attribute_journeys,
    chronological,
    largest_remainder,
    round_credits,
)

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
W = PhaseWeights()


def tp(sid, hours: float = 0.0, channel: str = "Direct Traffic", he: int = 1, ce: int = 1, conv: int = 0) -> Touchpoint:
    """A touchpoint ``hours`` after T0."""
    return Touchpoint(sid, T0 + timedelta(hours=hours), channel, he, ce, conv)


def by_id(credits):
    return {c.session_id: c for c in credits}


@pytest.mark.parametrize("he,ce,conv", [(0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 1)])
def test_single_session_journey_is_always_1_0_1_1(he, ce, conv):
    (credit,) = round_credits(attribute_journey([tp("only", he=he, ce=ce, conv=conv)]))
    assert (credit.initializer, credit.holder, credit.closer, credit.ihc) == (1.0, 0.0, 1.0, 1.0)


def test_holder_phase_is_dropped_when_no_session_qualifies():
    # 10 minutes apart, no holder engagement: I = (1, 0), C = (0, 1) (first has no closer engagement).
    credits = attribute_journey([tp("a", 0, he=0, ce=0), tp("b", 1 / 6, he=0, ce=0, conv=1)])
    a, b = credits
    assert (a.holder, b.holder) == (0.0, 0.0)
    total = W.initializer + W.closer  # holder weight dropped, the other two renormalised
    assert a.ihc == pytest.approx(W.initializer / total)
    assert b.ihc == pytest.approx(W.closer / total)
    assert a.ihc == pytest.approx(0.5565, abs=1e-4)


def test_holder_phase_kept_when_one_session_qualifies():
    a, b = attribute_journey([tp("a", 0, he=0, ce=0), tp("b", 1 / 6, he=1, ce=0, conv=1)])
    assert (a.holder, b.holder) == (0.0, 1.0)
    assert a.ihc == pytest.approx(W.initializer)  # weights sum to 1
    assert b.ihc == pytest.approx(W.holder + W.closer)


# Real answers of the production service for two sessions of one channel, both with closer and
# holder engagement (from the reference file): hours between them -> share of the first session.
@pytest.mark.parametrize(
    "hours,first_closer", [(0.0, 0.5), (2.18, 0.374), (41.24, 0.2623), (72.86, 0.2086), (127.30, 0.1296)]
)
def test_closer_weight_falls_with_distance_to_the_conversion(hours, first_closer):
    a, b = attribute_journey([tp("a", 0), tp("b", hours, conv=1)])
    assert a.closer == pytest.approx(first_closer, abs=0.006)
    assert a.closer + b.closer == pytest.approx(1.0)


def test_closer_curve_shape():
    g = FITTED_PARAMS.closer_distance
    assert g(0) == 1.0
    assert 0.5 <= g(2) <= 0.7  # about half at 2 h
    assert g(2) > g(24) > g(48) > g(120) > g(240) > 0
    assert g(1000) == g(240)  # constant beyond the data, never 0: the closer phase is never empty


def test_closer_is_measured_from_the_flagged_converting_session():
    # The conversion flag sits on the middle session: it is "0 h" away, the last one 48 h away.
    rows = [tp("a", 0, ce=0), tp("b", 1, ce=1, conv=1), tp("c", 49, ce=0)]
    c = by_id(attribute_journey(rows))
    assert c["a"].closer == 0.0  # no closer engagement, not last
    g = FITTED_PARAMS.closer_distance
    assert c["b"].closer / c["c"].closer == pytest.approx(g(0) / g(48))


# Real answers, two sessions of one channel: pause in hours -> initializer share of the second.
@pytest.mark.parametrize(
    "pause,second_initializer",
    [(0.5, 0.0), (24.0, 0.0), (49.5, 0.0), (72.86, 0.0332), (96.32, 0.0904), (118.23, 0.1413), (213.47, 0.3443)],
)
def test_initializer_credit_grows_with_the_pause(pause, second_initializer):
    a, b = attribute_journey([tp("a", 0), tp("b", pause, conv=1)])
    assert b.initializer == pytest.approx(second_initializer, abs=0.002)
    assert a.initializer == pytest.approx(1 - b.initializer)


def test_initializer_full_credit_after_a_very_long_pause():
    # Beyond 14 days the restart is worth as much as the first session.
    _, b = attribute_journey([tp("a", 0), tp("b", 24 * 20, conv=1)])
    assert b.initializer == pytest.approx(0.5)


def test_initializer_uses_the_pause_since_the_previous_session():
    # c comes 100 h after a, but only 1 h after b: no restart credit.
    c = by_id(attribute_journey([tp("a", 0), tp("b", 99), tp("c", 100, conv=1)]))
    assert c["c"].initializer == 0.0
    assert c["b"].initializer > 0.05


@pytest.mark.parametrize(
    "flags,expected",
    [
        # (holder_engagement, closer_engagement) per session, 5 minutes apart -> real holder shares.
        ([(1, 0), (1, 0), (1, 1)], [0.1666, 0.6668, 0.1666]),  # initializer and closer take 1/4 of a middle
        ([(1, 0), (1, 1)], [0.5, 0.5]),
        ([(1, 1), (1, 1)], [0.15, 0.85]),  # the first is initializer and half closer
        ([(0, 0), (1, 0), (1, 1)], [0.0, 0.8, 0.2]),
    ],
)
def test_holder_goes_to_engaged_sessions_between_initializer_and_closer(flags, expected):
    rows = [tp(f"s{i}", i / 12, "Performance Max", he, ce) for i, (he, ce) in enumerate(flags)]
    credits = attribute_journey(rows)
    assert [c.holder for c in credits] == pytest.approx(expected, abs=0.01)


def test_channel_factors_scale_a_phase():
    # Direct Traffic has a closer factor above 1: with equal times it wins the closer phase.
    a, b = attribute_journey([tp("a", 0, "Direct Traffic"), tp("b", 0.001, "Newsletter & Email", conv=1)])
    assert a.closer > b.closer
    assert a.closer == pytest.approx(0.5185, abs=0.002)  # real answer for this pair


def test_unknown_channel_gets_neutral_factors():
    assert FITTED_PARAMS.factors("Carrier Pigeon") == FITTED_PARAMS.factors("also unknown")
    assert FITTED_PARAMS.factors("Carrier Pigeon").closer == 1.0


def _random_journey(rng: random.Random, n: int) -> list[Touchpoint]:
    channels = ["Direct Traffic", "Referral", "Performance Max", "Something New"]
    hours = sorted(rng.uniform(0, 300) for _ in range(n))
    rows = [tp(f"s{i}", h, rng.choice(channels), rng.randint(0, 1), rng.randint(0, 1)) for i, h in enumerate(hours)]
    rows[-1] = Touchpoint(rows[-1].session_id, rows[-1].timestamp, rows[-1].channel_label, 1, 1, 1)
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_deterministic_and_independent_of_row_order(seed):
    rng = random.Random(seed)
    rows = _random_journey(rng, rng.randint(2, 15))
    first = round_credits(attribute_journey(rows))
    assert round_credits(attribute_journey(rows)) == first
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assert by_id(round_credits(attribute_journey(shuffled))) == by_id(first)


def test_equal_timestamps_are_ordered_by_session_id():
    rows = [tp("b", 0), tp("a", 0), tp("c", 1, conv=1)]
    c = by_id(attribute_journey(rows))
    assert (c["a"].initializer, c["b"].initializer) == (1.0, 0.0)
    assert [t.session_id for t in chronological([tp(10), tp(9), tp("x"), tp(2)])] == [2, 9, 10, "x"]


@pytest.mark.parametrize("seed", range(6))
def test_every_column_sums_to_one(seed):
    rng = random.Random(100 + seed)
    credits = attribute_journey(_random_journey(rng, rng.randint(2, 30)))
    for column in ("initializer", "closer", "ihc"):
        assert sum(getattr(c, column) for c in credits) == pytest.approx(1.0)
    assert sum(c.holder for c in credits) == pytest.approx(1.0) or all(c.holder == 0 for c in credits)


@pytest.mark.parametrize(
    "values,expected",
    [
        ([1 / 3, 1 / 3, 1 / 3], [3334, 3333, 3333]),  # ties: the earlier position gets the unit
        ([2 / 3, 1 / 3], [6667, 3333]),
        ([0.5, 0.5], [5000, 5000]),
        ([0.00004, 0.99996], [0, 10000]),
        ([0.12345, 0.12345, 0.7531], [1235, 1234, 7531]),
        ([0.0, 0.0], [0, 0]),
        ([1.0], [10000]),
    ],
)
def test_largest_remainder(values, expected):
    assert largest_remainder(values) == expected


@pytest.mark.parametrize("n", [3, 7, 11, 13, 29, 97])
def test_rounding_keeps_exact_sums(n):
    rng = random.Random(n)
    raw = [rng.random() for _ in range(n)]
    shares = [x / sum(raw) for x in raw]
    units = largest_remainder(shares)
    assert sum(units) == 10_000
    # Never more than one unit away from the exact value.
    assert all(abs(u - s * 10_000) < 1 for u, s in zip(units, shares))


def test_round_credits_gives_4_decimals_that_sum_to_exactly_1():
    credits = round_credits(attribute_journey(_random_journey(random.Random(5), 13)))
    for column in ("initializer", "closer", "ihc"):
        scaled = [getattr(c, column) * 10_000 for c in credits]
        assert all(abs(x - round(x)) < 1e-6 for x in scaled)
        assert sum(round(x) for x in scaled) == 10_000


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2024-01-31 23:59:59", datetime(2024, 1, 31, 23, 59, 59, tzinfo=timezone.utc)),
        ("2024-01-31 23:59:59 +0100", datetime(2024, 1, 31, 22, 59, 59, tzinfo=timezone.utc)),
        ("2024-01-31 23:59:59 -0230", datetime(2024, 2, 1, 2, 29, 59, tzinfo=timezone.utc)),
    ],
)
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", ["2024-01-31", "2024-01-31T23:59:59", "31.01.2024 10:00:00", "2024-02-30 10:00:00", "", 17]
)
def test_parse_timestamp_rejects(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_redistribution_hands_a_channels_credit_to_the_others():
    rows = [tp("a", 0, "Referral", ce=1), tp("b", 1, "Direct Traffic", ce=1), tp("c", 2, "Referral", ce=1, conv=1)]
    plain = by_id(attribute_journey(rows))
    rule = {"closer": RedistributionRule("any_session", 0.0, frozenset({"Direct Traffic"}))}
    moved = by_id(attribute_journey(rows, redistribution=rule))
    assert moved["b"].closer == 0.0
    assert sum(c.closer for c in moved.values()) == pytest.approx(1.0)
    # Shared in proportion to the receivers' own closer shares.
    gain_a, gain_c = moved["a"].closer - plain["a"].closer, moved["c"].closer - plain["c"].closer
    assert gain_a / gain_c == pytest.approx(plain["a"].closer / plain["c"].closer)
    # Other phases untouched.
    assert moved["b"].initializer == plain["b"].initializer


@pytest.mark.parametrize(
    "direction,threshold,b_closer_is_zero",
    [
        ("earlier_sessions_only", 0.0, True),  # a is earlier
        ("later_sessions_only", 0.0, True),  # c is later
        ("any_session", 0.99, False),  # nobody has 99% of the closer phase: b keeps its credit
    ],
)
def test_redistribution_direction_and_threshold(direction, threshold, b_closer_is_zero):
    rows = [tp("a", 0, "Referral"), tp("b", 1, "Direct Traffic"), tp("c", 2, "Referral", conv=1)]
    rule = {"closer": RedistributionRule(direction, threshold, frozenset({"Direct Traffic"}))}
    c = by_id(attribute_journey(rows, redistribution=rule))
    assert (c["b"].closer == 0.0) is b_closer_is_zero
    assert sum(x.closer for x in c.values()) == pytest.approx(1.0)


def test_redistribution_without_receivers_keeps_credit():
    rows = [tp("a", 0, "Direct Traffic"), tp("b", 1, "Referral", conv=1)]
    rule = {"initializer": RedistributionRule("earlier_sessions_only", 0.0, frozenset({"Direct Traffic"}))}
    assert attribute_journey(rows, redistribution=rule) == attribute_journey(rows)


def _rule(**overrides) -> dict:
    return {"direction": "any_session", "receive_threshold": 0, "redistribution_channel_labels": [], **overrides}


@pytest.mark.parametrize(
    "obj,message",
    [
        ([], "must be an object"),
        ({"middle": {}}, "unknown phase"),
        ({"closer": []}, "must be an object"),
        ({"closer": {"direction": "any_session", "receive_threshold": 0}}, "missing redistribution_channel_labels"),
        ({"closer": _rule(direction="sideways")}, "direction"),
        ({"closer": _rule(receive_threshold="0")}, "receive_threshold"),
        ({"closer": _rule(receive_threshold=float("inf"))}, "receive_threshold"),
        ({"closer": _rule(redistribution_channel_labels="x")}, "list of strings"),
        ({"closer": _rule(redistribution_channel_labels=[1])}, "list of strings"),
    ],
)
def test_parse_redistribution_rejects(obj, message):
    with pytest.raises(ValueError, match=message):
        parse_redistribution(obj)


def test_phase_weights_change_ihc():
    rows = [tp("a", 0, he=0, ce=0), tp("b", 0.1, he=0, ce=0, conv=1)]
    a, _ = attribute_journey(rows, PhaseWeights(initializer=1.0, holder=0.0, closer=1.0))
    assert a.ihc == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs", [{"initializer": -0.1}, {"initializer": 0.0, "closer": 0.0}, {"holder": float("nan")}]
)
def test_phase_weights_validation(kwargs):
    with pytest.raises(ValueError):
        PhaseWeights(**kwargs)


def test_curve_interpolates_and_clamps():
    c = Curve(((0.0, 1.0), (10.0, 0.0)))
    assert (c(-5), c(0), c(2.5), c(10), c(50)) == (1.0, 1.0, 0.75, 0.0, 0.0)
    with pytest.raises(ValueError):
        Curve(((1.0, 0.0), (1.0, 1.0)))


def _largest_remainder_reference(values, units=10_000):
    """The rounding written out without shortcuts: floor, then the largest remainders get a unit."""
    total = math.fsum(values)
    if total <= 0:
        return [0] * len(values)
    scaled = [v / total * units for v in values]
    result = [math.floor(x) for x in scaled]
    for i in sorted(range(len(values)), key=lambda i: (result[i] - scaled[i], i))[: units - sum(result)]:
        result[i] += 1
    return result


_shares = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(_shares, min_size=1, max_size=12))
def test_largest_remainder_matches_the_plain_rounding(values):
    assert largest_remainder(values) == _largest_remainder_reference(values)


@given(st.lists(st.tuples(_shares, _shares, _shares, _shares), min_size=1, max_size=6))
def test_round_credits_matches_the_plain_rounding_of_each_column(columns):
    credits = [SessionCredit(f"s{i}", *values) for i, values in enumerate(columns)]
    expected = {
        name: _largest_remainder_reference([getattr(c, name) for c in credits])
        for name in ("initializer", "holder", "closer", "ihc")
    }
    for i, rounded in enumerate(round_credits(credits)):
        assert (rounded.initializer, rounded.holder, rounded.closer, rounded.ihc) == tuple(
            expected[name][i] / 10_000 for name in ("initializer", "holder", "closer", "ihc")
        )


@given(st.floats(min_value=-10, max_value=200, allow_nan=False))
def test_a_curve_interpolates_between_its_points(x):
    curve = Curve(((0.0, 1.0), (24.0, 0.5), (168.0, 0.1)))
    points = curve.points
    if x <= 0:
        assert curve(x) == 1.0
    elif x >= 168:
        assert curve(x) == 0.1
    else:
        (x0, y0), (x1, y1) = (points[0], points[1]) if x < 24 else (points[1], points[2])
        assert curve(x) == pytest.approx(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    assert curve == Curve(points) and hash(curve) == hash(Curve(points))


@pytest.mark.parametrize("redistribution", [
    None,
    {"closer": RedistributionRule("any_session", 0.0, frozenset({"Direct Traffic"})),
     "holder": RedistributionRule("earlier_sessions_only", 0.05, frozenset({"Referral"}))},
])
def test_a_request_s_journeys_evaluated_at_once_get_each_journey_s_own_credit_to_the_last_bit(redistribution):
    """The server evaluates a request's journeys as one batch; each journey's credit must be what it
    gets alone, bit for bit (sums, redistribution and the holder phase are per journey)."""
    rng = random.Random(7)
    channels = ["Direct Traffic", "Referral", "Paid Search", "Newsletter"]
    journeys = [
        [tp(f"j{j}s{i}", rng.choice([0.0, rng.uniform(0, 500)]), rng.choice(channels), rng.randint(0, 1),
            rng.randint(0, 1), int(rng.random() < 0.3)) for i in range(rng.choice([1, 1, 2, 3, 5, 12]))]
        for j in range(300)
    ]
    together = attribute_journeys(journeys, W, FITTED_PARAMS, redistribution)
    assert together == [attribute_journey(j, W, FITTED_PARAMS, redistribution) for j in journeys]
