"""The Initializer-Holder-Closer (IHC) model of the local IHC double, its parameters and its rounding.

Every session gets a share of three phase distributions, each summing to 1 (docs/ihc_server.md);
``ihc`` = (wI*I + wH*H + wC*C) / (wI + wH + wC), dropping a phase without an eligible session.
Deterministic and independent of row order: sessions are ordered by timestamp, then session id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import accumulate

import numpy as np

PHASES = ("initializer", "holder", "closer")


def _finite_non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class PhaseWeights:
    """Weights of the three phases in ``ihc`` (defaults: fitted for the reference conversion type)."""

    initializer: float = 0.345
    holder: float = 0.380
    closer: float = 0.275

    def __post_init__(self) -> None:
        for name in PHASES:
            value = getattr(self, name)
            if not _finite_non_negative(value):
                raise ValueError(f"phase weight {name} must be a finite number >= 0, got {value!r}")
        # The holder phase may be dropped, so the other two alone must be able to carry ihc.
        if self.initializer + self.closer <= 0:
            raise ValueError("phase weights: initializer + closer must be > 0")


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear function through ``points`` (x ascending), constant beyond both ends."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        xs = [x for x, _ in self.points]
        if not xs or any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError("curve points need strictly increasing x values")
        if any(y < 0 for _, y in self.points):
            raise ValueError("curve values must be >= 0")

    def __call__(self, x):
        """The value at ``x``, a number or a numpy array of numbers."""
        return self.at(self.locate(x))

    def locate(self, x) -> tuple:
        """Where ``x`` lies among the knots, all :meth:`at` needs besides the values: the segment, the
        offset into it (0 before the first knot), its width, and whether ``x`` is past the last knot."""
        xs = np.array([k for k, _ in self.points])
        i = np.searchsorted(xs[1:-1], x, side="right")
        return i, np.maximum(x - xs[i], 0.0), np.append(np.diff(xs), 1.0)[i], x >= xs[-1]

    def at(self, located: tuple):
        """The values at the points ``located`` by :meth:`locate` (of a curve with the same knots)."""
        i, offset, width, beyond = located
        ys = np.array([y for _, y in self.points])
        return np.where(beyond, ys[-1], ys[i] + np.append(np.diff(ys), 0.0)[i] * offset / width)


@dataclass(frozen=True)
class ChannelFactors:
    """Multipliers of one channel's raw weight in each phase."""

    initializer: float = 1.0
    holder: float = 1.0
    closer: float = 1.0


#: A curve that is 1 everywhere (the neutral value of the optional curves).
ONE = Curve(((0.0, 1.0),))


