"""Demo database generator: a realistic, seeded challenge database in a few seconds.

``python -m ihc_attribution_dev.demo_data --out demo.db`` writes a SQLite file with the exact
challenge schema (``sql/challenge_schema.sql``): ``session_sources``, ``conversions`` and
``session_costs`` filled, ``attribution_customer_journey`` and ``channel_reporting`` empty.

The data has the shape that makes the real task hard, so the pipeline can be exercised on it:

- far more sessions than conversions: most sessions belong to users who never convert;
- journeys (a user's sessions strictly before a conversion) that are mostly one or two sessions
  long, with a long tail of 30-100+ sessions;
- journeys reaching back weeks before the date range, so filtering sessions by the range is
  visibly wrong;
- repeat buyers whose journeys overlap (the second journey contains the first);
- free channels with cost 0, paid channels with a per-session cost, some NULL costs and some
  sessions without a cost row;
- a few bad rows, as real exports have them (:data:`BAD_ROWS`): conversions of users without any
  earlier session, a session with an impossible date and one with an empty channel, each in the
  journey of its own conversion. The pipeline records them in ``attribution_issues`` as
  ``no_sessions`` and ``invalid_input``; ``bad_rows=False`` leaves them out.

Channel shares, engagement flag rates, journey lengths, gaps between sessions and the hour-of-day
profile are calibrated on the real IHC answers in the reference data; costs, revenue and the
noise traffic mix are plausible assumptions.

Everything is drawn with numpy from one seed, so the same configuration always gives the same
table contents. Rows are written with ``executemany`` in large chunks inside one transaction, with
journaling off, into a temporary file that is renamed into place at the end: an interrupted run
never leaves a half-written database behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np

from ihc_attribution.schema import CONVERSIONS, SESSION_COSTS, SESSION_SOURCES, challenge_ddl

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

# Rows per executemany call. Rows are zipped lazily from column lists, so no chunk is ever
# materialised; the chunks only bound the work of one call.
INSERT_CHUNK = 200_000


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


# --------------------------------------------------------------------------------------------
# Generation (pure numpy)
# --------------------------------------------------------------------------------------------


def _scramble(index: np.ndarray, key: int) -> np.ndarray:
    """Map indexes to random-looking 64-bit ids, bijectively, so ids are unique by construction.

    Adding a key, multiplying by odd constants and xor-shifting are each invertible modulo
    2**64 (the splitmix64 finaliser), so distinct indexes can never collide.
    """
    x = index.astype(np.uint64) + np.uint64(key)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _hex_ids(values: np.ndarray) -> np.ndarray:
    """16-character lowercase hex strings of 64-bit values (an object array of ``str``)."""
    text = values.astype(">u8").tobytes().hex()
    return np.array([text[i : i + 16] for i in range(0, len(text), 16)], dtype=object)


def _grouped_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every group; groups are consecutive runs of ``counts``."""
    total = np.cumsum(values)
    ends = np.cumsum(counts)
    before = np.concatenate(([0], total[ends[:-1] - 1])) if len(counts) else np.zeros(0, total.dtype)
    return total - np.repeat(before, counts)


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds since midnight following the hour-of-day profile."""
    hours = rng.choice(24, size=n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    return hours * 3600 + rng.integers(0, 3600, size=n)


def _session_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds between consecutive sessions of one user.

    A mixture matching the real gaps (quartiles about 4 min, 2 h, 1 day): clicks within one
    visit minutes apart, a return later the same day, or a return after whole days at about
    the same time of day.
    """
    kind = rng.choice(3, size=n, p=[0.42, 0.30, 0.28])
    burst = rng.lognormal(math.log(180), 1.2, size=n)
    hours = rng.lognormal(math.log(3 * 3600), 0.8, size=n)
    days = rng.geometric(0.45, size=n) * SECONDS_PER_DAY + rng.normal(0, 2 * 3600, size=n)
    gaps = np.choose(kind, [burst, hours, days])
    return np.maximum(np.rint(gaps), 1).astype(np.int64)


