"""The demo data's profile: how each channel behaves and the calibrated constants of the draws.

Calibrated on the real IHC answers in the reference data where it has them (channel shares,
engagement rates, journey lengths, hour-of-day profile); costs, revenue and the noise traffic mix
are plausible assumptions. :mod:`.demo_draw` draws the demo database from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
