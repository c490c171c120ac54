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
``include/ihc_attribution_dev/server/family.py``. ``--write-synthetic KIND FILE`` writes the sessions of the
reference file answered by a synthetic conversion type (``B`` or ``time-of-day``), to try the
calibration on.

Calibrating needs numpy and scipy (``requirements-dev.txt``); the table of the built-in model
needs nothing beyond the package. The reports are in ``ihc_attribution_dev.server.calibration_report``,
the fit of the built-in constants in ``ihc_attribution_dev.server.reference_fit``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ihc_attribution_dev.server.calibration import (
    TYPE_B,
    last_touch,
    linear,
    load_answers,
    mae,
    model_method,
    synthetic_answers,
    time_of_day_answers,
    write_answers,
)
from ihc_attribution_dev.server.calibration_report import (
    load_reference,
    reference_table,
    run_calibration,
    run_experiments,
)
from ihc_attribution_dev.server.model import FITTED_PARAMS
from ihc_attribution_dev.server.reference_fit import fit

# Still importable from the script, which the tests load as a module.
__all__ = ["DEFAULT_REFERENCE", "FITTED_PARAMS", "fit", "last_touch", "linear", "load_reference", "mae", "main",
           "model_method"]

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ihc_real_responses.jsonl"


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


if __name__ == "__main__":
    sys.exit(main())
