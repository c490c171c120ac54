"""Recorded answers of the IHC service, and calibrating the local IHC model on those of one conversion type.

A recording is a JSONL file in the format of ``../shared/reference/ihc_real_responses.jsonl``: one
journey a line, the sessions sent and the service's answer. :func:`calibrate` fits the phase weights
in closed form, then every other parameter by bounded least squares on the model evaluated over all
journeys at once (docs/ihc_server.md, "How it fits").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from ihc_attribution_dev.server.contract import parse_timestamp
from ihc_attribution_dev.server.model import (
    FITTED_PARAMS,
    PHASES,
    Batch,
    ChannelFactors,
    Curve,
    ModelParams,
    PhaseWeights,
    Touchpoint,
    TypeModel,
    attribute_journey,
    largest_remainder,
    predict_batch,
    round_credits,
)
from ihc_attribution_dev.server.vectorised import PINNED_CURVES, Layout


#: The columns of an answer row.
COLUMNS = (*PHASES, "ihc")


class RecordingError(ValueError):
    """A recording cannot be used: the message says which line and why, or why it is too small."""


@dataclass(frozen=True)
class Journey:
    """One recorded journey: what was sent and what the service answered, in chronological order."""

    conversion_id: str
    touchpoints: list[Touchpoint]
    answer: list[dict]  # initializer, holder, closer, ihc of each touchpoint
    conv_type: str | None = None


def load_answers(path: Path, conv_type_id: str | None = None) -> list[Journey]:
    """Read a recording; the last session is flagged as the converting one (as the pipeline does).

    With ``conv_type_id``, lines with another ``conv_type`` are left out (lines without one are
    kept). Raises :class:`RecordingError` for a malformed line or when no journey is left.
    """
    journeys: dict[str, Journey] = {}  # by conversion_id
    seen_types: set[str] = set()
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{Path(path).name} line {number}"
            try:
                item = json.loads(line)
                journey = _journey(item)
            except (ValueError, KeyError, TypeError) as exc:
                detail = f"missing {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
                raise RecordingError(f"{where}: {detail}") from None
            if journey.conv_type is not None:
                seen_types.add(journey.conv_type)
                if conv_type_id is not None and journey.conv_type != conv_type_id:
                    continue
            if journey.conversion_id in journeys:
                raise RecordingError(f"{where}: conversion_id {journey.conversion_id!r} is recorded twice")
            journeys[journey.conversion_id] = journey
    if not journeys:
        held = f" (it holds conv_type {', '.join(sorted(seen_types))})" if seen_types else ""
        wanted = f" of conv_type {conv_type_id!r}" if conv_type_id is not None else ""
        raise RecordingError(f"{Path(path).name}: no journeys{wanted}{held}")
    return list(journeys.values())


def _journey(item: dict) -> Journey:
    sessions = sorted(item["sessions"], key=lambda s: (s["timestamp"], s["session_id"]))
    if not sessions:
        raise ValueError("a journey needs at least one session")
    answer = {r["session_id"]: r for r in item["result"]}
    ids = [s["session_id"] for s in sessions]
    if len(set(ids)) != len(ids) or set(answer) != set(ids):
        raise ValueError("'result' must have exactly one row per session of 'sessions'")
    touchpoints = []
    for i, s in enumerate(sessions):
        flags = [s["holder_engagement"], s["closer_engagement"], s.get("impression_interaction", 0)]
        if any(f not in (0, 1) or isinstance(f, bool) for f in flags):
            raise ValueError(f"session {s['session_id']!r}: engagement flags must be 0 or 1")
        touchpoints.append(Touchpoint(s["session_id"], parse_timestamp(s["timestamp"]), s["channel_label"],
                                      flags[0], flags[1], int(i == len(sessions) - 1), flags[2]))
    rows = [answer[sid] for sid in ids]
    for column in COLUMNS:
        values = [r[column] for r in rows]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            raise ValueError(f"'result' column {column} must hold numbers")
        total = math.fsum(values)
        if abs(total - 1) > 0.002 and not (column == "holder" and abs(total) < 0.002):
            raise ValueError(f"'result' column {column} sums to {total:.4f}, not 1 (a journey split over requests?)")
    conv_type = item.get("conv_type")
    return Journey(str(item["conversion_id"]), touchpoints, rows, None if conv_type is None else str(conv_type))


def write_answers(path: Path, journeys: Sequence[Journey], conv_type: str) -> None:
    """Write journeys in the recording format (``sessions`` and ``result`` per line)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for j in journeys:
            sessions = [{
                "session_id": t.session_id,
                "timestamp": t.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
                "channel_label": t.channel_label,
                "holder_engagement": t.holder_engagement,
                "closer_engagement": t.closer_engagement,
                "impression_interaction": t.impression_interaction,
            } for t in j.touchpoints]
            result = [{"session_id": t.session_id, **{k: a[k] for k in COLUMNS}}
                      for t, a in zip(j.touchpoints, j.answer)]
            fh.write(json.dumps({"conv_type": conv_type, "conversion_id": j.conversion_id,
                                 "sessions": sessions, "result": result}) + "\n")