def _closing_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds from the last session of a journey to its conversion: usually minutes."""
    gaps = rng.lognormal(math.log(8 * 60), 1.2, size=n)
    return np.maximum(np.rint(gaps), 1).astype(np.int64)


def _new_sessions_per_conversion(rng: np.random.Generator, n: int) -> np.ndarray:
    """How many sessions each conversion adds to its user's history (at least 1)."""
    head = NEW_SESSIONS_WEIGHTS / NEW_SESSIONS_WEIGHTS.sum()
    counts = rng.choice(len(head), size=n, p=head) + 1
    tail = rng.random(n) < LONG_TAIL_SHARE
    # Inverse CDF of a Pareto truncated at LONG_TAIL_MAX: no pile-up of journeys at the cap.
    cut = 1.0 - (TAIL_FROM / LONG_TAIL_MAX) ** LONG_TAIL_ALPHA
    pareto = np.floor(TAIL_FROM * (1.0 - cut * rng.random(n)) ** (-1.0 / LONG_TAIL_ALPHA))
    return np.where(tail, pareto, counts).astype(np.int64)


def _fit_offsets(offsets: np.ndarray, group: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Shrink each group's offsets so that all of them lie in ``[1, room - 1]``.

    Scaling keeps the order and the relative gaps of a journey that would otherwise start
    before the window (or before the user's previous conversion).
    """
    span = np.zeros(len(room), dtype=np.int64)
    np.maximum.at(span, group, offsets)
    limit = np.maximum(room - 1, 1)
    factor = np.minimum(1.0, limit / np.maximum(span, 1))
    scaled = np.floor(offsets * factor[group]).astype(np.int64)
    return np.clip(scaled, 1, limit[group])


def _conversion_times(
    rng: np.random.Generator, config: DemoConfig, buyer_of_conv: np.ndarray, rank: np.ndarray
) -> np.ndarray:
    """Conversion times in ``[start, end]``, ascending per buyer and spaced apart."""
    n = len(buyer_of_conv)
    first_day = config.lookback_days
    days = rng.integers(first_day, config.window_days, size=n)
    times = days * SECONDS_PER_DAY + _time_of_day(rng, n)
    # Sort each buyer's conversions by time (conversions are grouped by buyer already).
    order = np.lexsort((times, buyer_of_conv))
    times = times[order]
    # Keep every conversion at least MIN_CONVERSION_SPACING_S after the buyer's previous one
    # and away from both ends of the window, so every journey and every post-purchase visit
    # fits. Buyers have at most a handful of conversions, so one pass per rank is enough.
    low = first_day * SECONDS_PER_DAY + (MIN_CONVERSION_SPACING_S if first_day == 0 else 0)
    high = config.window_days * SECONDS_PER_DAY - MIN_CONVERSION_SPACING_S
    max_rank = int(rank.max())
    for r in range(max_rank + 1):
        at = np.flatnonzero(rank == r)
        floor = np.full(len(at), low) if r == 0 else times[at - 1] + MIN_CONVERSION_SPACING_S
        times[at] = np.maximum(times[at], floor)
    last = np.ones(n, dtype=bool)
    last[:-1] = buyer_of_conv[1:] != buyer_of_conv[:-1]
    for r in range(max_rank, -1, -1):
        at = np.flatnonzero(rank == r)
        ceiling = np.where(last[at], high, times[np.minimum(at + 1, n - 1)] - MIN_CONVERSION_SPACING_S)
        times[at] = np.minimum(times[at], ceiling)
    return times


def _channels_and_flags(
    rng: np.random.Generator, n: int, converting: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Channel index and the three engagement flags of ``n`` sessions."""
    weights = np.array([c.journey_weight if converting else c.noise_weight for c in CHANNELS])
    channel = rng.choice(len(CHANNELS), size=n, p=weights / weights.sum()).astype(np.int8)
    holder_p = np.array([c.holder for c in CHANNELS])
    closer_p = np.array([c.closer for c in CHANNELS])
    if not converting:
        holder_p = holder_p * NOISE_HOLDER_FACTOR
        closer_p = np.where(closer_p >= 1.0, 1.0, closer_p * NOISE_CLOSER_FACTOR)
    impression_p = np.array([c.impression for c in CHANNELS])
    holder = (rng.random(n) < holder_p[channel]).astype(np.int8)
    closer = (rng.random(n) < closer_p[channel]).astype(np.int8)
    impression = (rng.random(n) < impression_p[channel]).astype(np.int8)
    return channel, holder, closer, impression


def _costs(rng: np.random.Generator, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cost per session (NaN for NULL) and whether the session has a ``session_costs`` row."""
    n = len(channel)
    cpc = np.array([c.cpc for c in CHANNELS])[channel]
    # Log-normal with mean cpc: mu = log(cpc) - sigma^2 / 2.
    draw = rng.lognormal(-(COST_SIGMA**2) / 2, COST_SIGMA, size=n) * cpc
    cost = np.where(cpc > 0, np.round(np.clip(draw, COST_MIN, COST_MAX), 2), 0.0)
    quality = rng.random(n)
    cost[quality < NULL_COST_SHARE] = np.nan
    has_cost = quality >= NULL_COST_SHARE + MISSING_COST_SHARE
    has_cost |= quality < NULL_COST_SHARE
    return cost, has_cost


def build_tables(config: DemoConfig) -> DemoTables:
    """Draw every row of the demo database as numpy arrays (deterministic for a config)."""
    config.validate()
    # One independent stream per concern: changing how one part is drawn leaves the others as
    # they were.
    streams = np.random.SeedSequence(config.seed).spawn(9)
    rng_buyers, rng_conv, rng_journey, rng_post, rng_noise, rng_cost, rng_rev = (
        np.random.default_rng(s) for s in streams[:7]
    )
    id_keys = streams[7].generate_state(3, dtype=np.uint64)
    window_s = config.window_days * SECONDS_PER_DAY

    # Buyers and their conversions.
    per_buyer_p = CONVERSIONS_PER_BUYER_WEIGHTS / CONVERSIONS_PER_BUYER_WEIGHTS.sum()
    draws = rng_buyers.choice(len(per_buyer_p), size=config.conversions, p=per_buyer_p) + 1
    buyers = int(np.searchsorted(np.cumsum(draws), config.conversions)) + 1
    per_buyer = draws[:buyers].copy()
    per_buyer[-1] -= int(per_buyer.sum()) - config.conversions
    buyer_of_conv = np.repeat(np.arange(buyers), per_buyer)
    rank = np.arange(config.conversions) - np.repeat(np.cumsum(per_buyer) - per_buyer, per_buyer)
    conv_time = _conversion_times(rng_conv, config, buyer_of_conv, rank)
    revenue_mu = math.log(REVENUE_MEAN) - REVENUE_SIGMA**2 / 2
    revenue = np.maximum(np.round(rng_rev.lognormal(revenue_mu, REVENUE_SIGMA, config.conversions), 2), 0.01)

    # Journey sessions: counted back from each conversion, never earlier than the user's
    # previous conversion (or the window start), so each journey is exactly the previous one
    # plus its new sessions.
    new_sessions = _new_sessions_per_conversion(rng_journey, config.conversions)
    j_total = int(new_sessions.sum())
    j_conv = np.repeat(np.arange(config.conversions), new_sessions)
    # Offsets grow backwards in time: the first gap separates the last session from the order.
    first_of_group = np.zeros(j_total, dtype=bool)
    first_of_group[np.cumsum(new_sessions) - new_sessions] = True
    steps = np.where(first_of_group, _closing_gaps(rng_journey, j_total), _session_gaps(rng_journey, j_total))
    offsets = _grouped_cumsum(steps, new_sessions)
    previous = np.where(rank > 0, np.roll(conv_time, 1), 0)
    offsets = _fit_offsets(offsets, j_conv, conv_time - previous)
    j_time = conv_time[j_conv] - offsets
    j_user = buyer_of_conv[j_conv]

    # Some buyers come back after their last order: sessions that belong to no journey.
    last_conv = np.flatnonzero(np.append(buyer_of_conv[1:] != buyer_of_conv[:-1], True))
    returning = last_conv[rng_post.random(len(last_conv)) < POST_PURCHASE_SHARE]
    p_counts = np.minimum(rng_post.geometric(0.5, size=len(returning)), 5)
    p_conv = np.repeat(returning, p_counts)
    p_offsets = _grouped_cumsum(_session_gaps(rng_post, len(p_conv)), p_counts)
    room = np.zeros(config.conversions, dtype=np.int64)
    room[returning] = window_s - conv_time[returning]
    p_time = conv_time[p_conv] + _fit_offsets(p_offsets, p_conv, room)
    p_user = buyer_of_conv[p_conv]

    # Everything else is traffic of users who never convert, spread evenly over the window.
    target = round(config.conversions * config.sessions_per_conversion)
    n_noise = max(target - j_total - len(p_conv), 0)
    noise_users = _noise_user_count(config, buyers, n_noise)
    n_time, n_user = _noise_sessions(rng_noise, config, n_noise, noise_users)
    n_user = n_user + buyers

    sessions = j_total + len(p_conv) + n_noise
    j_ch, j_h, j_c, j_i = _channels_and_flags(rng_journey, j_total + len(p_conv), converting=True)
    n_ch, n_h, n_c, n_i = _channels_and_flags(rng_noise, n_noise, converting=False)
    channel = np.concatenate((j_ch, n_ch))
    cost, has_cost = _costs(rng_cost, channel)
    bad = _bad_rows(np.random.default_rng(streams[8]), config, per_buyer, buyer_of_conv, j_conv,
                    int(id_keys[0]), buyers + noise_users)
    return DemoTables(
        config=config,
        user_ids=_hex_ids(_scramble(np.arange(buyers + noise_users), int(id_keys[0]))),
        session_keys=_scramble(np.arange(sessions), int(id_keys[1])),
        session_user=np.concatenate((j_user, p_user, n_user)),
        session_time=np.concatenate((j_time, p_time, n_time)),
        session_channel=channel,
        holder=np.concatenate((j_h, n_h)),
        closer=np.concatenate((j_c, n_c)),
        impression=np.concatenate((j_i, n_i)),
        cost=cost,
        has_cost=has_cost,
        conv_keys=_scramble(np.arange(config.conversions), int(id_keys[2])),
        conv_user=buyer_of_conv,
        conv_time=conv_time,
        revenue=revenue,
        buyers=buyers,
        repeat_buyers=int((per_buyer > 1).sum()),
        journey_sessions=j_total,
        post_purchase_sessions=len(p_conv),
        **bad,
    )


def _bad_rows(
    rng: np.random.Generator,
    config: DemoConfig,
    per_buyer: np.ndarray,
    buyer_of_conv: np.ndarray,
    j_conv: np.ndarray,
    user_key: int,
    users: int,
) -> dict[str, np.ndarray]:
    """Pick the bad rows of :data:`BAD_ROWS`: each on a different one-time buyer's conversion.

    A conversion without sessions gets a user id of its own (drawn like every other, after the
    last user), so its buyer's sessions stay as visits of someone who never bought. A malformed
    session is one of another such conversion's journey.
    """
    wanted = sum(BAD_ROWS.values())
    single = np.flatnonzero(per_buyer[buyer_of_conv] == 1)
    if not config.bad_rows or len(single) < 2 * wanted:
        return {}
    convs = rng.choice(single, size=wanted, replace=False)
    n_sessionless = BAD_ROWS["conversion_without_sessions"]
    n_date = BAD_ROWS["session_impossible_date"]
    malformed = []
    for conv in convs[n_sessionless:]:
        malformed.append(int(rng.choice(np.flatnonzero(j_conv == conv))))
    sessionless = np.sort(convs[:n_sessionless])
    return {
        "sessionless_convs": sessionless,
        "sessionless_user_ids": _hex_ids(_scramble(np.arange(users, users + len(sessionless)), user_key)),
        "bad_date_sessions": np.array(malformed[:n_date], dtype=np.int64),
        "bad_channel_sessions": np.array(malformed[n_date:], dtype=np.int64),
    }


def _noise_user_count(config: DemoConfig, buyers: int, n_noise: int) -> int:
    """Number of non-converting users: what ``users`` leaves after the buyers, or a default."""
    if n_noise == 0:
        return 0
    if config.users is None:
        # Most visitors come once or twice; a few come back often.
        return max(1, round(n_noise / 2.4))
    noise_users = config.users - buyers
    if not 1 <= noise_users <= n_noise:
        raise ValueError(
            f"users={config.users} does not fit: {buyers} buyers plus 1..{n_noise} "
            f"non-converting users (each with at least one session)"
        )
    return noise_users


def _noise_sessions(
    rng: np.random.Generator, config: DemoConfig, n: int, users: int
) -> tuple[np.ndarray, np.ndarray]:
    """Times and user indexes of ``n`` sessions of ``users`` non-converting users."""
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Every user has a first session; the rest go to users in proportion to a log-normal
    # activity, which gives the usual mix of one-off visitors and a few heavy returners.
    activity = rng.lognormal(0.0, 1.0, size=users)
    extra = rng.choice(users, size=n - users, p=activity / activity.sum())
    counts = 1 + np.bincount(extra, minlength=users)
    user = np.repeat(np.arange(users), counts)
    steps = _session_gaps(rng, n)
    steps[np.cumsum(counts) - counts] = 0
    offsets = _grouped_cumsum(steps, counts)
    window_s = config.window_days * SECONDS_PER_DAY
    anchor = rng.integers(0, config.window_days, size=users) * SECONDS_PER_DAY + _time_of_day(rng, users)
    # Wrapping around the window keeps the traffic density flat over every day (a visit
    # history that would run past the end continues at the start) and the session count
    # exact, with no clipping that would pile sessions up at the edges.
    return (anchor[user] + offsets) % window_s, user


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _day_strings(start: dt.date, days: int) -> np.ndarray:
    return np.array([(start + dt.timedelta(days=d)).isoformat() for d in range(days)], dtype=object)


def _time_strings() -> np.ndarray:
    return np.array(
        [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(SECONDS_PER_DAY)], dtype=object
    )


def _chunks(rows: Iterable[tuple], size: int) -> Iterator[Iterator[tuple]]:
    """Consecutive slices of at most ``size`` rows, as iterators (no list is materialised)."""
    iterator = iter(rows)
    while (first := next(iterator, None)) is not None:
        yield chain((first,), islice(iterator, size - 1))


def _insert(conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    placeholders = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
    for chunk in _chunks(rows, INSERT_CHUNK):
        conn.executemany(sql, chunk)


def write_database(path: Path, tables: DemoTables) -> None:
    """Create the challenge schema in a new SQLite file at ``path`` and fill the source tables.

    Rows go in ordered by primary key: appending to the primary-key indexes is several times
    faster than inserting at random places, and the order of rows in a table carries no meaning.
    """
    days = _day_strings(tables.config.window_start, tables.config.window_days)
    clock = _time_strings()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Nothing to protect while the file is being built: it is renamed into place only once
        # complete, so journaling and fsync would only cost time.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.executescript(challenge_ddl())
        conn.execute("BEGIN")

        # Keys are unique, and hex of a 64-bit value sorts like the value.
        order = np.argsort(tables.session_keys)
        session_ids = _hex_ids(tables.session_keys[order])
        t = tables.session_time[order]
        session_dates = days[t // SECONDS_PER_DAY]
        session_channels = np.array(CHANNEL_NAMES, dtype=object)[tables.session_channel[order]]
        for at in np.flatnonzero(np.isin(order, tables.bad_date_sessions)):
            session_dates[at] = session_dates[at][:8] + "00"  # day 00 of the session's month
        session_channels[np.isin(order, tables.bad_channel_sessions)] = ""
        session_rows = zip(
            session_ids.tolist(),
            tables.user_ids[tables.session_user[order]].tolist(),
            session_dates.tolist(),
            clock[t % SECONDS_PER_DAY].tolist(),
            session_channels.tolist(),
            tables.holder[order].tolist(),
            tables.closer[order].tolist(),
            tables.impression[order].tolist(),
            strict=True,
        )
        _insert(
            conn,
            SESSION_SOURCES,
            ("session_id", "user_id", "event_date", "event_time", "channel_name",
             "holder_engagement", "closer_engagement", "impression_interaction"),
            session_rows,
        )  # fmt: skip

        with_cost = tables.has_cost[order]
        costs = tables.cost[order][with_cost]
        cost_values = np.where(np.isnan(costs), None, costs).tolist()
        cost_rows = zip(session_ids[with_cost].tolist(), cost_values, strict=True)
        _insert(conn, SESSION_COSTS, ("session_id", "cost"), cost_rows)

        corder = np.argsort(tables.conv_keys)
        ct = tables.conv_time[corder]
        conv_users = tables.user_ids[tables.conv_user[corder]]
        for conv, user in zip(tables.sessionless_convs.tolist(), tables.sessionless_user_ids.tolist(), strict=True):
            conv_users[corder == conv] = user
        conv_rows = zip(
            _hex_ids(tables.conv_keys[corder]).tolist(),
            conv_users.tolist(),
            days[ct // SECONDS_PER_DAY].tolist(),
            clock[ct % SECONDS_PER_DAY].tolist(),
            tables.revenue[corder].tolist(),
            strict=True,
        )
        _insert(conn, CONVERSIONS, ("conv_id", "user_id", "conv_date", "conv_time", "revenue"), conv_rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def generate(
    path: str | os.PathLike[str], config: DemoConfig | None = None, *, overwrite: bool = False
) -> DemoSummary:
    """Write a demo challenge database to ``path`` and describe it.

    The file is built under a temporary name in the same folder and renamed into place when
    complete, so ``path`` holds either its previous content or the full new database.

    :param path: the SQLite file to create.
    :param config: what to generate; :class:`DemoConfig` defaults if omitted.
    :param overwrite: replace an existing file; otherwise an existing ``path`` raises
        ``FileExistsError`` and is left untouched.
    """
    config = config or DemoConfig()
    started = time.perf_counter()
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (use overwrite to replace it)")
    tables = build_tables(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target, so the final rename is atomic. SQLite creates the file itself,
    # with the usual permissions (mkstemp's would be owner-only).
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write_database(tmp, tables)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} appeared while generating (use overwrite to replace it)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return _summarise(target, tables, time.perf_counter() - started)


def _summarise(path: Path, tables: DemoTables, seconds: float) -> DemoSummary:
    config = tables.config
    times = tables.session_time
    start_s = config.lookback_days * SECONDS_PER_DAY
    first = config.window_start + dt.timedelta(days=int(times.min()) // SECONDS_PER_DAY)
    last = config.window_start + dt.timedelta(days=int(times.max()) // SECONDS_PER_DAY)
    return DemoSummary(
        path=path,
        sessions=len(times),
        conversions=len(tables.conv_keys),
        users=len(tables.user_ids),
        buyers=tables.buyers,
        repeat_buyers=tables.repeat_buyers,
        journey_sessions=tables.journey_sessions,
        post_purchase_sessions=tables.post_purchase_sessions,
        noise_sessions=len(times) - tables.journey_sessions - tables.post_purchase_sessions,
        sessions_before_start=int((times < start_s).sum()),
        cost_rows=int(tables.has_cost.sum()),
        null_costs=int((tables.has_cost & np.isnan(tables.cost)).sum()),
        total_revenue=round(float(tables.revenue.sum()), 2),
        first_session_date=first.isoformat(),
        last_session_date=last.isoformat(),
        seconds=seconds,
        conversions_without_sessions=len(tables.sessionless_convs),
        malformed_sessions=len(tables.bad_date_sessions) + len(tables.bad_channel_sessions),
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ihc_attribution_dev.demo_data",
        description="Generate a realistic demo database with the challenge schema (SQLite).",
    )
    parser.add_argument("--out", required=True, type=Path, help="SQLite file to create")
    parser.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=defaults.start,
        help="first day with conversions, YYYY-MM-DD (default %(default)s)",
    )
    parser.add_argument(
        "--end",
        type=dt.date.fromisoformat,
        default=defaults.end,
        help="last day with conversions, inclusive (default %(default)s)",
    )
    parser.add_argument(
        "--conversions",
        type=int,
        default=defaults.conversions,
        help="number of conversions (default %(default)s)",
    )
    parser.add_argument(
        "--sessions-per-conversion",
        type=float,
        default=defaults.sessions_per_conversion,
        help="total sessions per conversion (default %(default)s; the real data had ~225)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=None,
        help="total distinct users (default: about 2.4 sessions per non-converting user)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    parser.add_argument(
        "--lookback-days",
        type=int,
        default=defaults.lookback_days,
        help="days before --start that sessions reach back (default %(default)s)",
    )
    parser.add_argument("--no-bad-rows", dest="bad_rows", action="store_false",
                        help="leave out the few bad rows (conversions without sessions, malformed sessions)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = _parse_args(argv)
    config = DemoConfig(
        start=args.start,
        end=args.end,
        conversions=args.conversions,
        sessions_per_conversion=args.sessions_per_conversion,
        users=args.users,
        seed=args.seed,
        lookback_days=args.lookback_days,
        bad_rows=args.bad_rows,
    )
    try:
        summary = generate(args.out, config, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
