"""Calibrating the local IHC model on recorded answers of one conversion type.

A recording is a JSONL file in the format of ``../shared/reference/ihc_real_responses.jsonl``:
one journey a line, with the sessions sent and the service's answer. :func:`calibrate` fits
every parameter of the model family (:class:`~ihc_attribution_dev.server.model.ModelParams` and the
phase weights) to such answers:

1. Phase weights in closed form: every answer row satisfies ihc = wI*I + wH*H + wC*C with
   wI + wH + wC = 1 (holder dropped and the others renormalised where no session qualifies),
   so they come out of a linear least-squares fit on the recorded phase columns.
2. Everything else by bounded non-linear least squares (``scipy.optimize.least_squares``) on the
   errors of the three phase columns and of ihc, session by session, starting from the
   built-in type A parameters. Curves are piecewise linear over fixed knots; channel factors
   are fitted as logarithms with a small ridge towards 1, so that a rare channel stays near
   neutral; a weak smoothness term keeps knots without data near their neighbours.

The model is evaluated here by a vectorised numpy copy of
:func:`~ihc_attribution_dev.server.model.attribute_journey`
(:mod:`~ihc_attribution_dev.server.vectorised`); a test checks that both agree.

Needs numpy and scipy (``requirements-dev.txt``): calibrating is a development step. The server
only reads the resulting JSON (:mod:`ihc_attribution_dev.server.params`). Recordings and their
scores are in :mod:`~ihc_attribution_dev.server.recordings`, synthetic ones in
:mod:`~ihc_attribution_dev.server.synthetic`; their names are importable from here as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ihc_attribution_dev.server.model import FITTED_PARAMS, Curve, ModelParams, PhaseWeights, TypeModel
from ihc_attribution_dev.server.recordings import (
    Journey,
    Method,
    RecordingError,
    errors,
    last_touch,
    linear,
    load_answers,
    mae,
    model_method,
    multi_session,
    replay,
    top_agreement,
    type_model_method,
    write_answers,
)
from ihc_attribution_dev.server.synthetic import TYPE_B, synthetic_answers, time_of_day_answers
from ihc_attribution_dev.server.vectorised import (
    CLOSER_KNOTS,
    HOLDER_KNOTS,
    MEMORY_KNOTS,
    PAUSE_KNOTS,
    RANK_KNOTS,
    Batch,
    Layout,
    phases,
    predict_batch,
)

__all__ = [
    "MIN_MULTI_JOURNEYS",
    "MIN_TRAIN_PER_FOLD",
    "POOR_FIT_RATIO",
    "RIDGE",
    "SMOOTH",
    "TYPE_B",
    "Batch",
    "Calibration",
    "Journey",
    "Layout",
    "Method",
    "RecordingError",
    "calibrate",
    "check_size",
    "cross_validate",
    "errors",
    "fit_weights",
    "folds_of",
    "last_touch",
    "linear",
    "load_answers",
    "mae",
    "model_method",
    "multi_session",
    "predict_batch",
    "replay",
    "synthetic_answers",
    "time_of_day_answers",
    "top_agreement",
    "type_model_method",
    "write_answers",
]

#: Weight of the ridge that pulls log factors towards 0 (factor 1): worth, in the sum of squared
#: errors, a factor of e^0.2 against 0.002 of squared share error (a few sessions a little off).
RIDGE = 0.05
#: Weight of the smoothness term on neighbouring knot values.
SMOOTH = 0.0001
#: Fewest journeys of 2+ sessions a calibration accepts (about 110 parameters to fit).
MIN_MULTI_JOURNEYS = 100
#: Fewest journeys of 2+ sessions per fold in the training part of a cross-validation.
MIN_TRAIN_PER_FOLD = 80
#: A fit is called poor when its cross-validated MAE is more than this share of the best baseline's.
POOR_FIT_RATIO = 0.5


def fit_weights(journeys: Sequence[Journey]) -> PhaseWeights:
    """Phase weights from the recorded phase columns (closed form, least squares)."""
    import numpy as np

    with_holder = [(a["initializer"], a["holder"], a["closer"], a["ihc"])
                   for j in multi_session(journeys) if any(a["holder"] > 0 for a in j.answer) for a in j.answer]
    without = [(a["initializer"], a["closer"], a["ihc"])
               for j in multi_session(journeys) if all(a["holder"] == 0 for a in j.answer) for a in j.answer]
    if with_holder:
        m = np.array(with_holder)
        # ihc - C = wI (I - C) + wH (H - C), with wC = 1 - wI - wH.
        a = np.column_stack([m[:, 0] - m[:, 2], m[:, 1] - m[:, 2]])
        (w_i, w_h), *_ = np.linalg.lstsq(a, m[:, 3] - m[:, 2], rcond=None)
        w_i, w_h = max(float(w_i), 0.0), max(float(w_h), 0.0)
        w_c = max(1.0 - w_i - w_h, 0.0)
    elif without:
        m = np.array(without)
        (t,), *_ = np.linalg.lstsq((m[:, 0] - m[:, 1])[:, None], m[:, 2] - m[:, 1], rcond=None)
        t = min(max(float(t), 0.0), 1.0)
        # No holder phase in the data: its weight is unknown and never used; keep the default.
        w_h = PhaseWeights().holder
        w_i, w_c = t * (1 - w_h), (1 - t) * (1 - w_h)
    else:
        return PhaseWeights()
    if w_i + w_c <= 0:
        w_i = w_c = 0.5
    total = w_i + w_h + w_c
    return PhaseWeights(round(w_i / total, 4), round(w_h / total, 4), round(w_c / total, 4))


@dataclass(frozen=True)
class Calibration:
    """A fitted parameter set and what the fit says about itself."""

    model: TypeModel
    train_journeys: int
    cost: float
    iterations: int


def check_size(journeys: Sequence[Journey], folds: int = 0) -> None:
    """Raise :class:`RecordingError` when ``journeys`` are too few to fit (and cross-validate)."""
    multi = len(multi_session(journeys))
    if multi < MIN_MULTI_JOURNEYS:
        raise RecordingError(
            f"too few journeys to calibrate: {multi} with 2+ sessions, at least {MIN_MULTI_JOURNEYS} needed "
            "(single-session journeys carry no information: every model gives them 1, 0, 1, 1; "
            "the model has about 110 parameters to fit)"
        )
    if folds > 1 and multi * (folds - 1) / folds < MIN_TRAIN_PER_FOLD:
        raise RecordingError(
            f"too few journeys for {folds}-fold cross-validation: {multi} with 2+ sessions leave about "
            f"{multi * (folds - 1) // folds} to train on per fold, at least {MIN_TRAIN_PER_FOLD} needed"
        )


def calibrate(journeys: Sequence[Journey], start: ModelParams = FITTED_PARAMS, max_nfev: int = 60) -> Calibration:
    """Fit the whole model family to recorded answers (see the module docstring)."""
    import numpy as np
    from scipy.optimize import least_squares

    multi = multi_session(journeys)
    if not multi:
        raise RecordingError("no journeys of 2+ sessions to calibrate on")
    weights = fit_weights(multi)
    batch = Batch(multi)
    channels = batch.labels
    layout = Layout(
        channels=channels,
        fit_holder_unengaged=any(t.holder_engagement == 0 for j in multi for t in j.touchpoints),
        fit_closer_unengaged=any(t.closer_engagement == 0 for j in multi for t in j.touchpoints[:-1]),
        fit_impression=any(t.impression_interaction == 1 for j in multi for t in j.touchpoints),
    )
    s = layout.slices()
    lo, hi = layout.bounds()
    x0 = np.clip(layout.pack(start), lo, hi)
    real = np.concatenate([batch.I, batch.H, batch.C, batch.ihc])
    smooth_groups = [("pause", None), ("closer", 1.0), ("rank", 1.0), ("holder", 1.0), ("memory", 1.0)]

    # The parts of the model that do not depend on the parameters, computed once.
    pause_k, closer_k, rank_k, holder_k, memory_k = (np.array(k) for k in (
        PAUSE_KNOTS, CLOSER_KNOTS, RANK_KNOTS, HOLDER_KNOTS, MEMORY_KNOTS))
    one = np.ones(1)

    def residuals(x):
        # The vectorised model straight from the vector (what predict_batch does from a ModelParams).
        memory = np.interp(batch.longest, memory_k, np.concatenate([one, x[s["memory"]]]))
        logs = x[s["factors"]].reshape(-1, 3)
        imp = np.exp(x[s["imp"]]) if layout.fit_impression else one.repeat(3)
        common = np.exp(logs)[batch.ch] * memory[:, None] * np.where(batch.imp[:, None], imp[None, :], 1.0)
        closeness = np.interp(batch.to_conv, closer_k, np.concatenate([one, x[s["closer"]]])) \
            * np.interp(batch.rank, rank_k, np.concatenate([one, x[s["rank"]]]))
        discount = Curve(tuple(zip(HOLDER_KNOTS, np.concatenate([one, x[s["holder"]]]).tolist())))
        ends = x[s["ends"]]
        predicted = np.concatenate(phases(
            batch, common, np.interp(batch.gap, pause_k, x[s["pause"]]), closeness, discount, ends[0], ends[1],
            x[s["hu"]][0] if layout.fit_holder_unengaged else 0.0,
            x[s["cu"]][0] if layout.fit_closer_unengaged else 0.0, memory, weights, batch.jid, batch.n_journeys))
        penalties = [math.sqrt(RIDGE) * x[s["factors"]], math.sqrt(RIDGE) * x[s["imp"]]]
        for name, pinned in smooth_groups:
            values = x[s[name]] if pinned is None else np.concatenate([[pinned], x[s[name]]])
            penalties.append(math.sqrt(SMOOTH) * np.diff(values))
        return np.concatenate([predicted - real, *penalties])

    def solve(x, upper=hi):
        return least_squares(residuals, x, bounds=(lo, upper), method="trf", x_scale="jac", max_nfev=max_nfev,
                             tr_solver="lsmr", diff_step=1e-4)

    result = solve(x0)
    nfev = result.nfev
    # A multiplier of exactly 0 switches a phase off for some sessions (a journey whose only holder
    # candidate is the first session then has no holder phase at all): a jump that the optimiser,
    # moving smoothly, does not take. Try 0 for the multipliers that ended near it.
    # Those set to 0 stay there (an upper bound of almost 0) while the rest is refitted.
    x, cost, upper = result.x, result.cost, hi.copy()
    near_zero = [i for name in ("ends", "hu", "cu") for i in range(s[name].start, s[name].stop) if 0 < x[i] < 0.05]
    # Jointly: a journey may need two of them at 0 at once (no holder for the first session, none
    # for unengaged ones). At most 4 candidates, so at most 15 trials.
    best = None
    for mask in range(1, 2 ** len(near_zero)):
        trial = x.copy()
        chosen = [i for bit, i in enumerate(near_zero) if mask >> bit & 1]
        trial[chosen] = 0.0
        trial_cost = 0.5 * float(np.sum(residuals(trial) ** 2))
        if trial_cost < cost and (best is None or trial_cost < best[0]):
            best = (trial_cost, trial, chosen)
    if best is not None:
        cost, x, chosen = best
        upper[chosen] = 1e-12
    if (upper < hi).any():
        result = solve(x, upper)
        nfev += result.nfev
    params = layout.unpack(result.x, digits=4)
    model = TypeModel(params, weights, source="calibration")
    return Calibration(model, len(multi), float(result.cost), int(nfev))


def folds_of(journeys: Sequence[Journey], folds: int) -> list[tuple[list[Journey], list[Journey]]]:
    """(train, test) pairs of a K-fold split by position in the file (journey i goes to fold i % K)."""
    return [([j for i, j in enumerate(journeys) if i % folds != k], [j for i, j in enumerate(journeys) if i % folds == k])
            for k in range(folds)]


def cross_validate(journeys: Sequence[Journey], folds: int, **kwargs) -> tuple[list[Journey], list[dict]]:
    """Every journey of 2+ sessions with its answer from a model calibrated on the other folds.

    Returns the held-out journeys and, aligned with them, the predictions (answer dicts).
    """
    multi = multi_session(journeys)
    held, predictions = [], []
    for train, test in folds_of(multi, folds):
        predict = type_model_method(calibrate(train, **kwargs).model)
        for j in test:
            held.append(j)
            predictions.append(predict(j))
    return held, predictions
