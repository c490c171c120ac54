"""Calibrate the local IHC model on recorded answers, and compare it with real answers.

Three uses:

    # calibrate one conversion type on answers recorded from the real service, write its parameters
    PYTHONPATH=. python scripts/calibrate_ihc_model.py --answers FILE.jsonl --conv-type-id ID --out PARAMS.json

    # the built-in model (type A) against the reference answers, as a markdown table
    PYTHONPATH=. python scripts/calibrate_ihc_model.py [--reference PATH] [--folds 5] [--fit]

    # the calibration's own checks: type A, a synthetic type B, a shape the model cannot express
    PYTHONPATH=. python scripts/calibrate_ihc_model.py --experiments

A recording has the format of ``../shared/reference/ihc_real_responses.jsonl`` (one journey a
line: the sessions sent and the service's answer). Calibrating prints the fitted parameters, the
mean absolute error (MAE) of ``ihc`` per session in and out of sample (K-fold cross-validation,
``--folds``, default 5) next to the linear and last-touch baselines, and a verdict; it refuses a
recording too small to fit. Scores cover journeys of 2 or more sessions: every method gives a
single session ihc 1, as the service does.

In the table mode, ``--folds K`` adds a row for the built-in constants refitted K times on the
other folds, and ``--fit`` prints the constants fitted on the whole file as Python for
``include/ihc_attribution_dev/server/model.py``. ``--write-synthetic KIND FILE`` writes the sessions of the
reference file answered by a synthetic conversion type (``B`` or ``time-of-day``), to try the
calibration on.

Calibrating needs numpy and scipy (``requirements-dev.txt``); the table of the built-in model
needs nothing beyond the package.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from ihc_attribution_dev.server import params as params_file
from ihc_attribution_dev.server.calibration import (
    POOR_FIT_RATIO,
    TYPE_B,
    Journey,
    Method,
    RecordingError,
    calibrate,
    check_size,
    cross_validate,
    errors,
    last_touch,
    linear,
    load_answers,
    mae,
    model_method,
    multi_session,
    replay,
    synthetic_answers,
    time_of_day_answers,
    top_agreement,
    type_model_method,
    write_answers,
)
from ihc_attribution_dev.server.model import (
    FITTED_PARAMS,
    NOMINAL_PARAMS,
    PHASES,
    ChannelFactors,
    Curve,
    ModelParams,
    Touchpoint,
    TypeModel,
)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ihc_real_responses.jsonl"

# Knots of the built-in type A curves (``--fit``; the general calibration has its own, wider ones
# in include/ihc_attribution_dev/server/calibration.py). Initializer: the service gives no restart credit below about 50 h of
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


def load_reference(path: Path) -> list[Journey]:
    """Read a reference file (every conversion type in it); see :func:`load_answers`."""
    return load_answers(path)


def share_over(errs: Sequence[float], threshold: float = OFF_BY) -> float:
    """Share of sessions whose error exceeds ``threshold``."""
    return sum(e > threshold for e in errs) / len(errs)


# ---------------------------------------------------------------------------------------------
# Fitting the built-in type A constants (numpy): log-ratio least squares. This closed-form fit
# knows type A's shape (no restart credit below 50 h); the general calibration of any conversion
# type is ihc_attribution_dev.server.calibration.calibrate. Within a journey, the ratio of two sessions' shares
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
    """Python source of ``params`` for ``include/ihc_attribution_dev/server/model.py``."""

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


def _cells(journeys: Sequence[Journey], predict: Method, phases: bool) -> list[str]:
    cells = [f"{mae(journeys, predict):.4f}", f"{top_agreement(journeys, predict):.0%}"]
    cells += [f"{mae(journeys, predict, c):.4f}" for c in PHASES] if phases else ["-"] * 3
    return cells


def score_table(journeys: Sequence[Journey], rows: Sequence[tuple[str, Method, bool]]) -> str:
    """A markdown table of MAE ihc, top-session agreement and per-phase MAE, one row per method."""
    lines = ["| method | MAE ihc | top session agrees | MAE initializer | MAE holder | MAE closer |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | " + " | ".join(_cells(journeys, predict, phases)) + " |" for name, predict, phases in rows]
    return "\n".join(lines)


def verdict(cv_mae: float, linear_mae: float, last_mae: float) -> tuple[str, str]:
    """("good" or "poor", a sentence) for a cross-validated MAE against the better baseline."""
    best_name, best = min((("linear", linear_mae), ("last touch", last_mae)), key=lambda x: x[1])
    ratio = cv_mae / best if best > 0 else math.inf
    if ratio <= POOR_FIT_RATIO:
        return "good", (f"good fit: the cross-validated MAE {cv_mae:.4f} is {ratio:.0%} of the better "
                        f"baseline's ({best_name} {best:.4f})")
    return "poor", (f"POOR FIT: the cross-validated MAE {cv_mae:.4f} is {ratio:.0%} of the better baseline's "
                    f"({best_name} {best:.4f}); the model family does not capture these answers, and the "
                    "local server calibrated on them will not behave like this conversion type")


def describe(model: TypeModel) -> str:
    """The fitted parameters in a few lines of text."""
    p, w = model.params, model.weights

    def at(curve: Curve, xs: Sequence[float]) -> str:
        return ", ".join(f"{x:g}: {curve(x):.3f}" for x in xs)

    lines = [
        f"  phase weights: initializer {w.initializer:.3f}, holder {w.holder:.3f}, closer {w.closer:.3f}",
        f"  initializer weight after a pause of (h) {at(p.initializer_pause, (2, 8, 24, 48, 72, 120, 168, 336))}",
        f"  closer weight at a distance of (h) {at(p.closer_distance, (0.5, 2, 8, 24, 48, 120, 240))}",
        f"  closer by sessions to the converting one {at(p.closer_rank, (1, 2, 3, 4, 6))}",
        f"  holder discount by initializer + closer share {at(p.holder_discount, (0.5, 1, 1.5, 2))}",
        f"  memory by the longest pause after a session (h) {at(p.memory, (24, 72, 120, 168, 336))}",
        f"  holder of the first session x{p.holder_first:.3f}, of the last x{p.holder_last:.3f}, without "
        f"holder_engagement x{p.holder_unengaged:.3f}; closer without closer_engagement x{p.closer_unengaged:.3f}",
        f"  impression_interaction: initializer x{p.impression.initializer:.3f}, holder x{p.impression.holder:.3f}, "
        f"closer x{p.impression.closer:.3f}",
    ]
    far = sorted(p.channel_factors.items(),
                 key=lambda kv: -max(abs(math.log(max(getattr(kv[1], ph), 1e-9))) for ph in PHASES))[:5]
    if far:
        lines.append("  channel factors furthest from 1 (initializer, holder, closer): " + "; ".join(
            f"{c} {f.initializer:.2f}, {f.holder:.2f}, {f.closer:.2f}" for c, f in far))
    return "\n".join(lines)


def run_calibration(answers: Path, conv_type_id: str, out: Path | None, folds: int) -> int:
    """Calibrate ``conv_type_id`` on ``answers``; print the fit and the scores; write ``out``."""
    try:
        journeys = load_answers(answers, conv_type_id)
        check_size(journeys, folds)
    except RecordingError as exc:
        print(f"error: cannot calibrate on {answers}: {exc}", file=sys.stderr)
        return 2
    multi = multi_session(journeys)
    sessions = sum(len(j.touchpoints) for j in multi)
    print(f"Recording {answers.name}, conv_type_id {conv_type_id}: {len(journeys)} journeys, {len(multi)} with "
          f"2+ sessions ({sessions} sessions scored)\n")

    fitted = calibrate(journeys)
    print(f"Fitted on all {len(multi)} journeys of 2+ sessions ({fitted.iterations} evaluations):")
    print(describe(fitted.model) + "\n")

    held, predictions = cross_validate(journeys, folds)
    cv = replay(predictions, held)
    in_sample = type_model_method(fitted.model)
    print(score_table(multi, [
        ("calibrated model, in-sample (fitted on all journeys)", in_sample, True),
        (f"calibrated model, {folds}-fold cross-validated (held-out journeys)", cv, True),
        ("built-in type A model, no calibration", model_method(FITTED_PARAMS), True),
        ("linear (1/n)", linear, False),
        ("last touch", last_touch, False),
    ]))
    cv_mae, lin, last = mae(held, cv), mae(multi, linear), mae(multi, last_touch)
    quality, sentence = verdict(cv_mae, lin, last)
    print(f"\n{sentence}.")

    if out is not None:
        summary = {
            "recording": answers.name,
            "journeys": len(journeys),
            "multi_session_journeys": len(multi),
            "folds": folds,
            "mae_in_sample": round(mae(multi, in_sample), 5),
            "mae_cross_validated": round(cv_mae, 5),
            "mae_linear": round(lin, 5),
            "mae_last_touch": round(last, 5),
            "verdict": quality,
        }
        model = TypeModel(fitted.model.params, fitted.model.weights, source=out.name, fit=summary)
        params_file.dump(model, conv_type_id, out)
        print(f"Wrote {out}; serve it with: make ihc-server ARGS=\"--api-key KEY --conv-type-id {conv_type_id} "
              f"--model-params {conv_type_id}={out}\"")
    return 0


def half_and_half(journeys: Sequence[Journey]) -> tuple[list[Journey], Method]:
    """Journeys of 2+ sessions, each answered by a model calibrated on the other half of them."""
    held, predictions = cross_validate(journeys, 2)
    return held, replay(predictions, held)


def run_experiments(reference: Path) -> int:
    """The calibration's checks on the reference sessions: type A, synthetic type B, time of day."""
    try:
        real = load_answers(reference)
    except (OSError, RecordingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    experiments = [
        ("type A: the real reference answers", real),
        ("synthetic type B: the reference sessions answered by a deliberately different parameter set",
         synthetic_answers(real, TYPE_B)),
        ("synthetic time of day: credit by the hour of the day, a shape outside the family",
         time_of_day_answers(real)),
    ]
    print(f"Each model is calibrated on one half of the journeys of 2+ sessions of {reference.name} and "
          "answers the other half (2-fold: every journey is answered by the model calibrated on the "
          "half without it).\n")
    for title, journeys in experiments:
        held, cv = half_and_half(journeys)
        print(f"### {title}\n")
        print(score_table(held, [
            ("calibrated model (held-out half)", cv, True),
            ("built-in type A model, no calibration", model_method(FITTED_PARAMS), True),
            ("linear (1/n)", linear, False),
            ("last touch", last_touch, False),
        ]))
        print(f"\n{verdict(mae(held, cv), mae(held, linear), mae(held, last_touch))[1]}.\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Calibrate (``--conv-type-id``), run the checks (``--experiments``) or print the reference table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", "--reference", dest="answers", type=Path, default=None, metavar="FILE",
                        help="recorded answers, JSONL (default: the reference file)")
    parser.add_argument("--conv-type-id", default=None, metavar="ID",
                        help="calibrate this conversion type on the recording's journeys of that type")
    parser.add_argument("--out", type=Path, default=None, metavar="PARAMS.json",
                        help="write the calibrated parameters here (for --model-params of the server)")
    parser.add_argument("--folds", type=int, default=None,
                        help="K-fold cross-validation (calibration: default 5; reference table: off)")
    parser.add_argument("--fit", action="store_true", help="print built-in constants fitted on the whole file")
    parser.add_argument("--experiments", action="store_true",
                        help="calibrate on half of type A, synthetic type B and time-of-day answers, score the rest")
    parser.add_argument("--write-synthetic", nargs=2, metavar=("KIND", "FILE"), default=None,
                        help="write the reference sessions answered by a synthetic type: B or time-of-day")
    args = parser.parse_args(argv)

    answers = args.answers or DEFAULT_REFERENCE
    if not answers.is_file():
        parser.error(f"answers file not found: {answers}")
    if args.folds is not None and args.folds < 2 and (args.conv_type_id or args.folds != 0):
        parser.error("--folds must be 2 or more")
    if args.experiments:
        return run_experiments(answers)
    if args.write_synthetic:
        kind, target = args.write_synthetic
        makers = {"B": lambda js: synthetic_answers(js, TYPE_B), "time-of-day": time_of_day_answers}
        if kind not in makers:
            parser.error(f"--write-synthetic KIND must be one of {', '.join(makers)}")
        write_answers(Path(target), makers[kind](load_answers(answers)), kind)
        print(f"Wrote {target}: the sessions of {answers.name} answered by synthetic type {kind}")
        return 0
    if args.out is not None and args.conv_type_id is None:
        parser.error("--out needs --conv-type-id: parameter files belong to one conversion type")
    if args.conv_type_id is not None:
        return run_calibration(answers, args.conv_type_id, args.out, args.folds or 5)
    return reference_table(answers, args.folds or 0, args.fit)


def reference_table(reference: Path, folds: int, refit: bool) -> int:
    """Print the table of the built-in model against ``reference`` (and, with ``refit``, fitted constants)."""
    journeys = load_reference(reference)
    multi = [j for j in journeys if len(j.touchpoints) > 1]
    sessions = sum(len(j.touchpoints) for j in multi)
    print(f"Reference: {reference.name}: {len(journeys)} journeys, {len(multi)} with 2+ sessions "
          f"({sessions} sessions scored)\n")

    def row(name: str, ihc_errors: list[float], predict: Method | None = None) -> str:
        cells = [f"{math.fsum(ihc_errors) / len(ihc_errors):.4f}", f"{share_over(ihc_errors):.1%}"]
        cells += [f"{mae(multi, predict, c):.4f}" for c in PHASES] if predict else ["-"] * 3
        return f"| {name} | " + " | ".join(cells) + " |"

    shipped, nominal = model_method(FITTED_PARAMS), model_method(NOMINAL_PARAMS)
    lines = [
        f"| method | MAE ihc | sessions off by > {OFF_BY} | MAE initializer | MAE holder | MAE closer |",
        "|---|---:|---:|---:|---:|---:|",
        row("local IHC model (include/ihc_attribution_dev/server/model.py)", errors(multi, shipped), shipped),
    ]
    if folds > 1:
        lines.append(row(f"same model refitted in {folds}-fold cross-validation (held-out folds)",
                         cross_validated_errors(multi, folds)))
    lines += [
        row("same model, nominal curves of the design brief, no fit", errors(multi, nominal), nominal),
        row("linear (1/n)", errors(multi, linear)),
        row("last touch", errors(multi, last_touch)),
    ]
    print("\n".join(lines))

    if refit:
        print("\n# Fitted on the whole reference file:\n")
        print(format_params(fit(journeys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
