"""Calibrate the local IHC model on recorded answers, and compare it with real answers.

Three uses:

    # calibrate one conversion type on answers recorded from the real service, write its parameters
    PYTHONPATH=. python scripts/calibrate_ihc_model.py --answers FILE.jsonl --conv-type-id ID --out PARAMS.json

    # the built-in model (type A) against the reference answers, as a markdown table
    PYTHONPATH=. python scripts/calibrate_ihc_model.py [--reference PATH] [--folds 5] [--fit]

    # the calibration's own checks: type A, a synthetic type B, a shape the model cannot express
    PYTHONPATH=. python scripts/calibrate_ihc_model.py --experiments

A recording has the format of ``../shared/reference/ihc_real_responses.jsonl``. Scores cover
journeys of 2 or more sessions (every method gives a single session ihc 1, as the service does).
Options and outputs: docs/ihc_server.md, "Calibration". Calibrating needs numpy and scipy.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ihc_attribution_dev.server import calibration as cal
from ihc_attribution_dev.server import params as params_file
from ihc_attribution_dev.server.model import FITTED_PARAMS, NOMINAL_PARAMS, PHASES, Curve, TypeModel

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ihc_real_responses.jsonl"


# The reference table counts sessions whose ihc is off by more than this.
OFF_BY = 0.01
# The rows every calibration table compares with: (name, method, with phases).
BASELINES = [
    ("built-in type A model, no calibration", cal.model_method(FITTED_PARAMS), True),
    ("linear (1/n)", cal.linear, False),
    ("last touch", cal.last_touch, False),
]


def score_table(journeys: Sequence[cal.Journey], rows: Sequence[tuple[str, cal.Method, bool]], off_by: bool = False) -> str:
    """A markdown table, one row per (name, method, with phases): MAE of ihc, how often the top-credited
    session agrees (``off_by``: the share of sessions off by more than ``OFF_BY``) and MAE per phase."""
    second = f"sessions off by > {OFF_BY}" if off_by else "top session agrees"
    lines = [f"| method | MAE ihc | {second} | MAE initializer | MAE holder | MAE closer |", "|---|---:|---:|---:|---:|---:|"]
    for name, predict, phases in rows:
        errors = cal.errors(journeys, predict)
        share = sum(e > OFF_BY for e in errors) / len(errors) if off_by else cal.top_agreement(journeys, predict)
        cells = [f"{math.fsum(errors) / len(errors):.4f}", f"{share:.1%}" if off_by else f"{share:.0%}"]
        cells += [f"{cal.mae(journeys, predict, c):.4f}" for c in PHASES] if phases else ["-"] * 3
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(cv_mae: float, linear_mae: float, last_mae: float) -> tuple[str, str]:
    """("good" or "poor", a sentence) for a cross-validated MAE against the better baseline."""
    best_name, best = min((("linear", linear_mae), ("last touch", last_mae)), key=lambda x: x[1])
    ratio = cv_mae / best if best > 0 else math.inf
    if ratio <= cal.POOR_FIT_RATIO:
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
        journeys = cal.load_answers(answers, conv_type_id)
        cal.check_size(journeys, folds)
    except cal.RecordingError as exc:
        print(f"error: cannot calibrate on {answers}: {exc}", file=sys.stderr)
        return 2
    multi = cal.multi_session(journeys)
    sessions = sum(len(j.touchpoints) for j in multi)
    print(f"Recording {answers.name}, conv_type_id {conv_type_id}: {len(journeys)} journeys, {len(multi)} with "
          f"2+ sessions ({sessions} sessions scored)\n")

    fitted = cal.calibrate(journeys)
    print(f"Fitted on all {len(multi)} journeys of 2+ sessions ({fitted.fit['evaluations']} evaluations):")
    print(describe(fitted) + "\n")

    held, cv = cal.cross_validate(journeys, folds)
    in_sample = cal.model_method(fitted.params, fitted.weights)
    print(score_table(multi, [
        ("calibrated model, in-sample (fitted on all journeys)", in_sample, True),
        (f"calibrated model, {folds}-fold cross-validated (held-out journeys)", cv, True),
        *BASELINES,
    ]))
    cv_mae, lin, last = cal.mae(held, cv), cal.mae(multi, cal.linear), cal.mae(multi, cal.last_touch)
    quality, sentence = verdict(cv_mae, lin, last)
    print(f"\n{sentence}.")

    if out is not None:
        summary = {
            "recording": answers.name,
            "journeys": len(journeys),
            "multi_session_journeys": len(multi),
            "folds": folds,
            "mae_in_sample": round(cal.mae(multi, in_sample), 5),
            "mae_cross_validated": round(cv_mae, 5),
            "mae_linear": round(lin, 5),
            "mae_last_touch": round(last, 5),
            "verdict": quality,
        }
        params_file.dump(replace(fitted, source=out.name, fit=summary), conv_type_id, out)
        print(f"Wrote {out}; serve it with: make ihc-server ARGS=\"--api-key KEY --conv-type-id {conv_type_id} "
              f"--model-params {conv_type_id}={out}\"")
    return 0


def run_experiments(reference: Path) -> int:
    """The calibration's checks on the reference sessions: type A, synthetic type B, time of day."""
    try:
        real = cal.load_answers(reference)
    except (OSError, cal.RecordingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    experiments = [
        ("type A: the real reference answers", real),
        ("synthetic type B: the reference sessions answered by a deliberately different parameter set",
         cal.synthetic_answers(real, cal.TYPE_B)),
        ("synthetic time of day: credit by the hour of the day, a shape outside the family",
         cal.time_of_day_answers(real)),
    ]
    print(f"Each model is calibrated on one half of the journeys of 2+ sessions of {reference.name} and "
          "answers the other half (2-fold: every journey is answered by the model calibrated on the "
          "half without it).\n")
    for title, journeys in experiments:
        held, cv = cal.cross_validate(journeys, 2)
        print(f"### {title}\n")
        print(score_table(held, [("calibrated model (held-out half)", cv, True), *BASELINES]))
        print(f"\n{verdict(cal.mae(held, cv), cal.mae(held, cal.linear), cal.mae(held, cal.last_touch))[1]}.\n")
    return 0


def reference_table(reference: Path, folds: int, refit: bool) -> int:
    """Print the table of the built-in model against ``reference`` (and, with ``refit``, fitted constants)."""
    journeys = cal.load_answers(reference)
    multi = cal.multi_session(journeys)
    sessions = sum(len(j.touchpoints) for j in multi)
    print(f"Reference: {reference.name}: {len(journeys)} journeys, {len(multi)} with 2+ sessions "
          f"({sessions} sessions scored)\n")
    rows = [("local IHC model (include/ihc_attribution_dev/server/model.py)", cal.model_method(FITTED_PARAMS), True)]
    if folds > 1:
        rows.append((f"model calibrated in {folds}-fold cross-validation (held-out folds)",
                     cal.cross_validate(multi, folds)[1], False))
    rows += [
        ("same model, nominal curves of the design brief, no fit", cal.model_method(NOMINAL_PARAMS), True),
        ("linear (1/n)", cal.linear, False),
        ("last touch", cal.last_touch, False),
    ]
    print(score_table(multi, rows, off_by=True))
    if refit:
        print("\nCalibrated on the whole reference file:")
        print(describe(cal.calibrate(journeys)))
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
    parser.add_argument("--fit", action="store_true", help="also print the parameters calibrated on the whole file")
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
        makers = {"B": lambda js: cal.synthetic_answers(js, cal.TYPE_B), "time-of-day": cal.time_of_day_answers}
        if kind not in makers:
            parser.error(f"--write-synthetic KIND must be one of {', '.join(makers)}")
        cal.write_answers(Path(target), makers[kind](cal.load_answers(answers)), kind)
        print(f"Wrote {target}: the sessions of {answers.name} answered by synthetic type {kind}")
        return 0
    if args.out is not None and args.conv_type_id is None:
        parser.error("--out needs --conv-type-id: parameter files belong to one conversion type")
    if args.conv_type_id is not None:
        return run_calibration(answers, args.conv_type_id, args.out, args.folds or 5)
    return reference_table(answers, args.folds or 0, args.fit)


if __name__ == "__main__":
    sys.exit(main())
