"""The parameter vector of the calibration: where each parameter of a :class:`ModelParams` sits in it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ihc_attribution_dev.server.model import PHASES, ChannelFactors, Curve, ModelParams

# Knots of the fitted curves. They contain the knots of the built-in type A curves, so that type A
# is exactly one parameter set of the family, and reach further (restart credit from 1 h of pause,
# closer rank up to 10 sessions, memory over pauses of up to 14 days).
PAUSE_KNOTS = (0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0, 48.0, 50.0, 52.0, 55.0, 60.0, 66.0, 72.0, 84.0,
               96.0, 120.0, 144.0, 168.0, 216.0, 336.0)
CLOSER_KNOTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0, 240.0, 336.0)
RANK_KNOTS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0)
HOLDER_KNOTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
MEMORY_KNOTS = (0.0, 12.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0, 240.0, 336.0)
# (slice, ModelParams attribute, knots) of the curves whose value at the first knot is pinned to 1.
PINNED_CURVES = (
    ("closer", "closer_distance", CLOSER_KNOTS),
    ("rank", "closer_rank", RANK_KNOTS),
    ("holder", "holder_discount", HOLDER_KNOTS),
    ("memory", "memory", MEMORY_KNOTS),
)


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
            *((name, len(knots) - 1) for name, _, knots in PINNED_CURVES),
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
        s = self.slices
        lo, hi = np.zeros(self.size), np.full(self.size, np.inf)
        hi[s["memory"]] = 1.0
        lo[s["imp"]], lo[s["factors"]] = -np.inf, -np.inf
        return lo, hi

    def pack(self, p: ModelParams):
        """The vector of a parameter set (clipped into the bounds)."""
        s = self.slices
        x = np.zeros(self.size)
        x[s["pause"]] = p.initializer_pause(np.array(PAUSE_KNOTS))
        for name, attribute, knots in PINNED_CURVES:
            curve = getattr(p, attribute)
            x[s[name]] = curve(np.array(knots[1:])) / (curve(0.0) or 1.0)
        x[s["memory"]] = np.minimum(x[s["memory"]], 1.0)
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
            **{attribute: curve(knots, x[s[name]], 1.0) for name, attribute, knots in PINNED_CURVES},
            holder_first=r(ends[0]),
            holder_last=r(ends[1]),
            holder_unengaged=r(x[s["hu"]][0]) if self.fit_holder_unengaged else 0.0,
            closer_unengaged=r(x[s["cu"]][0]) if self.fit_closer_unengaged else 0.0,
            impression=ChannelFactors(*(r(v) for v in imp)),
            channel_factors={c: ChannelFactors(*(r(math.exp(v)) for v in row)) for c, row in zip(self.channels, logs)},
        )
