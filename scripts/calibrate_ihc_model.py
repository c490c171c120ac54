"""Compare the local IHC model with real answers of the production IHC service.

Reads the reference file (one journey per line: the sessions sent and the service's answer) and
prints a markdown table: the mean absolute error (MAE) of ``ihc`` per session over the journeys
of 2 or more sessions, for the model of the local server and for simple baselines. Single-session
journeys are left out: every method gives them ihc 1, as the service does.

    PYTHONPATH=. python scripts/calibrate_ihc_model.py [--reference PATH] [--folds 5] [--fit]

``--folds K`` adds a row for the model refitted K times on the other folds and scored on the
held-out one (an out-of-sample check of the fitted constants). ``--fit`` fits curves and channel
factors on the whole file and prints them as Python to paste into ``include/ihc_server/model.py``.
Fitting needs numpy (installed with pandas); scoring needs nothing beyond the package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from include.ihc_server.model import (
    FITTED_PARAMS,
    NOMINAL_PARAMS,
    PHASES,
    ChannelFactors,
    Curve,
    ModelParams,
    PhaseWeights,
    Touchpoint,
    attribute_journey,
    parse_timestamp,
    round_credits,
)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ihc_real_responses.jsonl"

# Knots of the fitted curves. Initializer: the service gives no restart credit below about 50 h of
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
# The table also counts sessions whose ihc is off by more than this.
OFF_BY = 0.01


@dataclass(frozen=True)
class Journey:
    """One reference journey: what was sent and what the service answered, in chronological order."""

    conversion_id: str
    touchpoints: list[Touchpoint]
    answer: list[dict]  # initializer, holder, closer, ihc of each touchpoint


def load_reference(path: Path) -> list[Journey]:
    """Read the reference file; the last session is flagged as the converting one (as the pipeline does)."""
    journeys = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            item = json.loads(line)
            sessions = sorted(item["sessions"], key=lambda s: (s["timestamp"], s["session_id"]))
            answer = {r["session_id"]: r for r in item["result"]}
            touchpoints = [
                Touchpoint(
                    session_id=s["session_id"],
                    timestamp=parse_timestamp(s["timestamp"]),
                    channel_label=s["channel_label"],
                    holder_engagement=s["holder_engagement"],
                    closer_engagement=s["closer_engagement"],
                    conversion=int(i == len(sessions) - 1),
                    impression_interaction=s["impression_interaction"],
                )
                for i, s in enumerate(sessions)
            ]
            journeys.append(Journey(item["conversion_id"], touchpoints, [answer[s["session_id"]] for s in sessions]))
    return journeys


# A method maps a journey to its predicted answer, session by session in chronological order:
# the ihc values (baselines) or dicts with every column (the model).
Method = Callable[[Journey], Sequence]


def model_method(params: ModelParams, weights: PhaseWeights = PhaseWeights()) -> Method:
    """The local server's answer for a journey (rounded as the server rounds), as dicts."""

    def predict(journey: Journey) -> list[dict]:
        credits = round_credits(attribute_journey(journey.touchpoints, weights, params))
        return [vars(c) for c in credits]

    return predict


def linear(journey: Journey) -> list[float]:
    """Linear baseline: every session 1/n."""
    n = len(journey.touchpoints)
    return [1.0 / n] * n


def last_touch(journey: Journey) -> list[float]:
    """Last-touch baseline: all credit to the last session."""
    n = len(journey.touchpoints)
    return [0.0] * (n - 1) + [1.0]


def errors(journeys: Sequence[Journey], predict: Method, column: str = "ihc") -> list[float]:
    """Absolute error of one column per session; ``predict`` returns floats or answer dicts."""
    out = []
    for j in journeys:
        for p, real in zip(predict(j), j.answer, strict=True):
            value = p[column] if isinstance(p, dict) else p
            out.append(abs(value - real[column]))
    return out


def mae(journeys: Sequence[Journey], predict: Method, column: str = "ihc") -> float:
    """Mean absolute error of one column per session."""
    errs = errors(journeys, predict, column)
    return math.fsum(errs) / len(errs)


def share_over(errs: Sequence[float], threshold: float = OFF_BY) -> float:
    """Share of sessions whose error exceeds ``threshold``."""
    return sum(e > threshold for e in errs) / len(errs)


# ---------------------------------------------------------------------------------------------
# Fitting (numpy): log-ratio least squares. Within a journey, the ratio of two sessions' shares
# of a phase equals the ratio of their raw weights, so the curves and channel factors can be
# fitted without knowing the normaliser.


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


