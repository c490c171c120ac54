"""Pack whole customer journeys into IHC API requests, under both limits of a request.

The service normalises every request on its own, so a journey split over two requests would get
twice the credit: journeys are never split. Two packers run and the one with fewer requests wins:
a *balanced fill* (each request gets its share of the remaining journeys, filled with the largest
ones that leave room for the smallest), which reaches the lower bound on realistic distributions
(many one-session journeys, where first-fit decreasing needs about 20% more requests), and
*first-fit decreasing*, better when journeys are large relative to the session limit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Mapping
from typing import TypeVar

ConvId = TypeVar("ConvId", bound=Hashable)


def _check_limits(max_journeys: int, max_sessions: int) -> None:
    for name, value in (("max_journeys", max_journeys), ("max_sessions", max_sessions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_size(conv_id: Hashable, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"journey {conv_id!r} has {size!r} sessions; every journey needs at least 1")


def lower_bound(sizes: Mapping[ConvId, int], max_journeys: int, max_sessions: int) -> int:
    """The fewest requests any packing needs: ``max(ceil(n / max_journeys), ceil(sessions / max_sessions))``."""
    _check_limits(max_journeys, max_sessions)
    return max(math.ceil(len(sizes) / max_journeys), math.ceil(sum(sizes.values()) / max_sessions))


def pack_journeys(
    sizes: Mapping[ConvId, int], max_journeys: int, max_sessions: int
) -> list[list[ConvId]]:
    """Pack whole journeys (conv id -> sessions) into as few requests as possible under both limits.

    Deterministic: the result depends on the sizes and the order of the (mutually comparable) ids.
    :raises ValueError: for a journey with fewer than 1 or more than ``max_sessions`` sessions, or a
        non-positive limit (apply the oversized journey policy first).
    """
    _check_limits(max_journeys, max_sessions)
    for conv_id, size in sizes.items():
        _check_size(conv_id, size)
        if size > max_sessions:
            raise ValueError(
                f"journey {conv_id!r} has {size} sessions, more than max_sessions={max_sessions}; "
                "apply the oversized journey policy before packing"
            )
    if not sizes:
        return []
    best = _pack_balanced(sizes, max_journeys, max_sessions)
    if len(best) > lower_bound(sizes, max_journeys, max_sessions):  # first-fit decreasing only where it does better
        best = min(best, _pack_first_fit_decreasing(sizes, max_journeys, max_sessions), key=len)
    return best


class _Remaining:
    """The journeys not yet packed, grouped by size; within a size ids leave in ascending order."""

    def __init__(self, sizes: Mapping[ConvId, int]) -> None:
        self.by_size: dict[int, list[ConvId]] = {}
        for conv_id, size in sizes.items():
            self.by_size.setdefault(size, []).append(conv_id)
        for ids in self.by_size.values():
            ids.sort(reverse=True)
        self.available = sorted(self.by_size)  # distinct sizes with journeys left, ascending
        self.journeys = len(sizes)
        self.sessions = sum(sizes.values())

    def smallest_total(self, count: int) -> int:
        """Sessions of the ``count`` smallest remaining journeys."""
        total = 0
        for size in self.available:
            here = len(self.by_size[size])
            if here >= count:
                return total + count * size
            total += here * size
            count -= here
        return total

    def take(self, size: int) -> ConvId:
        """Take a journey of ``size`` sessions out."""
        ids = self.by_size[size]
        conv_id = ids.pop()
        if not ids:
            del self.by_size[size]
            self.available.pop(bisect.bisect_left(self.available, size))
        self.journeys -= 1
        self.sessions -= size
        return conv_id


def _pack_balanced(sizes: Mapping[ConvId, int], max_journeys: int, max_sessions: int) -> list[list[ConvId]]:
    """Fill requests one by one, each with its share of journeys and as many sessions as fit.

    Each request opens with the largest remaining journey (long ones would fragment the last
    requests) and aims at ``ceil(remaining journeys / remaining lower bound)`` journeys, so that
    one-session journeys are spread over all requests.
    """
    left = _Remaining(sizes)
    requests: list[list[ConvId]] = []
    while left.journeys:
        bins_left = max(math.ceil(left.journeys / max_journeys), math.ceil(left.sessions / max_sessions))
        requests.append(_fill_request(left, min(max_journeys, math.ceil(left.journeys / bins_left)), max_sessions))
    return requests


def _fill_request(left: _Remaining, target: int, max_sessions: int) -> list[ConvId]:
    """The largest remaining journey, then up to ``target - 1`` more: each the largest that still leaves
    room for the smallest remaining ones to fill the other slots (so every slot can be filled)."""
    largest = left.available[-1]
    request = [left.take(largest)]
    capacity = max_sessions - largest
    while target > 1 and left.smallest_total(target - 1) > capacity:
        target -= 1
    for slot in range(1, target):
        limit = capacity - left.smallest_total(target - slot - 1)
        index = bisect.bisect_right(left.available, limit) - 1
        if index < 0:  # cannot happen given the invariant; never loop forever on a bug
            break
        size = left.available[index]
        request.append(left.take(size))
        capacity -= size
    return request


def _pack_first_fit_decreasing(
    sizes: Mapping[ConvId, int], max_journeys: int, max_sessions: int
) -> list[list[ConvId]]:
    """First-fit decreasing by sessions (ties by conversion id) under both limits. A max segment tree holds
    each request's free sessions (-1 once full of journeys): the first with room is O(log n) away."""
    items = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    leaves = 1
    while leaves < len(items):
        leaves *= 2
    # Unopened requests have the full capacity, so the leftmost fitting leaf is either an open
    # request with room or the next request to open.
    tree = [max_sessions] * (2 * leaves)
    counts = [0] * leaves
    free = [max_sessions] * leaves
    requests: list[list[ConvId]] = []
    for conv_id, size in items:
        node = 1
        while node < leaves:
            node = 2 * node if tree[2 * node] >= size else 2 * node + 1
        slot = node - leaves
        if slot == len(requests):
            requests.append([])
        requests[slot].append(conv_id)
        counts[slot] += 1
        free[slot] -= size
        tree[node] = free[slot] if counts[slot] < max_journeys else -1
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return requests
