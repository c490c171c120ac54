"""The Initializer-Holder-Closer (IHC) model of the local IHC double, and its rounding.

A journey is the list of sessions that led to one conversion. The model gives every session a
share of three phase distributions, each summing to 1 over the journey:

- **initializer**: the first session, plus sessions that restart the journey after a long pause.
  A session's raw weight grows with the pause since the previous session
  (:data:`FITTED_PARAMS` ``initializer_pause``); the first session has raw weight 1.
- **holder**: sessions with ``holder_engagement`` = 1, only in journeys of 2 or more sessions.
  Sessions that already take much initializer or closer credit get less holder credit
  (``holder_discount`` over the session's initializer + closer share), as the real answers show.
- **closer**: sessions with ``closer_engagement`` = 1 and always the last session, weighted by
  closeness in time to the converting session (the one flagged ``conversion`` = 1, else the last)
  (``closer_distance``).

Per-channel factors scale each phase's raw weights. ``ihc`` = (wI*I + wH*H + wC*C) / (wI + wH + wC),
dropping the holder phase (its weight and its column) when no session qualifies. A
single-session journey always gets (1, 0, 1, ihc 1). Curves and factors were fitted to real
answers of the production service (``scripts/calibrate_ihc_model.py --fit``).

The real service trains one model per conversion type, so :class:`ModelParams` is a family:
besides the three curves and the channel factors it has terms that are neutral for the reference
type A and let other types differ (see ``docs/ihc_server.md``): closer credit by the number of
sessions to the converting one (``closer_rank``), sessions forgotten behind a long pause
(``memory``), holder credit of the first and last sessions (``holder_first``, ``holder_last``),
credit of sessions without the engagement flag of a phase (``holder_unengaged``,
``closer_unengaged``) and of impressions (``impression``). A :class:`TypeModel` is the parameter
set and the phase weights that answer one conversion type.

The parameters and the built-in sets are in :mod:`~ihc_attribution_dev.server.family`, the
sessions and request fields in :mod:`~ihc_attribution_dev.server.journey`, the rounding of answers
in :mod:`~ihc_attribution_dev.server.rounding`; their names are importable from here as well.

Everything here is deterministic and independent of the order in which rows arrive: sessions are
ordered by timestamp, then session id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from ihc_attribution_dev.server.family import (
    FITTED_PARAMS,
    NOMINAL_PARAMS,
    ONE,
    PHASES,
    ChannelFactors,
    Curve,
    ModelParams,
    PhaseWeights,
    TypeModel,
)
from ihc_attribution_dev.server.journey import (
    DIRECTIONS,
    TIMESTAMP_FORMATS,
    RedistributionRule,
    SessionCredit,
    Touchpoint,
    chronological,
    parse_redistribution,
    parse_timestamp,
)
from ihc_attribution_dev.server.rounding import ROUND_UNITS, largest_remainder, round_credits

__all__ = [
    "DIRECTIONS",
    "FITTED_PARAMS",
    "NOMINAL_PARAMS",
    "ONE",
    "PHASES",
    "ROUND_UNITS",
    "TIMESTAMP_FORMATS",
    "ChannelFactors",
    "Curve",
    "ModelParams",
    "PhaseWeights",
    "RedistributionRule",
    "SessionCredit",
    "Touchpoint",
    "TypeModel",
    "attribute_journey",
    "chronological",
    "largest_remainder",
    "parse_redistribution",
    "parse_timestamp",
    "round_credits",
]


def attribute_journey(
    touchpoints: Iterable[Touchpoint],
    weights: PhaseWeights = PhaseWeights(),
    params: ModelParams = FITTED_PARAMS,
    redistribution: Mapping[str, RedistributionRule] | None = None,
) -> list[SessionCredit]:
    """Unrounded credit of every session of one journey, in chronological order.

    Each phase column sums to 1 (holder: 1, or 0 when no session qualifies), and so does ``ihc``.
    The result does not depend on the order of ``touchpoints``.
    """
    sessions = chronological(touchpoints)
    n = len(sessions)
    if n == 0:
        return []
    if n == 1:
        return [SessionCredit(sessions[0].session_id, 1.0, 0.0, 1.0, 1.0)]

    memory = _memory(sessions, params)
    common = _common_weights(sessions, params, memory)
    initializer = _initializer_shares(sessions, params, memory, common["initializer"])
    closer = _closer_shares(sessions, params, common["closer"])
    holder = _holder_shares(sessions, params, initializer, closer, common["holder"])

    phases = {"initializer": initializer, "holder": holder, "closer": closer}
    for phase, rule in (redistribution or {}).items():
        if phases.get(phase) is not None:
            phases[phase] = _redistribute(phases[phase], [s.channel_label for s in sessions], rule)
    return _combine(sessions, weights, phases["initializer"], phases["holder"], phases["closer"])


def _memory(sessions: Sequence[Touchpoint], params: ModelParams) -> list[float]:
    """The memory multiplier of every session, by the longest pause between it and the end of the journey."""
    n = len(sessions)
    longest_after = [0.0] * n
    for i in range(n - 2, -1, -1):
        longest_after[i] = max(longest_after[i + 1], _hours(sessions[i + 1].timestamp - sessions[i].timestamp))
    return [params.memory(h) for h in longest_after]


def _common_weights(sessions: Sequence[Touchpoint], params: ModelParams, memory: Sequence[float]) -> dict[str, list[float]]:
    """Per phase, the terms every phase shares: channel factor, memory, impression multiplier."""
    impression = params.impression
    common: dict[str, list[float]] = {}
    for phase in PHASES:
        column = []
        for s, m in zip(sessions, memory):
            weight = getattr(params.factors(s.channel_label), phase) * m
            column.append(weight * getattr(impression, phase) if s.impression_interaction == 1 else weight)
        common[phase] = column
    return common


def _initializer_shares(
    sessions: Sequence[Touchpoint], params: ModelParams, memory: Sequence[float], common: Sequence[float]
) -> list[float]:
    n = len(sessions)
    init_raw = [common[0]]
    for i in range(1, n):
        pause = _hours(sessions[i].timestamp - sessions[i - 1].timestamp)
        init_raw.append(params.initializer_pause(pause) * common[i])
    initializer = _normalise(init_raw)
    if initializer is None:
        # Only when factors or memory are 0: the session that counts most starts the journey.
        start = max(range(n), key=lambda i: (memory[i], -i))
        initializer = [float(i == start) for i in range(n)]
    return initializer


def _closer_shares(sessions: Sequence[Touchpoint], params: ModelParams, common: Sequence[float]) -> list[float]:
    n = len(sessions)
    flagged = [i for i, s in enumerate(sessions) if s.conversion == 1]
    conv_index = flagged[-1] if flagged else n - 1
    converting = sessions[conv_index].timestamp
    closer_raw = []
    for i, s in enumerate(sessions):
        eligible = 1.0 if (s.closer_engagement == 1 or i == n - 1) else params.closer_unengaged
        closer_raw.append(
            eligible * params.closer_distance(abs(_hours(converting - s.timestamp)))
            * params.closer_rank(abs(conv_index - i)) * common[i]
            if eligible else 0.0
        )
    closer = _normalise(closer_raw)
    if closer is None:
        closer = [0.0] * (n - 1) + [1.0]
    return closer


def _holder_shares(
    sessions: Sequence[Touchpoint],
    params: ModelParams,
    initializer: Sequence[float],
    closer: Sequence[float],
    common: Sequence[float],
) -> list[float] | None:
    """Holder shares, or None when no session qualifies (the phase is then dropped)."""
    n = len(sessions)
    holder_raw = []
    for i, s in enumerate(sessions):
        eligible = 1.0 if s.holder_engagement == 1 else params.holder_unengaged
        if i == 0:
            eligible *= params.holder_first
        if i == n - 1:
            eligible *= params.holder_last
        holder_raw.append(
            eligible * params.holder_discount(initializer[i] + closer[i]) * common[i] if eligible else 0.0
        )
    return _normalise(holder_raw)


def _combine(
    sessions: Sequence[Touchpoint],
    weights: PhaseWeights,
    initializer: Sequence[float],
    holder: Sequence[float] | None,
    closer: Sequence[float],
) -> list[SessionCredit]:
    w_holder = weights.holder if holder is not None else 0.0
    total = weights.initializer + w_holder + weights.closer
    credits = []
    for i, s in enumerate(sessions):
        h = holder[i] if holder is not None else 0.0
        ihc = (weights.initializer * initializer[i] + w_holder * h + weights.closer * closer[i]) / total
        credits.append(SessionCredit(s.session_id, initializer[i], h, closer[i], ihc))
    return credits


def _hours(delta) -> float:
    return delta.total_seconds() / 3600.0


def _normalise(raw: Sequence[float]) -> list[float] | None:
    total = math.fsum(raw)
    if total <= 0:
        return None
    return [x / total for x in raw]


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
        if rule.direction == "earlier_sessions_only":
            candidates = range(d)
        elif rule.direction == "later_sessions_only":
            candidates = range(d + 1, n)
        else:
            candidates = range(n)
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
