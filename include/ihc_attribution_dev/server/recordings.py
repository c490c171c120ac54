"""Recorded answers of the IHC service, and the methods scored against them.

A recording is a JSONL file in the format of ``../shared/reference/ihc_real_responses.jsonl``:
one journey a line, with the sessions sent and the service's answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ihc_attribution_dev.server.model import (
    ModelParams,
    PhaseWeights,
    Touchpoint,
    TypeModel,
    attribute_journey,
    parse_timestamp,
    round_credits,
)


class RecordingError(ValueError):
    """A recording cannot be used: the message says which line and why, or why it is too small."""


@dataclass(frozen=True)
class Journey:
    """One recorded journey: what was sent and what the service answered, in chronological order."""

    conversion_id: str
    touchpoints: list[Touchpoint]
    answer: list[dict]  # initializer, holder, closer, ihc of each touchpoint
    conv_type: str | None = None


# ---------------------------------------------------------------------------------------------
# Recordings


def load_answers(path: Path, conv_type_id: str | None = None) -> list[Journey]:
    """Read a recording; the last session is flagged as the converting one (as the pipeline does).

    With ``conv_type_id``, lines with another ``conv_type`` are left out (lines without one are
    kept). Raises :class:`RecordingError` for a malformed line or when no journey is left.
    """
    journeys: list[Journey] = []
    seen_types: set[str] = set()
    seen_ids: set[str] = set()
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
            if journey.conversion_id in seen_ids:
                raise RecordingError(f"{where}: conversion_id {journey.conversion_id!r} is recorded twice")
            seen_ids.add(journey.conversion_id)
            journeys.append(journey)
    if not journeys:
        held = f" (it holds conv_type {', '.join(sorted(seen_types))})" if seen_types else ""
        wanted = f" of conv_type {conv_type_id!r}" if conv_type_id is not None else ""
        raise RecordingError(f"{Path(path).name}: no journeys{wanted}{held}")
    return journeys


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
        touchpoints.append(Touchpoint(
            session_id=s["session_id"],
            timestamp=parse_timestamp(s["timestamp"]),
            channel_label=s["channel_label"],
            holder_engagement=flags[0],
            closer_engagement=flags[1],
            conversion=int(i == len(sessions) - 1),
            impression_interaction=flags[2],
        ))
    rows = [answer[sid] for sid in ids]
    for column in ("initializer", "holder", "closer", "ihc"):
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
            result = [{"session_id": t.session_id, **{k: a[k] for k in ("initializer", "holder", "closer", "ihc")}}
                      for t, a in zip(j.touchpoints, j.answer)]
            fh.write(json.dumps({"conv_type": conv_type, "conversion_id": j.conversion_id,
                                 "sessions": sessions, "result": result}) + "\n")


# ---------------------------------------------------------------------------------------------
# Methods and scores. A method maps a journey to its predicted answer, session by session in
# chronological order: ihc values (baselines) or dicts with every column (models).

Method = Callable[[Journey], Sequence]


def model_method(params: ModelParams, weights: PhaseWeights = PhaseWeights()) -> Method:
    """The local server's answer for a journey (rounded as the server rounds), as dicts."""

    def predict(journey: Journey) -> list[dict]:
        credits = round_credits(attribute_journey(journey.touchpoints, weights, params))
        return [vars(c) for c in credits]

    return predict


def type_model_method(model: TypeModel) -> Method:
    """:func:`model_method` of a :class:`TypeModel`."""
    return model_method(model.params, model.weights)


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


def top_agreement(journeys: Sequence[Journey], predict: Method) -> float:
    """Share of journeys whose top-credited session (by ihc) is one the real answer credits most."""
    agree = 0
    for j in journeys:
        predicted = [p["ihc"] if isinstance(p, dict) else p for p in predict(j)]
        real = [a["ihc"] for a in j.answer]
        top = max(range(len(predicted)), key=lambda i: (predicted[i], -i))
        agree += real[top] >= max(real) - 1e-9
    return agree / len(journeys)


def multi_session(journeys: Sequence[Journey]) -> list[Journey]:
    """The journeys of 2 or more sessions (single sessions are (1, 0, 1, 1) for every method)."""
    return [j for j in journeys if len(j.touchpoints) > 1]


def replay(predictions: Sequence[Sequence[dict]], journeys: Sequence[Journey]) -> Method:
    """A method that answers ``journeys[i]`` with ``predictions[i]`` (for scoring held-out answers)."""
    by_id = {id(j): p for j, p in zip(journeys, predictions)}
    return lambda journey: by_id[id(journey)]
