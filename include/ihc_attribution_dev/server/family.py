"""The parameters of the local IHC model: phase weights, curves, channel factors, and the built-in sets.

:class:`ModelParams` is the trained part of the model of one conversion type and
:class:`TypeModel` what answers one conversion type; :data:`FITTED_PARAMS` is the set fitted for
the reference type A. How the model uses them is in :mod:`ihc_attribution_dev.server.model`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

PHASES = ("initializer", "holder", "closer")


@dataclass(frozen=True)
class PhaseWeights:
    """Weights of the three phases in ``ihc`` (defaults: fitted for the reference conversion type)."""

    initializer: float = 0.345
    holder: float = 0.380
    closer: float = 0.275

    def __post_init__(self) -> None:
        for name in PHASES:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"phase weight {name} must be a finite number >= 0, got {value!r}")
        # The holder phase may be dropped, so the other two alone must be able to carry ihc.
        if self.initializer + self.closer <= 0:
            raise ValueError("phase weights: initializer + closer must be > 0")


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear function through ``points`` (x ascending), constant beyond both ends."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        xs = [x for x, _ in self.points]
        if not xs or any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError("curve points need strictly increasing x values")
        if any(y < 0 for _, y in self.points):
            raise ValueError("curve values must be >= 0")

        object.__setattr__(self, "_xs", tuple(xs))

    def __call__(self, x: float) -> float:
        points = self.points
        if x <= points[0][0]:
            return points[0][1]
        if x >= points[-1][0]:
            return points[-1][1]
        i = bisect.bisect_right(self._xs, x)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class ChannelFactors:
    """Multipliers of one channel's raw weight in each phase."""

    initializer: float = 1.0
    holder: float = 1.0
    closer: float = 1.0


#: A curve that is 1 everywhere (the neutral value of the optional curves).
ONE = Curve(((0.0, 1.0),))


@dataclass(frozen=True)
class ModelParams:
    """The trained part of the model of one conversion type (phase weights aside).

    The raw weight of a session in a phase is the product of the terms below that apply to it;
    each phase is then normalised over the journey. The defaults of the optional terms are
    neutral: with them the model is the one fitted for the reference type A.

    :param initializer_pause: raw initializer weight of a non-first session by hours since the
        previous session (the first session has 1).
    :param closer_distance: raw closer weight by hours between a session and the converting one.
    :param holder_discount: holder weight multiplier by the session's initializer + closer share.
    :param channel_factors: factors by ``channel_label``; unknown channels get 1, 1, 1.
    :param closer_rank: closer weight multiplier by the number of sessions between a session and
        the converting one (0: the converting session itself).
    :param memory: multiplier of all three phases by the longest pause (hours) between a session
        and the end of the journey: how far back, across a long pause, a session still counts.
        Its value at 0 must be > 0 (the last session always counts).
    :param holder_first: holder weight multiplier of the first session.
    :param holder_last: holder weight multiplier of the last session.
    :param holder_unengaged: holder weight of a session with ``holder_engagement`` = 0 (0: none).
    :param closer_unengaged: closer weight of a session with ``closer_engagement`` = 0 other than
        the last (0: none).
    :param impression: multipliers of each phase for sessions with ``impression_interaction`` = 1.
    """

    initializer_pause: Curve
    closer_distance: Curve
    holder_discount: Curve
    channel_factors: Mapping[str, ChannelFactors] = field(default_factory=dict)
    closer_rank: Curve = ONE
    memory: Curve = ONE
    holder_first: float = 1.0
    holder_last: float = 1.0
    holder_unengaged: float = 0.0
    closer_unengaged: float = 0.0
    impression: ChannelFactors = field(default_factory=lambda: ChannelFactors())

    def __post_init__(self) -> None:
        for name in ("holder_first", "holder_last", "holder_unengaged", "closer_unengaged"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for label, f in [("impression", self.impression), *self.channel_factors.items()]:
            for phase in PHASES:
                value = getattr(f, phase)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"factor {phase} of {label!r} must be a finite number >= 0, got {value!r}")
        if self.memory(0.0) <= 0:
            raise ValueError("memory must be > 0 at 0 h: the last session of a journey always counts")

    def factors(self, channel_label: str) -> ChannelFactors:
        """Factors of a channel (neutral for a channel the model was not trained on)."""
        return self.channel_factors.get(channel_label, _NEUTRAL)