@dataclass(frozen=True)
class ModelParams:
    """The trained part of the model of one conversion type (phase weights aside).

    A session's raw weight in a phase is the product of the terms that apply to it (docs/ihc_server.md,
    "One model per conversion type"), normalised over the journey. Curves are over hours (pause,
    distance, longest pause to the converting session), sessions to the converting one (rank) or the
    initializer + closer share (holder discount). The optional terms' defaults are neutral: type A.
    """

    initializer_pause: Curve
    closer_distance: Curve
    holder_discount: Curve
    channel_factors: Mapping[str, ChannelFactors] = field(default_factory=dict)
    closer_rank: Curve = ONE
    memory: Curve = ONE
    holder_first: float = 1.0
    holder_last: float = 1.0
    holder_unengaged: float = 0.0
    closer_unengaged: float = 0.0
    impression: ChannelFactors = field(default_factory=lambda: ChannelFactors())

    def __post_init__(self) -> None:
        named = [(name, getattr(self, name)) for name in ("holder_first", "holder_last", "holder_unengaged", "closer_unengaged")]
        named += [(f"factor {phase} of {label!r}", getattr(f, phase))
                  for label, f in [("impression", self.impression), *self.channel_factors.items()] for phase in PHASES]
        for name, value in named:
            if isinstance(value, bool) or not _finite_non_negative(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.memory(0.0) <= 0:
            raise ValueError("memory must be > 0 at 0 h: the last session of a journey always counts")

    def factors(self, channel_label: str) -> ChannelFactors:
        """Factors of a channel (neutral for a channel the model was not trained on)."""
        return self.channel_factors.get(channel_label, ChannelFactors())

# Fitted on the reference answers (1,925 journeys, 787 with 2+ sessions) by a closed-form fit of
# log ratios of shares within a journey (docs/ihc_server.md). The real service gives no restart credit before about
# 50 h of pause and only half credit after 9 days, the longest pause in the data; beyond it the
# curve is extended to full credit at 14 days.
FITTED_PARAMS = ModelParams(
    initializer_pause=Curve((
        (50.0, 0.0), (52.0, 0.0051), (55.0, 0.0112), (60.0, 0.0125), (66.0, 0.0178),
        (72.0, 0.032), (84.0, 0.0633), (96.0, 0.0977), (120.0, 0.1689), (144.0, 0.2507),
        (168.0, 0.3405), (216.0, 0.5351), (336.0, 1.0),
    )),
    closer_distance=Curve((
        (0.0, 1.0), (0.25, 0.8657), (0.5, 0.7672), (1.0, 0.6623), (2.0, 0.6027), (4.0, 0.5342),
        (8.0, 0.5027), (16.0, 0.4482), (24.0, 0.396), (48.0, 0.3357), (72.0, 0.2678),
        (96.0, 0.2157), (120.0, 0.1536), (168.0, 0.0875), (240.0, 0.0325),
    )),
    holder_discount=Curve((
        (0.0, 1.0), (0.25, 0.8607), (0.5, 0.7074), (0.75, 0.5262), (1.0, 0.256),
        (1.25, 0.1886), (1.5, 0.1258), (1.75, 0.1068),
    )),
    # channel_label: ChannelFactors(initializer, holder, closer)
    channel_factors={
        "Affiliate & Partnerships": ChannelFactors(1.015, 1.005, 0.996),
        "Direct Traffic": ChannelFactors(0.842, 0.961, 1.075),
        "FB & IG Ads": ChannelFactors(1.0, 0.996, 1.004),
        "Microsoft Ads": ChannelFactors(1.0, 0.996, 0.993),
        "Newsletter & Email": ChannelFactors(1.038, 1.011, 0.997),
        "Organic Traffic": ChannelFactors(1.022, 1.006, 0.996),
        "Paid Search Brand": ChannelFactors(1.03, 1.009, 0.997),
        "Paid Search Non Brand": ChannelFactors(1.027, 1.011, 0.996),
        "Performance Max": ChannelFactors(1.03, 1.006, 0.999),
        "Referral": ChannelFactors(1.012, 1.008, 0.98),
        "Social Organic": ChannelFactors(1.0, 0.988, 0.981),
        "TikTok Ads": ChannelFactors(1.0, 1.005, 0.988),
        "Untracked Conversions": ChannelFactors(1.0, 1.0, 1.001),
    },
)

#: The curves as the design brief describes them, without fitted factors: kept for comparison.
NOMINAL_PARAMS = ModelParams(
    initializer_pause=Curve(((2.0, 0.0), (48.0, 1.0))),
    closer_distance=Curve(((0.0, 1.0), (2.0, 0.5), (48.0, 0.0))),
    holder_discount=Curve(((0.0, 1.0),)),
)


@dataclass(frozen=True)
class TypeModel:
    """What answers one conversion type: a parameter set, phase weights, and where they came from.

    :param source: shown in the server's startup log (a file name, or ``built-in``).
    :param fit: calibration summary recorded with the parameters (journeys, MAEs), if any.
    """

    params: ModelParams = FITTED_PARAMS
    weights: PhaseWeights = field(default_factory=PhaseWeights)
    source: str = "built-in (reference type A)"
    fit: Mapping[str, object] | None = None


@dataclass(frozen=True)
class Touchpoint:
    """One validated session of a journey, as sent in a request row."""

    session_id: str | int
    timestamp: datetime
    channel_label: str
    holder_engagement: int
    closer_engagement: int
    conversion: int = 0
    impression_interaction: int = 0


@dataclass(frozen=True)
class SessionCredit:
    """The credit of one session in each phase and overall."""

    session_id: str | int
    initializer: float
    holder: float
    closer: float
    ihc: float


@dataclass(frozen=True)
class RedistributionRule:
    """How one phase hands the credit of ``channel_labels`` to the other sessions of a journey:
    those in ``direction`` whose own share is at least ``receive_threshold`` (:func:`_redistribute`).
    """

    direction: str
    receive_threshold: float
    channel_labels: frozenset[str]


def chronological(touchpoints: Iterable[Touchpoint]) -> list[Touchpoint]:
    """Sessions ordered by timestamp, then session id (the order the model works in)."""
    return sorted(touchpoints, key=_order_key)


def _order_key(t: Touchpoint) -> tuple:
    # Integer ids sort numerically (9 before 10) and before text ids.
    sid = t.session_id
    return (t.timestamp, 0, sid, "") if isinstance(sid, int) else (t.timestamp, 1, 0, sid)


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
    order = sorted(range(len(values)), key=lambda i: (result[i] - scaled[i], i))
    for i in order[: units - sum(result)]:
        result[i] += 1
    return result


def round_credits(credits: Sequence[SessionCredit]) -> list[SessionCredit]:
    """Round every column to 4 decimals so that each sums to exactly 1 (a dropped holder stays 0)."""
    columns = [largest_remainder([getattr(c, name) for c in credits]) for name in (*PHASES, "ihc")]
    return [SessionCredit(c.session_id, *(column[i] / ROUND_UNITS for column in columns)) for i, c in enumerate(credits)]


def attribute_journey(touchpoints: Iterable[Touchpoint], weights: PhaseWeights = PhaseWeights(),
                      params: ModelParams = FITTED_PARAMS, redistribution: Mapping[str, RedistributionRule] | None = None
                      ) -> list[SessionCredit]:
    """Unrounded credit of every session of one journey: :func:`attribute_journeys` of one."""
    return attribute_journeys([touchpoints], weights, params, redistribution)[0]


def attribute_journeys(journeys: Sequence[Iterable[Touchpoint]], weights: PhaseWeights = PhaseWeights(),
                       params: ModelParams = FITTED_PARAMS, redistribution: Mapping[str, RedistributionRule] | None = None
                       ) -> list[list[SessionCredit]]:
    """Unrounded credit of every session of each journey, in chronological order. Each phase column sums
    to 1 (holder: 1, or 0 when no session qualifies), and so does ``ihc``, whatever the touchpoints' order.
    The journeys of 2+ sessions are one batch: one at a time, numpy's cost per call would dominate."""
    ordered = [chronological(touchpoints) for touchpoints in journeys]
    multi = [sessions for sessions in ordered if len(sessions) >= 2]
    credits = iter(_attribute_batch(multi, weights, params, redistribution or {}) if multi else ())
    return [next(credits) if len(sessions) >= 2 else [SessionCredit(s.session_id, 1.0, 0.0, 1.0, 1.0) for s in sessions]
            for sessions in ordered]


def _attribute_batch(journeys: list[list[Touchpoint]], weights: PhaseWeights, params: ModelParams,
                     redistribution: Mapping[str, RedistributionRule]) -> list[list[SessionCredit]]:
    batch = Batch(journeys, exact=True)
    initializer, holder, closer, has_holder = phase_shares(batch, params)
    phases = {"initializer": initializer, "holder": holder, "closer": closer}
    rows = [slice(start, start + len(sessions)) for start, sessions in zip(batch.starts, journeys)]
    for phase, rule in redistribution.items():
        for journey, sessions in zip(rows, journeys):
            if phase != "holder" or has_holder[journey.start]:
                shares = phases[phase][journey].tolist()
                phases[phase][journey] = _redistribute(shares, [s.channel_label for s in sessions], rule)
    ihc = combine(weights, *phases.values(), has_holder)
    values = np.column_stack([*phases.values(), ihc]).tolist()
    return [[SessionCredit(s.session_id, *values[i]) for i, s in zip(range(journey.start, journey.stop), sessions)]
            for journey, sessions in zip(rows, journeys)]


class Batch:
    """Journeys of 2+ sessions, each a chronological list, as flat arrays with one entry per session:
    the journeys of a request for the server (``exact`` sums), hundreds at once for a calibration."""

    def __init__(self, journeys: Sequence[Sequence[Touchpoint]], exact: bool = False) -> None:
        self._located: dict[tuple, tuple] = {}
        self.exact, self.n_journeys = exact, len(journeys)
        self.starts = list(accumulate((len(j) for j in journeys[:-1]), initial=0))
        self.labels = tuple(sorted({t.channel_label for j in journeys for t in j}))
        index = {c: i for i, c in enumerate(self.labels)}
        rows = []
        for jid, tps in enumerate(journeys):
            n = len(tps)
            conv = max((i for i, t in enumerate(tps) if t.conversion == 1), default=n - 1)
            gaps = [0.0] + [_hours(b.timestamp - a.timestamp) for a, b in zip(tps, tps[1:])]
            # The longest pause between a session and the end of its journey.
            longest = list(accumulate(reversed(gaps[1:]), max, initial=0.0))[::-1]
            rows += [
                (jid, i == 0, i == n - 1, gaps[i], abs(_hours(tps[conv].timestamp - t.timestamp)),
                 float(abs(conv - i)), longest[i], t.holder_engagement == 1, t.closer_engagement == 1,
                 t.impression_interaction == 1, index[t.channel_label])
                for i, t in enumerate(tps)
            ]
        names = ("jid", "first", "last", "gap", "to_conv", "rank", "longest", "he", "ce", "imp", "ch")
        for name, column in zip(names, zip(*rows)):
            setattr(self, name, np.array(column))

    def curve(self, curve: Curve, column: str) -> np.ndarray:
        """``curve`` at every session's ``column``. Where the points lie among the knots is looked up
        once per knots: a calibration evaluates curves of the same knots again and again."""
        key = (column, tuple(k for k, _ in curve.points))
        if key not in self._located:
            self._located[key] = curve.locate(getattr(self, column))
        return curve.at(self._located[key])


def phase_shares(batch: Batch, params: ModelParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unrounded initializer, holder and closer shares of every session, and whether its journey has a holder phase."""
    p, jid = params, batch.jid
    memory = batch.curve(p.memory, "longest")
    impression = np.array([getattr(p.impression, phase) for phase in PHASES])
    factors = np.array([[getattr(p.factors(c), phase) for phase in PHASES] for c in batch.labels])
    # The terms every phase shares: channel factor, memory, impression multiplier.
    common = factors[batch.ch] * memory[:, None] * np.where(batch.imp[:, None], impression, 1.0)

    initializer, ok = _normalise(np.where(batch.first, 1.0, batch.curve(p.initializer_pause, "gap")) * common[:, 0], batch)
    for j in np.flatnonzero(~ok):
        # Only when factors or memory are 0: the session that counts most (the earliest on ties) starts the journey.
        rows = np.flatnonzero(jid == j)
        initializer[rows] = rows == rows[np.argmax(memory[rows])]

    eligible = np.where(batch.ce | batch.last, 1.0, p.closer_unengaged)
    closeness = eligible * batch.curve(p.closer_distance, "to_conv") * batch.curve(p.closer_rank, "rank")
    closer, ok = _normalise(closeness * common[:, 2], batch)
    closer = np.where(ok[jid], closer, batch.last.astype(float))

    eligible = np.where(batch.he, 1.0, p.holder_unengaged) * np.where(batch.first, p.holder_first, 1.0) \
        * np.where(batch.last, p.holder_last, 1.0)
    holder, has_holder = _normalise(eligible * p.holder_discount(initializer + closer) * common[:, 1], batch)
    has_holder = has_holder[jid]
    return initializer, np.where(has_holder, holder, 0.0), closer, has_holder


def combine(weights: PhaseWeights, initializer, holder, closer, has_holder) -> np.ndarray:
    """``ihc`` of every session: the weighted mean of its phase shares (a dropped holder phase weighs 0)."""
    w_holder = np.where(has_holder, weights.holder, 0.0)
    return (weights.initializer * initializer + w_holder * holder + weights.closer * closer) \
        / (weights.initializer + w_holder + weights.closer)


def predict_batch(batch: Batch, params: ModelParams, weights: PhaseWeights) -> tuple[np.ndarray, ...]:
    """Unrounded (initializer, holder, closer, ihc) arrays of every session of ``batch``."""
    initializer, holder, closer, has_holder = phase_shares(batch, params)
    return initializer, holder, closer, combine(weights, initializer, holder, closer, has_holder)


def _hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600.0


def _normalise(raw: np.ndarray, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Every value divided by its journey's total, and per journey whether that total is > 0."""
    if batch.exact:
        # The server: each journey's correctly rounded sum, which its answers have always used. A
        # calibration takes numpy's faster sum, as a fit does not need the last bit.
        total = np.array([math.fsum(part) for part in np.split(raw, batch.starts[1:])])
    else:
        total = np.bincount(batch.jid, weights=raw, minlength=batch.n_journeys)
    ok = total > 0
    return raw / np.where(ok, total, 1.0)[batch.jid], ok


def _redistribute(shares: list[float], channels: list[str], rule: RedistributionRule) -> list[float]:
    """Hand the shares of ``rule.channel_labels`` to the receiving sessions; the sum is kept.

    Receivers are the sessions of other channels in ``rule.direction`` whose own share is at least
    ``rule.receive_threshold``; they get the credit in proportion to their shares (equally if
    those are all 0). Every donor is served from the shares before redistribution, so the result
    does not depend on the order donors are handled in. A donor without receivers keeps its credit.
    """
    n = len(shares)
    result = list(shares)
    donors = [i for i in range(n) if channels[i] in rule.channel_labels and shares[i] > 0]
    for d in donors:
        candidates = {"earlier_sessions_only": range(d), "later_sessions_only": range(d + 1, n)}.get(rule.direction, range(n))
        receivers = [
            j for j in candidates
            if j != d and channels[j] not in rule.channel_labels and shares[j] >= rule.receive_threshold
        ]
        if not receivers:
            continue
        base = math.fsum(shares[j] for j in receivers)
        for j in receivers:
            result[j] += shares[d] * (shares[j] / base if base > 0 else 1 / len(receivers))
        result[d] -= shares[d]
    return result
