"""Fitting the built-in type A constants (:data:`~ihc_attribution_dev.server.family.FITTED_PARAMS`).

Log-ratio least squares (numpy). This closed-form fit knows type A's shape (no restart credit
below 50 h); the general calibration of any conversion type is
:func:`ihc_attribution_dev.server.calibration.calibrate`. Within a journey, the ratio of two
sessions' shares of a phase equals the ratio of their raw weights, so the curves and channel
factors can be fitted without knowing the normaliser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ihc_attribution_dev.server.calibration import Journey, errors, model_method
from ihc_attribution_dev.server.model import ChannelFactors, Curve, ModelParams, Touchpoint

# Knots of the built-in type A curves (the general calibration has its own, wider ones in
# ihc_attribution_dev.server.vectorised). Initializer: the service gives no restart credit below about 50 h of
# pause (49.9 h: 0, 50.0 h: 0.0002 in the data); the longest pause in the data is about 9 days,
# so the curve is extended to full credit at 14 days.
INITIALIZER_KNOTS = (50.0, 52.0, 55.0, 60.0, 66.0, 72.0, 84.0, 96.0, 120.0, 144.0, 168.0, 216.0)
INITIALIZER_FULL_AT = 336.0
CLOSER_KNOTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0, 240.0)
HOLDER_KNOTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# Pulls the log factor of a channel with few sessions towards 0 (factor 1).
RIDGE = 2.0
# Shares below this are mostly rounding noise in a log ratio.
MIN_SHARE = 0.002


def _hat(x: float, knots: Sequence[float]):
    """Row of piecewise-linear basis values of ``x`` over ``knots`` (clamped at both ends)."""
    import numpy as np

    row = np.zeros(len(knots))
    if x <= knots[0]:
        row[0] = 1.0
    elif x >= knots[-1]:
        row[-1] = 1.0
    else:
        j = int(np.searchsorted(knots, x, side="right")) - 1
        t = (x - knots[j]) / (knots[j + 1] - knots[j])
        row[j], row[j + 1] = 1.0 - t, t
    return row


def _solve(rows, targets, n_channels: int, fixed_first: bool):
    """Least squares with a ridge on the trailing channel columns; optionally pin column 0 to 0."""
    import numpy as np

    a, y = np.array(rows), np.array(targets)
    width = a.shape[1]
    extra = [np.eye(width)[width - n_channels + c] * math.sqrt(RIDGE) for c in range(n_channels)]
    if fixed_first:
        extra.append(np.eye(width)[0] * 1e3)
    a = np.vstack([a, *extra])
    y = np.concatenate([y, np.zeros(len(extra))])
    solution, *_ = np.linalg.lstsq(a, y, rcond=None)
    return solution


def _hours(a: Touchpoint, b: Touchpoint) -> float:
    return abs((b.timestamp - a.timestamp).total_seconds()) / 3600.0


def _channel_diff(index: Mapping[str, int], a: str, b: str):
    import numpy as np

    row = np.zeros(len(index))
    row[index[a]] += 1.0
    row[index[b]] -= 1.0
    return row


def fit(journeys: Sequence[Journey]) -> ModelParams:
    """Fit the three curves and the per-channel factors to the reference answers."""
    multi = [j for j in journeys if len(j.touchpoints) > 1]
    channels = sorted({t.channel_label for j in multi for t in j.touchpoints})
    index = {c: i for i, c in enumerate(channels)}
    closer_curve, closer_factor = _fit_closer(multi, index)
    init_curve, init_factor = _fit_initializer(multi, index)
    holder_curve, holder_factor = _fit_holder(multi, index)
    return ModelParams(
        initializer_pause=_curve_of(INITIALIZER_KNOTS, init_curve, ((INITIALIZER_FULL_AT, 1.0),)),
        closer_distance=_curve_of(CLOSER_KNOTS, closer_curve),
        holder_discount=_curve_of(HOLDER_KNOTS, holder_curve),
        channel_factors={
            c: ChannelFactors(
                round(float(init_factor[i]), 3), round(float(holder_factor[i]), 3), round(float(closer_factor[i]), 3)
            )
            for i, c in enumerate(channels)
        },
    )


def _curve_of(knots, values, tail=()) -> Curve:
    return Curve(tuple((float(x), round(float(y), 4)) for x, y in zip(knots, values)) + tuple(tail))


def _fit_closer(multi: Sequence[Journey], index: Mapping[str, int]):
    """Closer: log(C_i / C_last) = log g(d_i) + log f(c_i) - log f(c_last), with g(0) = 1."""
    import numpy as np

    rows, targets = [], []
    for j in multi:
        last, c_last = j.touchpoints[-1], j.answer[-1]["closer"]
        for t, real in zip(j.touchpoints[:-1], j.answer[:-1]):
            if t.closer_engagement == 1 and real["closer"] >= MIN_SHARE and c_last >= MIN_SHARE:
                rows.append(np.concatenate([
                    _hat(_hours(t, last), CLOSER_KNOTS), _channel_diff(index, t.channel_label, last.channel_label),
                ]))
                targets.append(math.log(real["closer"] / c_last))
    sol = _solve(rows, targets, len(index), fixed_first=True)
    return np.exp(sol[: len(CLOSER_KNOTS)]), np.exp(sol[len(CLOSER_KNOTS):])


def _fit_initializer(multi: Sequence[Journey], index: Mapping[str, int]):
    """Initializer: I_i / I_0 = g(pause_i) * f(c_i) / f(c_0).

    Alternates: the curve by linear least squares on the ratios (small values matter), the
    factors by log ratios.
    """
    import numpy as np

    init_factor = np.ones(len(index))
    pairs = []
    for j in multi:
        first, i_first = j.touchpoints[0], j.answer[0]["initializer"]
        for prev, t, real in zip(j.touchpoints, j.touchpoints[1:], j.answer[1:]):
            pause = _hours(prev, t)
            if pause >= INITIALIZER_KNOTS[0] and i_first > 0:
                pairs.append((pause, t.channel_label, first.channel_label, real["initializer"] / i_first))
    for _ in range(5):
        a = [_hat(p, INITIALIZER_KNOTS) for p, *_ in pairs]
        y = [r * init_factor[index[c0]] / init_factor[index[c]] for _, c, c0, r in pairs]
        curve, *_ = np.linalg.lstsq(np.array(a), np.array(y), rcond=None)
        curve = np.clip(curve, 0.0, None)
        curve[0] = 0.0
        rows, targets = [], []
        for pause, c, c0, ratio in pairs:
            g = float(np.interp(pause, INITIALIZER_KNOTS, curve))
            if g >= 0.02 and ratio >= MIN_SHARE:
                rows.append(_channel_diff(index, c, c0))
                targets.append(math.log(ratio / g))
        init_factor = np.exp(_solve(rows, targets, len(index), fixed_first=False))
    return curve, init_factor


def _fit_holder(multi: Sequence[Journey], index: Mapping[str, int]):
    """Holder: log(H_i / H_j) = log D(s_i) - log D(s_j) + log f(c_i) - log f(c_j).

    s is the session's initializer + closer share in the answer, and D(0) = 1.
    """
    import numpy as np

    rows, targets = [], []
    for j in multi:
        eligible = [k for k, t in enumerate(j.touchpoints) if t.holder_engagement == 1]
        if len(eligible) < 2:
            continue
        ref = eligible[-1]
        h_ref = j.answer[ref]["holder"]
        s_ref = j.answer[ref]["initializer"] + j.answer[ref]["closer"]
        for k in eligible[:-1]:
            h = j.answer[k]["holder"]
            if h >= MIN_SHARE and h_ref >= MIN_SHARE:
                s = j.answer[k]["initializer"] + j.answer[k]["closer"]
                rows.append(np.concatenate([
                    _hat(s, HOLDER_KNOTS) - _hat(s_ref, HOLDER_KNOTS),
                    _channel_diff(index, j.touchpoints[k].channel_label, j.touchpoints[ref].channel_label),
                ]))
                targets.append(math.log(h / h_ref))
    sol = _solve(rows, targets, len(index), fixed_first=True)
    return np.exp(sol[: len(HOLDER_KNOTS)]), np.exp(sol[len(HOLDER_KNOTS):])


def cross_validated_errors(journeys: Sequence[Journey], folds: int) -> list[float]:
    """Errors of ihc when each fold is scored by a model fitted on the other folds."""
    errs: list[float] = []
    for k in range(folds):
        train = [j for i, j in enumerate(journeys) if i % folds != k]
        test = [j for i, j in enumerate(journeys) if i % folds == k]
        errs.extend(errors(test, model_method(fit(train))))
    return errs


def format_params(params: ModelParams) -> str:
    """Python source of ``params`` for ``include/ihc_attribution_dev/server/family.py``."""

    def curve(c: Curve) -> str:
        return "Curve((" + ", ".join(f"({x!r}, {y!r})" for x, y in c.points) + ",))"

    lines = [
        "FITTED_PARAMS = ModelParams(",
        f"    initializer_pause={curve(params.initializer_pause)},",
        f"    closer_distance={curve(params.closer_distance)},",
        f"    holder_discount={curve(params.holder_discount)},",
        "    channel_factors={",
    ]
    for name, f in params.channel_factors.items():
        lines.append(f"        {name!r}: ChannelFactors({f.initializer!r}, {f.holder!r}, {f.closer!r}),")
    lines += ["    },", ")"]
    return "\n".join(lines)