_NEUTRAL = ChannelFactors()

# Fitted on the reference answers (1,925 journeys, 787 with 2+ sessions) by
# `scripts/calibrate_ihc_model.py --fit`. The real service gives no restart credit before about
# 50 h of pause and only half credit after 9 days, the longest pause in the data; beyond it the
# curve is extended to full credit at 14 days.
FITTED_PARAMS = ModelParams(
    initializer_pause=Curve((
        (50.0, 0.0), (52.0, 0.0051), (55.0, 0.0112), (60.0, 0.0125), (66.0, 0.0178),
        (72.0, 0.032), (84.0, 0.0633), (96.0, 0.0977), (120.0, 0.1689), (144.0, 0.2507),
        (168.0, 0.3405), (216.0, 0.5351), (336.0, 1.0),
    )),
    closer_distance=Curve((
        (0.0, 1.0), (0.25, 0.8657), (0.5, 0.7672), (1.0, 0.6623), (2.0, 0.6027), (4.0, 0.5342),
        (8.0, 0.5027), (16.0, 0.4482), (24.0, 0.396), (48.0, 0.3357), (72.0, 0.2678),
        (96.0, 0.2157), (120.0, 0.1536), (168.0, 0.0875), (240.0, 0.0325),
    )),
    holder_discount=Curve((
        (0.0, 1.0), (0.25, 0.8607), (0.5, 0.7074), (0.75, 0.5262), (1.0, 0.256),
        (1.25, 0.1886), (1.5, 0.1258), (1.75, 0.1068),
    )),
    # channel_label: ChannelFactors(initializer, holder, closer)
    channel_factors={
        "Affiliate & Partnerships": ChannelFactors(1.015, 1.005, 0.996),
        "Direct Traffic": ChannelFactors(0.842, 0.961, 1.075),
        "FB & IG Ads": ChannelFactors(1.0, 0.996, 1.004),
        "Microsoft Ads": ChannelFactors(1.0, 0.996, 0.993),
        "Newsletter & Email": ChannelFactors(1.038, 1.011, 0.997),
        "Organic Traffic": ChannelFactors(1.022, 1.006, 0.996),
        "Paid Search Brand": ChannelFactors(1.03, 1.009, 0.997),
        "Paid Search Non Brand": ChannelFactors(1.027, 1.011, 0.996),
        "Performance Max": ChannelFactors(1.03, 1.006, 0.999),
        "Referral": ChannelFactors(1.012, 1.008, 0.98),
        "Social Organic": ChannelFactors(1.0, 0.988, 0.981),
        "TikTok Ads": ChannelFactors(1.0, 1.005, 0.988),
        "Untracked Conversions": ChannelFactors(1.0, 1.0, 1.001),
    },
)

#: The curves as the design brief describes them, without fitted factors: kept for comparison.
NOMINAL_PARAMS = ModelParams(
    initializer_pause=Curve(((2.0, 0.0), (48.0, 1.0))),
    closer_distance=Curve(((0.0, 1.0), (2.0, 0.5), (48.0, 0.0))),
    holder_discount=Curve(((0.0, 1.0),)),
)


@dataclass(frozen=True)
class TypeModel:
    """What answers one conversion type: a parameter set, phase weights, and where they came from.

    :param source: shown in the server's startup log (a file name, or ``built-in``).
    :param fit: calibration summary recorded with the parameters (journeys, MAEs), if any.
    """

    params: ModelParams = FITTED_PARAMS
    weights: PhaseWeights = field(default_factory=PhaseWeights)
    source: str = "built-in (reference type A)"
    fit: Mapping[str, object] | None = None
