"""The local IHC model vectorised over many journeys (numpy), and the parameter vector of the calibration.

A copy of :func:`~ihc_attribution_dev.server.model.attribute_journey` that evaluates every session
of many journeys at once, fast enough for an optimiser; a test checks that both agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from ihc_attribution_dev.server.model import PHASES, ChannelFactors, Curve, ModelParams, PhaseWeights

# Knots of the fitted curves. They contain the knots of the built-in type A curves, so that type A
# is exactly one parameter set of the family, and reach further (restart credit from 1 h of pause,
# closer rank up to 10 sessions, memory over pauses of up to 14 days).
PAUSE_KNOTS = (0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0, 48.0, 50.0, 52.0, 55.0, 60.0, 66.0, 72.0, 84.0,
               96.0, 120.0, 144.0, 168.0, 216.0, 336.0)
CLOSER_KNOTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0, 240.0, 336.0)
RANK_KNOTS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0)
HOLDER_KNOTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
MEMORY_KNOTS = (0.0, 12.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0, 240.0, 336.0)


class Batch:
    """Journeys of 2+ sessions as flat numpy arrays, one entry per session."""

    def __init__(self, journeys: Sequence) -> None:  # calibration.Journey
        import numpy as np

        channels = sorted({t.channel_label for j in journeys for t in j.touchpoints})
        index = {c: i for i, c in enumerate(channels)}
        cols: dict[str, list] = {k: [] for k in (
            "jid", "first", "last", "gap", "to_conv", "rank", "longest", "he", "ce", "imp", "ch", "answer")}
        for jid, j in enumerate(journeys):
            tps = j.touchpoints
            n = len(tps)
            hours = [(t.timestamp - tps[0].timestamp).total_seconds() / 3600.0 for t in tps]
            longest = [0.0] * n
            for i in range(n - 2, -1, -1):
                longest[i] = max(longest[i + 1], hours[i + 1] - hours[i])
            for i, (t, a) in enumerate(zip(tps, j.answer)):
                cols["jid"].append(jid)
                cols["first"].append(i == 0)
                cols["last"].append(i == n - 1)
                cols["gap"].append(hours[i] - hours[i - 1] if i else 0.0)
                cols["to_conv"].append(hours[-1] - hours[i])
                cols["rank"].append(float(n - 1 - i))
                cols["longest"].append(longest[i])
                cols["he"].append(t.holder_engagement == 1)
                cols["ce"].append(t.closer_engagement == 1)
                cols["imp"].append(t.impression_interaction == 1)
                cols["ch"].append(index[t.channel_label])
                cols["answer"].append([a[k] for k in ("initializer", "holder", "closer", "ihc")])
        for k, v in cols.items():
            setattr(self, k, np.array(v))
        self.n_journeys = len(journeys)
        self.labels = tuple(channels)


@dataclass(frozen=True)
class Layout:
    """Where each parameter sits in the vector the optimiser works on."""

    channels: tuple[str, ...]
    fit_holder_unengaged: bool
    fit_closer_unengaged: bool
    fit_impression: bool

    @cached_property
    def slices(self) -> dict[str, slice]:
        sizes = [
            ("pause", len(PAUSE_KNOTS)),
            ("closer", len(CLOSER_KNOTS) - 1),  # value at 0 h pinned to 1
            ("rank", len(RANK_KNOTS) - 1),  # value at rank 0 pinned to 1
            ("holder", len(HOLDER_KNOTS) - 1),  # value at share 0 pinned to 1
            ("memory", len(MEMORY_KNOTS) - 1),  # value at 0 h pinned to 1
            ("ends", 2),  # holder_first, holder_last
            ("hu", int(self.fit_holder_unengaged)),
            ("cu", int(self.fit_closer_unengaged)),
            ("imp", 3 * int(self.fit_impression)),  # log multipliers
            ("factors", 3 * len(self.channels)),  # log factors, phase-major per channel
        ]
        out, start = {}, 0
        for name, size in sizes:
            out[name] = slice(start, start + size)
            start += size
        return out

    @property
    def size(self) -> int:
        return list(self.slices.values())[-1].stop

    def bounds(self):
        import numpy as np

        s = self.slices
        lo, hi = np.zeros(self.size), np.full(self.size, np.inf)
        hi[s["memory"]] = 1.0
        lo[s["imp"]], lo[s["factors"]] = -np.inf, -np.inf
        return lo, hi

    def pack(self, p: ModelParams):
        """The vector of a parameter set (clipped into the bounds)."""
        import numpy as np

        s = self.slices
        x = np.zeros(self.size)
        x[s["pause"]] = [p.initializer_pause(k) for k in PAUSE_KNOTS]
        c0 = p.closer_distance(0.0) or 1.0
        x[s["closer"]] = [p.closer_distance(k) / c0 for k in CLOSER_KNOTS[1:]]
        r0 = p.closer_rank(0.0) or 1.0
        x[s["rank"]] = [p.closer_rank(k) / r0 for k in RANK_KNOTS[1:]]
        h0 = p.holder_discount(0.0) or 1.0
        x[s["holder"]] = [p.holder_discount(k) / h0 for k in HOLDER_KNOTS[1:]]
        m0 = p.memory(0.0)
        x[s["memory"]] = [min(1.0, p.memory(k) / m0) for k in MEMORY_KNOTS[1:]]
        x[s["ends"]] = [p.holder_first, p.holder_last]
        x[s["hu"]] = [p.holder_unengaged][: s["hu"].stop - s["hu"].start]
        x[s["cu"]] = [p.closer_unengaged][: s["cu"].stop - s["cu"].start]
        if self.fit_impression:
            x[s["imp"]] = [math.log(max(getattr(p.impression, ph), 1e-6)) for ph in PHASES]
        logs = [[math.log(max(getattr(p.factors(c), ph), 1e-6)) for ph in PHASES] for c in self.channels]
        x[s["factors"]] = np.array(logs).reshape(-1) if logs else []
        return x

    def unpack(self, x, digits: int | None = None) -> ModelParams:
        """The parameter set of a vector (values rounded to ``digits`` decimals if given)."""
        s = self.slices

        def r(v: float) -> float:
            return round(float(v), digits) if digits is not None else float(v)

        def curve(knots, values, pinned=None) -> Curve:
            ys = ([pinned] if pinned is not None else []) + [r(v) for v in values]
            return Curve(tuple((float(k), y) for k, y in zip(knots, ys)))

        ends = x[s["ends"]]
        imp = [math.exp(v) for v in x[s["imp"]]] if self.fit_impression else [1.0, 1.0, 1.0]
        logs = x[s["factors"]].reshape(-1, 3) if self.channels else []
        return ModelParams(
            initializer_pause=curve(PAUSE_KNOTS, x[s["pause"]]),
            closer_distance=curve(CLOSER_KNOTS, x[s["closer"]], 1.0),
            holder_discount=curve(HOLDER_KNOTS, x[s["holder"]], 1.0),
            closer_rank=curve(RANK_KNOTS, x[s["rank"]], 1.0),
            memory=curve(MEMORY_KNOTS, x[s["memory"]], 1.0),
            holder_first=r(ends[0]),
            holder_last=r(ends[1]),
            holder_unengaged=r(x[s["hu"]][0]) if self.fit_holder_unengaged else 0.0,
            closer_unengaged=r(x[s["cu"]][0]) if self.fit_closer_unengaged else 0.0,
            impression=ChannelFactors(*(r(v) for v in imp)),
            channel_factors={c: ChannelFactors(*(r(math.exp(v)) for v in row)) for c, row in zip(self.channels, logs)},
        )


def predict_batch(batch: Batch, params: ModelParams, weights: PhaseWeights):
    """Unrounded (I, H, C, ihc) arrays of every session of ``batch``: the vectorised model."""
    import numpy as np

    def curve(c: Curve, x):
        xs, ys = zip(*c.points)
        return np.interp(x, xs, ys)

    def normalise(raw):
        total = np.bincount(batch.jid, weights=raw, minlength=batch.n_journeys)
        safe = np.where(total > 0, total, 1.0)
        return raw / safe[batch.jid], total > 0

    p, jid = params, batch.jid
    memory = curve(p.memory, batch.longest)
    imp = np.array([getattr(p.impression, ph) for ph in PHASES])
    common = np.array([[getattr(p.factors(c), ph) for ph in PHASES] for c in batch.labels])[batch.ch] \
        * memory[:, None] * np.where(batch.imp[:, None], imp[None, :], 1.0)
    initializer, ok = normalise(np.where(batch.first, 1.0, curve(p.initializer_pause, batch.gap)) * common[:, 0])
    if not ok.all():
        # The session that counts most (earliest on ties) starts the journey, as in the model.
        for j in np.flatnonzero(~ok):
            rows = np.flatnonzero(jid == j)
            start = rows[np.argmax(memory[rows])]
            initializer[rows] = (rows == start).astype(float)
    closeness = curve(p.closer_distance, batch.to_conv) * curve(p.closer_rank, batch.rank)
    closer, ok = normalise(np.where(batch.ce | batch.last, 1.0, p.closer_unengaged) * closeness * common[:, 2])
    if not ok.all():
        closer = np.where(ok[jid], closer, batch.last.astype(float))
    eligible = np.where(batch.he, 1.0, p.holder_unengaged) * np.where(batch.first, p.holder_first, 1.0) \
        * np.where(batch.last, p.holder_last, 1.0)
    holder, has_holder = normalise(eligible * curve(p.holder_discount, initializer + closer) * common[:, 1])
    holder = np.where(has_holder[jid], holder, 0.0)
    w_holder = np.where(has_holder[jid], weights.holder, 0.0)
    ihc = (weights.initializer * initializer + w_holder * holder + weights.closer * closer) \
        / (weights.initializer + w_holder + weights.closer)
    return initializer, holder, closer, ihc