# A journey's predicted answer rows in chronological order: dicts with "ihc" (and the phases, for models).
Method = Callable[[Journey], Sequence[dict]]


def model_method(params: ModelParams, weights: PhaseWeights = PhaseWeights()) -> Method:
    """The local server's answer for a journey (rounded as the server rounds), computed once per journey:
    a score table asks for it once per column."""

    @cache
    def answer(touchpoints: tuple[Touchpoint, ...]) -> list[dict]:
        return [vars(c) for c in round_credits(attribute_journey(touchpoints, weights, params))]

    return lambda journey: answer(tuple(journey.touchpoints))


def linear(journey: Journey) -> list[dict]:
    """Linear baseline: every session 1/n."""
    n = len(journey.touchpoints)
    return [{"ihc": 1.0 / n}] * n


def last_touch(journey: Journey) -> list[dict]:
    """Last-touch baseline: all credit to the last session."""
    return [{"ihc": float(i == len(journey.touchpoints) - 1)} for i in range(len(journey.touchpoints))]


def errors(journeys: Sequence[Journey], predict: Method, column: str = "ihc") -> list[float]:
    """Absolute error of one column per session."""
    return [abs(p[column] - real[column]) for j in journeys for p, real in zip(predict(j), j.answer, strict=True)]


def mae(journeys: Sequence[Journey], predict: Method, column: str = "ihc") -> float:
    """Mean absolute error of one column per session."""
    errs = errors(journeys, predict, column)
    return math.fsum(errs) / len(errs)


def top_agreement(journeys: Sequence[Journey], predict: Method) -> float:
    """Share of journeys whose top-credited session (by ihc) is one the real answer credits most."""
    agree = 0
    for j in journeys:
        predicted = [p["ihc"] for p in predict(j)]
        real = [a["ihc"] for a in j.answer]
        top = max(range(len(predicted)), key=lambda i: (predicted[i], -i))
        agree += real[top] >= max(real) - 1e-9
    return agree / len(journeys)


def multi_session(journeys: Sequence[Journey]) -> list[Journey]:
    """The journeys of 2 or more sessions (single sessions are (1, 0, 1, 1) for every method)."""
    return [j for j in journeys if len(j.touchpoints) > 1]


#: A deliberately different conversion type: more closer weight, restart credit after a few hours,
#: closer credit that falls fast with hours and with sessions, no holder credit for the first
#: session, sessions forgotten behind pauses of more than 3 days, channel factors of its own.
TYPE_B = TypeModel(
    params=ModelParams(
        initializer_pause=Curve(((2.0, 0.0), (8.0, 0.3), (24.0, 0.8), (48.0, 1.0), (168.0, 1.4))),
        closer_distance=Curve(((0.0, 1.0), (1.0, 0.45), (4.0, 0.25), (24.0, 0.1), (96.0, 0.02))),
        holder_discount=Curve(((0.0, 1.0), (1.0, 0.6), (2.0, 0.4))),
        closer_rank=Curve(((0.0, 1.0), (1.0, 0.5), (2.0, 0.3), (4.0, 0.15))),
        memory=Curve(((0.0, 1.0), (72.0, 1.0), (120.0, 0.3), (240.0, 0.05))),
        holder_first=0.0,
        holder_last=0.6,
        closer_unengaged=0.2,
        channel_factors={
            "Direct Traffic": ChannelFactors(0.6, 1.0, 1.5),
            "Paid Search Brand": ChannelFactors(1.4, 1.1, 1.2),
            "Organic Traffic": ChannelFactors(1.2, 1.3, 0.8),
            "FB & IG Ads": ChannelFactors(1.5, 0.7, 0.7),
            "Newsletter & Email": ChannelFactors(0.8, 1.4, 1.3),
        },
    ),
    weights=PhaseWeights(0.25, 0.25, 0.5),
    source="synthetic type B",
)