def fit(journeys: Sequence[Journey]) -> ModelParams:
    """Fit the three curves and the per-channel factors to the reference answers."""
    import numpy as np

    multi = [j for j in journeys if len(j.touchpoints) > 1]
    channels = sorted({t.channel_label for j in multi for t in j.touchpoints})
    index = {c: i for i, c in enumerate(channels)}
    nc = len(channels)

    def channel_diff(a: str, b: str):
        row = np.zeros(nc)
        row[index[a]] += 1.0
        row[index[b]] -= 1.0
        return row

    # Closer: log(C_i / C_last) = log g(d_i) + log f(c_i) - log f(c_last), with g(0) = 1.
    rows, targets = [], []
    for j in multi:
        last, c_last = j.touchpoints[-1], j.answer[-1]["closer"]
        for t, real in zip(j.touchpoints[:-1], j.answer[:-1]):
            if t.closer_engagement == 1 and real["closer"] >= MIN_SHARE and c_last >= MIN_SHARE:
                rows.append(np.concatenate([
                    _hat(_hours(t, last), CLOSER_KNOTS), channel_diff(t.channel_label, last.channel_label),
                ]))
                targets.append(math.log(real["closer"] / c_last))
    sol = _solve(rows, targets, nc, fixed_first=True)
    closer_curve = np.exp(sol[: len(CLOSER_KNOTS)])
    closer_factor = np.exp(sol[len(CLOSER_KNOTS):])

    # Initializer: I_i / I_0 = g(pause_i) * f(c_i) / f(c_0). Alternate: the curve by linear least
    # squares on the ratios (small values matter), the factors by log ratios.
    init_factor = np.ones(nc)
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
                rows.append(channel_diff(c, c0))
                targets.append(math.log(ratio / g))
        init_factor = np.exp(_solve(rows, targets, nc, fixed_first=False))
    init_curve = curve

    # Holder: log(H_i / H_j) = log D(s_i) - log D(s_j) + log f(c_i) - log f(c_j), where s is the
    # session's initializer + closer share in the answer and D(0) = 1.
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
                    channel_diff(j.touchpoints[k].channel_label, j.touchpoints[ref].channel_label),
                ]))
                targets.append(math.log(h / h_ref))
    sol = _solve(rows, targets, nc, fixed_first=True)
    holder_curve = np.exp(sol[: len(HOLDER_KNOTS)])
    holder_factor = np.exp(sol[len(HOLDER_KNOTS):])

    def curve_of(knots, values, tail=()):
        return Curve(tuple((float(x), round(float(y), 4)) for x, y in zip(knots, values)) + tuple(tail))

    return ModelParams(
        initializer_pause=curve_of(INITIALIZER_KNOTS, init_curve, ((INITIALIZER_FULL_AT, 1.0),)),
        closer_distance=curve_of(CLOSER_KNOTS, closer_curve),
        holder_discount=curve_of(HOLDER_KNOTS, holder_curve),
        channel_factors={
            c: ChannelFactors(
                round(float(init_factor[i]), 3), round(float(holder_factor[i]), 3), round(float(closer_factor[i]), 3)
            )
            for i, c in enumerate(channels)
        },
    )


def cross_validated_errors(journeys: Sequence[Journey], folds: int) -> list[float]:
    """Errors of ihc when each fold is scored by a model fitted on the other folds."""
    errs: list[float] = []
    for k in range(folds):
        train = [j for i, j in enumerate(journeys) if i % folds != k]
        test = [j for i, j in enumerate(journeys) if i % folds == k]
        errs.extend(errors(test, model_method(fit(train))))
    return errs


def format_params(params: ModelParams) -> str:
    """Python source of ``params`` for ``include/ihc_server/model.py``."""

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


def main(argv: Sequence[str] | None = None) -> int:
    """Print the calibration table (and, with ``--fit``, freshly fitted constants)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="reference JSONL file")
    parser.add_argument("--folds", type=int, default=0, help="add a K-fold cross-validated row (needs numpy)")
    parser.add_argument("--fit", action="store_true", help="print constants fitted on the whole file (needs numpy)")
    args = parser.parse_args(argv)

    if not args.reference.is_file():
        parser.error(f"reference file not found: {args.reference}")
    journeys = load_reference(args.reference)
    multi = [j for j in journeys if len(j.touchpoints) > 1]
    sessions = sum(len(j.touchpoints) for j in multi)
    print(f"Reference: {args.reference.name}: {len(journeys)} journeys, {len(multi)} with 2+ sessions "
          f"({sessions} sessions scored)\n")

    def row(name: str, ihc_errors: list[float], predict: Method | None = None) -> str:
        cells = [f"{math.fsum(ihc_errors) / len(ihc_errors):.4f}", f"{share_over(ihc_errors):.1%}"]
        cells += [f"{mae(multi, predict, c):.4f}" for c in PHASES] if predict else ["-"] * 3
        return f"| {name} | " + " | ".join(cells) + " |"

    shipped, nominal = model_method(FITTED_PARAMS), model_method(NOMINAL_PARAMS)
    lines = [
        f"| method | MAE ihc | sessions off by > {OFF_BY} | MAE initializer | MAE holder | MAE closer |",
        "|---|---:|---:|---:|---:|---:|",
        row("local IHC model (include/ihc_server/model.py)", errors(multi, shipped), shipped),
    ]
    if args.folds > 1:
        lines.append(row(f"same model refitted in {args.folds}-fold cross-validation (held-out folds)",
                         cross_validated_errors(multi, args.folds)))
    lines += [
        row("same model, nominal curves of the design brief, no fit", errors(multi, nominal), nominal),
        row("linear (1/n)", errors(multi, linear)),
        row("last touch", errors(multi, last_touch)),
    ]
    print("\n".join(lines))

    if args.fit:
        print("\n# Fitted on the whole reference file:\n")
        print(format_params(fit(journeys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
