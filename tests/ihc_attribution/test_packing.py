"""Packing whole journeys into requests under both API limits."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest

from ihc_attribution.packing import (
    _pack_balanced,
    _pack_first_fit_decreasing,
    lower_bound,
    pack_journeys,
)

LIMITS = [(100, 3000), (100, 200)]


def synthetic_sizes(n: int, seed: int, alpha: float = 2.0) -> dict[str, int]:
    """Journey lengths shaped like real traffic: 58% one session, 21% two, a tail up to 100."""
    rng = random.Random(seed)
    tail = list(range(3, 101))
    tail_weights = [k**-alpha for k in tail]
    scale = 0.21 / sum(tail_weights)
    values = [1, 2, *tail]
    weights = [0.58, 0.21, *(w * scale for w in tail_weights)]
    return {f"conv-{i:06d}": size for i, size in enumerate(rng.choices(values, weights, k=n))}


def assert_valid(requests: list[list[str]], sizes: dict[str, int], max_journeys: int, max_sessions: int):
    """Every journey exactly once, whole, and every request within both limits."""
    packed = Counter(conv for request in requests for conv in request)
    assert packed == Counter(sizes.keys())
    for request in requests:
        assert 1 <= len(request) <= max_journeys
        assert sum(sizes[conv] for conv in request) <= max_sessions


# --- tables ------------------------------------------------------------------------------------

CASES = [
    # (sizes, max_journeys, max_sessions, expected number of requests)
    ({}, 100, 3000, 0),
    ({"a": 1}, 100, 3000, 1),
    ({"a": 3000}, 100, 3000, 1),
    ({"a": 1, "b": 1, "c": 1}, 2, 3000, 2),  # journey limit binds
    ({"a": 2, "b": 2, "c": 2}, 100, 4, 2),  # session limit binds: {a,b} {c}
    ({"a": 3, "b": 3, "c": 3}, 100, 5, 3),  # nothing pairs
    ({"a": 60, "b": 50, "c": 40, "d": 30, "e": 20}, 100, 100, 2),  # 60+40, 50+30+20
    ({f"s{i}": 1 for i in range(250)}, 100, 3000, 3),
    ({**{f"big{i}": 150 for i in range(4)}, **{f"one{i}": 1 for i in range(200)}}, 100, 200, 4),
    ({f"c{i}": 100 for i in range(31)}, 100, 3000, 2),
]


@pytest.mark.parametrize(("sizes", "max_journeys", "max_sessions", "expected"), CASES)
def test_pack_table(sizes, max_journeys, max_sessions, expected):
    requests = pack_journeys(sizes, max_journeys, max_sessions)
    assert_valid(requests, sizes, max_journeys, max_sessions)
    assert len(requests) == expected


@pytest.mark.parametrize(("max_journeys", "max_sessions"), [*LIMITS, (3, 10), (1, 5), (50, 50)])
@pytest.mark.parametrize("seed", range(5))
def test_random_inputs_respect_both_limits_and_never_split(seed, max_journeys, max_sessions):
    rng = random.Random(seed)
    sizes = {f"c{i}": rng.randint(1, max_sessions) for i in range(rng.randint(1, 400))}
    requests = pack_journeys(sizes, max_journeys, max_sessions)
    assert_valid(requests, sizes, max_journeys, max_sessions)
    assert len(requests) >= lower_bound(sizes, max_journeys, max_sessions)


@pytest.mark.parametrize(("max_journeys", "max_sessions"), LIMITS)
def test_deterministic_whatever_the_input_order(max_journeys, max_sessions):
    sizes = synthetic_sizes(3000, seed=3)
    shuffled = list(sizes.items())
    random.Random(1).shuffle(shuffled)
    first = pack_journeys(sizes, max_journeys, max_sessions)
    assert pack_journeys(dict(shuffled), max_journeys, max_sessions) == first
    assert pack_journeys(sizes, max_journeys, max_sessions) == first


@pytest.mark.parametrize(("max_journeys", "max_sessions"), LIMITS)
@pytest.mark.parametrize(("seed", "alpha"), [(1, 2.0), (2, 1.5), (3, 2.5)])
def test_within_two_percent_of_the_lower_bound_on_realistic_journeys(seed, alpha, max_journeys, max_sessions):
    sizes = synthetic_sizes(20_000, seed, alpha)
    assert Counter(sizes.values())[1] / len(sizes) == pytest.approx(0.58, abs=0.02)
    requests = pack_journeys(sizes, max_journeys, max_sessions)
    assert_valid(requests, sizes, max_journeys, max_sessions)
    bound = lower_bound(sizes, max_journeys, max_sessions)
    assert len(requests) <= math.floor(bound * 1.02)


@pytest.mark.parametrize("seed", range(3))
def test_heavy_tail_with_journeys_at_the_session_limit_stays_within_two_percent(seed):
    # A fatter tail, plus journeys that fill a request alone: they must not be left to the end,
    # where they would strand the last requests half empty.
    rng = random.Random(seed)
    sizes = {f"c{i:04d}": rng.choice([1] * 58 + [2] * 21 + list(range(3, 60))) for i in range(1500)}
    sizes.update({f"long{i}": 200 for i in range(3)})
    requests = pack_journeys(sizes, 100, 200)
    assert_valid(requests, sizes, 100, 200)
    assert len(requests) <= math.floor(lower_bound(sizes, 100, 200) * 1.02)


def test_falls_back_to_first_fit_decreasing_when_it_does_better():
    # Journeys large relative to the session limit (the textbook bin-packing regime), where
    # first-fit decreasing beats the balanced fill.
    rng = random.Random(5)
    sizes = {f"c{i}": rng.choice([1, 34, 51, 67, 101, 120]) for i in range(300)}
    ffd = _pack_first_fit_decreasing(sizes, 100, 200)
    assert len(ffd) < len(_pack_balanced(sizes, 100, 200))
    requests = pack_journeys(sizes, 100, 200)
    assert_valid(requests, sizes, 100, 200)
    assert requests == ffd


def test_hundred_thousand_journeys_pack_fast():
    sizes = synthetic_sizes(100_000, seed=5)
    start = time.perf_counter()
    requests = pack_journeys(sizes, 100, 200)
    elapsed = time.perf_counter() - start
    assert_valid(requests, sizes, 100, 200)
    assert elapsed < 5.0


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"a": 1, "long": 201}, "more than max_sessions=200"),
        ({"a": 0}, "at least 1"),
        ({"a": -2}, "at least 1"),
        ({"a": 1.5}, "at least 1"),
        ({"a": True}, "at least 1"),
    ],
)
def test_invalid_sizes_raise(sizes, message):
    with pytest.raises(ValueError, match=message):
        pack_journeys(sizes, 100, 200)


@pytest.mark.parametrize(("max_journeys", "max_sessions"), [(0, 10), (10, 0), (-1, 10), (1.5, 10)])
def test_invalid_limits_raise(max_journeys, max_sessions):
    with pytest.raises(ValueError):
        pack_journeys({"a": 1}, max_journeys, max_sessions)
    with pytest.raises(ValueError):
        lower_bound({"a": 1}, max_journeys, max_sessions)


# --- lower bound -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "max_journeys", "max_sessions", "expected"),
    [
        ({}, 100, 3000, 0),
        ({"a": 1}, 100, 3000, 1),
        ({f"c{i}": 1 for i in range(101)}, 100, 3000, 2),  # journeys bind
        ({"a": 150, "b": 150, "c": 150}, 100, 200, 3),  # sessions bind: ceil(450 / 200)
        ({"a": 100, "b": 100}, 100, 200, 1),
    ],
)
def test_lower_bound(sizes, max_journeys, max_sessions, expected):
    assert lower_bound(sizes, max_journeys, max_sessions) == expected