def synthetic_answers(journeys: Sequence[Journey], model: TypeModel) -> list[Journey]:
    """The same sessions answered by ``model`` as the local server would answer them (rounded)."""
    predict = model_method(model.params, model.weights)
    return [replace(j, answer=[{k: c[k] for k in COLUMNS} for c in predict(j)]) for j in journeys]


def time_of_day_answers(journeys: Sequence[Journey]) -> list[Journey]:
    """Answers of a shape outside the family: every phase credits sessions by their hour of the day.

    A session's weight is exp(2.5 cos(2 pi (hour - 21) / 24)): evening sessions take most of every
    phase, whatever their gaps, positions, flags or channels. Nothing the family looks at sees
    the hour, so a calibration must say that it fits badly.
    """
    out = []
    for j in journeys:
        raw = [math.exp(2.5 * math.cos(2 * math.pi * (t.timestamp.hour + t.timestamp.minute / 60 - 21) / 24))
               for t in j.touchpoints]
        shares = [u / 10_000 for u in largest_remainder(raw)]
        out.append(replace(j, answer=[{"initializer": s, "holder": s if len(raw) > 1 else 0.0, "closer": s, "ihc": s}
                                      for s in shares]))
    return out


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


def calibrate(journeys: Sequence[Journey], start: ModelParams = FITTED_PARAMS, max_nfev: int = 60) -> TypeModel:
    """Fit the whole model family to recorded answers (see the module docstring); ``fit`` holds the evaluations."""
    multi = multi_session(journeys)
    if not multi:
        raise RecordingError("no journeys of 2+ sessions to calibrate on")
    weights = fit_weights(multi)
    batch = Batch([j.touchpoints for j in multi])
    layout = Layout(
        channels=batch.labels,
        fit_holder_unengaged=any(t.holder_engagement == 0 for j in multi for t in j.touchpoints),
        fit_closer_unengaged=any(t.closer_engagement == 0 for j in multi for t in j.touchpoints[:-1]),
        fit_impression=any(t.impression_interaction == 1 for j in multi for t in j.touchpoints),
    )
    s = layout.slices
    lo, hi = layout.bounds()
    # The four columns one after the other, as predicted.
    real = np.array([[a[column] for j in multi for a in j.answer] for column in COLUMNS]).ravel()
    smooth_groups = [("pause", None), *((name, 1.0) for name, _, _ in PINNED_CURVES)]

    def residuals(x):
        predicted = np.concatenate(predict_batch(batch, layout.unpack(x), weights))
        penalties = [math.sqrt(RIDGE) * x[s["factors"]], math.sqrt(RIDGE) * x[s["imp"]]]
        for name, pinned in smooth_groups:
            values = x[s[name]] if pinned is None else np.concatenate([[pinned], x[s[name]]])
            penalties.append(math.sqrt(SMOOTH) * np.diff(values))
        return np.concatenate([predicted - real, *penalties])

    def solve(x, upper=hi):
        return least_squares(residuals, x, bounds=(lo, upper), method="trf", x_scale="jac", max_nfev=max_nfev,
                             tr_solver="lsmr", diff_step=1e-4)

    result = solve(np.clip(layout.pack(start), lo, hi))
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
    return TypeModel(layout.unpack(result.x, digits=4), weights, source="calibration", fit={"evaluations": int(nfev)})


def folds_of(journeys: Sequence[Journey], folds: int) -> list[tuple[list[Journey], list[Journey]]]:
    """(train, test) pairs of a K-fold split by position in the file (journey i goes to fold i % K)."""
    return [([j for i, j in enumerate(journeys) if i % folds != k], [j for i, j in enumerate(journeys) if i % folds == k])
            for k in range(folds)]


def cross_validate(journeys: Sequence[Journey], folds: int, **kwargs) -> tuple[list[Journey], Method]:
    """Every journey of 2+ sessions, and a method answering each with a model calibrated on the other folds.

    Answers are looked up by conversion id, unique within a recording (:func:`load_answers`).
    """
    held, answers = [], {}
    for train, test in folds_of(multi_session(journeys), folds):
        model = calibrate(train, **kwargs)
        predict = model_method(model.params, model.weights)
        held.extend(test)
        answers.update({j.conversion_id: predict(j) for j in test})
    return held, lambda journey: answers[journey.conversion_id]
