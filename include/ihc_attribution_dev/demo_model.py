"""The model behind the demo data: channel profiles, calibrated constants, what to generate and
the shapes of what is generated.

The figures are calibrated on the real IHC answers in the reference data where the reference
data has them (channel shares, engagement rates, journey lengths, hour-of-day profile); costs,
revenue and the noise traffic mix are plausible assumptions. :mod:`.demo_draw` draws the rows
from them and :mod:`.demo_data` writes them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class ChannelProfile:
    """How one traffic channel behaves in the generated data.

    :param name: the channel name as it appears in ``session_sources.channel_name``.
    :param journey_weight: relative share among sessions of converting journeys.
    :param noise_weight: relative share among sessions of users who do not convert.
    :param cpc: mean cost per session in EUR; 0 for free channels.
    :param holder: probability of ``holder_engagement`` = 1 in a converting journey.
    :param closer: probability of ``closer_engagement`` = 1 in a converting journey.
    :param impression: probability of ``impression_interaction`` = 1 (view-through ad channels).
    """

    name: str
    journey_weight: float
    noise_weight: float
    cpc: float
    holder: float
    closer: float
    impression: float


# Journey shares and the holder/closer rates come from the real IHC answers (reference data);
# the three channels absent there get small shares. The real data has no impression
# interactions at all; view-through ad channels get a few here so the flag is exercised.
# Untracked Conversions is a pseudo-channel attached to conversions, hence (almost) absent
# from non-converting traffic and always a closer, never a holder.
CHANNELS: tuple[ChannelProfile, ...] = (
    ChannelProfile("Affiliate & Partnerships", 0.030, 0.025, 1.60, 0.98, 0.76, 0.00),
    ChannelProfile("Direct Traffic", 0.225, 0.160, 0.00, 0.87, 0.83, 0.00),
    ChannelProfile("FB & IG Ads", 0.065, 0.120, 0.45, 0.94, 0.85, 0.08),
    ChannelProfile("Lead Generation", 0.004, 0.010, 2.40, 0.90, 0.70, 0.00),
    ChannelProfile("Microsoft Ads", 0.006, 0.015, 0.80, 0.95, 0.74, 0.00),
    ChannelProfile("Newsletter & Email", 0.195, 0.060, 0.00, 0.96, 0.86, 0.00),
    ChannelProfile("Organic Traffic", 0.075, 0.220, 0.00, 0.95, 0.71, 0.00),
    ChannelProfile("Paid Search Brand", 0.120, 0.070, 0.35, 0.97, 0.78, 0.00),
    ChannelProfile("Paid Search Non Brand", 0.015, 0.060, 1.10, 0.96, 0.59, 0.00),
    ChannelProfile("Performance Max", 0.205, 0.120, 0.55, 0.91, 0.69, 0.05),
    ChannelProfile("Pinterest Ads", 0.004, 0.020, 0.40, 0.90, 0.70, 0.15),
    ChannelProfile("Referral", 0.030, 0.030, 0.00, 0.97, 0.83, 0.00),
    ChannelProfile("Social Organic", 0.008, 0.030, 0.00, 0.96, 0.71, 0.00),
    ChannelProfile("TikTok Ads", 0.004, 0.040, 0.30, 0.95, 0.75, 0.15),
    ChannelProfile("Untracked Conversions", 0.015, 0.002, 0.00, 0.00, 1.00, 0.00),
    ChannelProfile("YouTube Ads", 0.004, 0.030, 0.25, 0.90, 0.70, 0.30),
)
CHANNEL_NAMES: tuple[str, ...] = tuple(c.name for c in CHANNELS)
FREE_CHANNELS: frozenset[str] = frozenset(c.name for c in CHANNELS if c.cpc == 0)

# Sessions of users who never convert are less engaged than sessions that lead to an order.
NOISE_HOLDER_FACTOR = 0.6
NOISE_CLOSER_FACTOR = 0.5

# Share of sessions per hour of day (UTC), from the real sessions: quiet at night, a morning
# peak around 9-10 and an evening peak around 21-22.
HOUR_WEIGHTS = np.array(
    [4.4, 1.8, 1.1, 0.7, 0.2, 0.4, 1.0, 2.5, 4.8, 7.3, 7.0, 5.9,
     4.3, 5.2, 5.3, 4.9, 4.4, 4.3, 5.0, 4.7, 5.8, 6.3, 6.9, 5.8]
)  # fmt: skip

# Number of new sessions before a conversion (sessions since the user's previous conversion).
# Tuned so that journey lengths over all conversions, repeat buyers included, come out near the
# real ones: about 58% one session, 21% two, 10% three, then a thin tail.
NEW_SESSIONS_WEIGHTS = np.array([0.640, 0.212, 0.080, 0.030, 0.015, 0.010, 0.005, 0.004, 0.003, 0.003])
# The rest of the mass is a Pareto tail from 11 sessions on: a few journeys of 30-100+ sessions.
TAIL_FROM = len(NEW_SESSIONS_WEIGHTS) + 1
LONG_TAIL_SHARE = 0.006
LONG_TAIL_ALPHA = 1.1
LONG_TAIL_MAX = 250

# Conversions per buyer within the range: most buy once, some two or three times.
CONVERSIONS_PER_BUYER_WEIGHTS = np.array([0.90, 0.08, 0.02])
# Conversions of one buyer at least this far apart, so every journey has room for its sessions.
MIN_CONVERSION_SPACING_S = 600

# Revenue per conversion, EUR: log-normal with mean exp(mu + sigma^2 / 2) = 57.
REVENUE_MEAN = 57.0
REVENUE_SIGMA = 0.7

# Cost per session of paid channels: log-normal around the channel's mean, clipped so that no
# session is free or absurdly expensive.
COST_SIGMA = 0.45
COST_MIN, COST_MAX = 0.05, 8.0
# Data-quality gaps the pipeline must tolerate.
NULL_COST_SHARE = 0.01
MISSING_COST_SHARE = 0.02

# Bad rows, by kind: conversions whose user has no session at all (recorded as no_sessions), and
# sessions of a converting journey with an impossible date (day 00) or an empty channel name
# (recorded as invalid_input for their conversion). Each hits a different one-time buyer.
BAD_ROWS = {"conversion_without_sessions": 2, "session_impossible_date": 1, "session_empty_channel": 1}

# Share of buyers who come back after their last conversion (sessions in no journey).
POST_PURCHASE_SHARE = 0.35


@dataclass(frozen=True)
class DemoConfig:
    """What to generate.

    :param start: first day with conversions (inclusive).
    :param end: last day with conversions (inclusive).
    :param conversions: number of conversions, spread over ``[start, end]``.
    :param sessions_per_conversion: total sessions divided by conversions; the real database
        had about 225. Sessions beyond the converting journeys belong to users who never
        convert. If the journeys alone need more, the total is larger than asked.
    :param users: total number of distinct users; by default about 2.4 sessions per
        non-converting user.
    :param seed: seed of every random draw.
    :param lookback_days: how many days before ``start`` sessions reach back.
    :param bad_rows: add the few bad rows of :data:`BAD_ROWS` (when there are buyers enough).
    """

    start: dt.date = dt.date(2024, 1, 1)
    end: dt.date = dt.date(2024, 1, 14)
    conversions: int = 1_500
    sessions_per_conversion: float = 100.0
    users: int | None = None
    seed: int = 42
    lookback_days: int = 60
    bad_rows: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` for a configuration that cannot be generated."""
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.conversions < 1:
            raise ValueError("conversions must be at least 1")
        if self.sessions_per_conversion < 1:
            raise ValueError("sessions_per_conversion must be at least 1")
        if self.lookback_days < 0:
            raise ValueError("lookback_days must not be negative")
        if self.users is not None and self.users < 1:
            raise ValueError("users must be at least 1")

    @property
    def window_start(self) -> dt.date:
        """First day that may hold sessions."""
        return self.start - dt.timedelta(days=self.lookback_days)

    @property
    def window_days(self) -> int:
        """Days from the first possible session to the end of the range."""
        return (self.end - self.window_start).days + 1


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate` wrote."""

    path: Path
    sessions: int
    conversions: int
    users: int
    buyers: int
    repeat_buyers: int
    journey_sessions: int
    post_purchase_sessions: int
    noise_sessions: int
    sessions_before_start: int
    cost_rows: int
    null_costs: int
    total_revenue: float
    first_session_date: str
    last_session_date: str
    seconds: float
    conversions_without_sessions: int = 0
    malformed_sessions: int = 0

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.sessions:,} sessions ({self.first_session_date} .. "
            f"{self.last_session_date}), {self.conversions:,} conversions, {self.users:,} users, "
            f"in {self.seconds:.2f} s"
        )

    def lines(self) -> list[str]:
        """A human-readable description, one fact per line."""
        return [
            f"wrote {self.path} in {self.seconds:.2f} s",
            f"sessions            {self.sessions:>12,}  "
            f"({self.first_session_date} .. {self.last_session_date})",
            f"  in journeys       {self.journey_sessions:>12,}",
            f"  after last order  {self.post_purchase_sessions:>12,}",
            f"  never converting  {self.noise_sessions:>12,}",
            f"  before start      {self.sessions_before_start:>12,}",
            f"conversions         {self.conversions:>12,}  (revenue {self.total_revenue:,.2f} EUR)",
            f"users               {self.users:>12,}  ({self.buyers:,} buyers, {self.repeat_buyers:,} repeat)",
            f"session_costs rows  {self.cost_rows:>12,}  ({self.null_costs:,} NULL)",
            f"bad rows on purpose {self.conversions_without_sessions + self.malformed_sessions:>12,}  "
            f"({self.conversions_without_sessions} conversions without sessions, "
            f"{self.malformed_sessions} malformed sessions)",
        ]


@dataclass
class DemoTables:
    """The generated data as column arrays, before it is written.

    Times are whole seconds since midnight of ``config.window_start``; user indexes point
    into ``user_ids``; ids are 64-bit keys, written as 16 hex digits; ``cost`` is NaN for a
    NULL cost and ignored where ``has_cost`` is false.
    """

    config: DemoConfig
    user_ids: np.ndarray
    session_keys: np.ndarray
    session_user: np.ndarray
    session_time: np.ndarray
    session_channel: np.ndarray
    holder: np.ndarray
    closer: np.ndarray
    impression: np.ndarray
    cost: np.ndarray
    has_cost: np.ndarray
    conv_keys: np.ndarray
    conv_user: np.ndarray
    conv_time: np.ndarray
    revenue: np.ndarray
    buyers: int
    repeat_buyers: int
    journey_sessions: int
    post_purchase_sessions: int
    #: conversions (indexes) moved to a user without sessions, and their new user ids
    sessionless_convs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sessionless_user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    #: sessions (indexes) written with an impossible date / an empty channel
    bad_date_sessions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bad_channel_sessions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
