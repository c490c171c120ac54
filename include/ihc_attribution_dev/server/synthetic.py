"""Synthetic recordings, to test the calibration on conversion types other than the reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from ihc_attribution_dev.server.model import ChannelFactors, Curve, ModelParams, PhaseWeights, TypeModel, largest_remainder
from ihc_attribution_dev.server.recordings import Journey, type_model_method

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
    predict = type_model_method(model)
    return [replace(j, answer=[{k: c[k] for k in ("initializer", "holder", "closer", "ihc")} for c in predict(j)])
            for j in journeys]


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
