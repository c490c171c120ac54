"""Every row of the demo database as numpy arrays, drawn from one seed.

The figures come from :mod:`.demo_profile`. Pure numpy, no I/O: :func:`build_tables` turns a
:class:`~.demo_data.DemoConfig` into :class:`DemoTables`, which :mod:`.demo_data` writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ihc_attribution_dev import demo_profile as profile

if TYPE_CHECKING:
    from ihc_attribution_dev.demo_data import DemoConfig

SECONDS_PER_DAY = 86_400


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
    sessionless_convs: np.ndarray
    sessionless_user_ids: np.ndarray
    #: sessions (indexes) written with an impossible date / an empty channel (all empty without bad rows)
    bad_date_sessions: np.ndarray
    bad_channel_sessions: np.ndarray


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


def hex_ids(values: np.ndarray) -> np.ndarray:
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
    hours = rng.choice(24, size=n, p=profile.HOUR_WEIGHTS / profile.HOUR_WEIGHTS.sum())
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
    head = profile.NEW_SESSIONS_WEIGHTS / profile.NEW_SESSIONS_WEIGHTS.sum()
    counts = rng.choice(len(head), size=n, p=head) + 1
    tail = rng.random(n) < profile.LONG_TAIL_SHARE
    # Inverse CDF of a Pareto truncated at LONG_TAIL_MAX: no pile-up of journeys at the cap.
    cut = 1.0 - (profile.TAIL_FROM / profile.LONG_TAIL_MAX) ** profile.LONG_TAIL_ALPHA
    pareto = np.floor(profile.TAIL_FROM * (1.0 - cut * rng.random(n)) ** (-1.0 / profile.LONG_TAIL_ALPHA))
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
    low = first_day * SECONDS_PER_DAY + (profile.MIN_CONVERSION_SPACING_S if first_day == 0 else 0)
    high = config.window_days * SECONDS_PER_DAY - profile.MIN_CONVERSION_SPACING_S
    max_rank = int(rank.max())
    for r in range(max_rank + 1):
        at = np.flatnonzero(rank == r)
        floor = np.full(len(at), low) if r == 0 else times[at - 1] + profile.MIN_CONVERSION_SPACING_S
        times[at] = np.maximum(times[at], floor)
    last = np.ones(n, dtype=bool)
    last[:-1] = buyer_of_conv[1:] != buyer_of_conv[:-1]
    for r in range(max_rank, -1, -1):
        at = np.flatnonzero(rank == r)
        ceiling = np.where(last[at], high, times[np.minimum(at + 1, n - 1)] - profile.MIN_CONVERSION_SPACING_S)
        times[at] = np.minimum(times[at], ceiling)
    return times


def _channels_and_flags(
    rng: np.random.Generator, n: int, converting: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Channel index and the three engagement flags of ``n`` sessions."""
    weights = np.array([c.journey_weight if converting else c.noise_weight for c in profile.CHANNELS])
    channel = rng.choice(len(profile.CHANNELS), size=n, p=weights / weights.sum()).astype(np.int8)
    holder_p = np.array([c.holder for c in profile.CHANNELS])
    closer_p = np.array([c.closer for c in profile.CHANNELS])
    if not converting:
        holder_p = holder_p * profile.NOISE_HOLDER_FACTOR
        closer_p = np.where(closer_p >= 1.0, 1.0, closer_p * profile.NOISE_CLOSER_FACTOR)
    impression_p = np.array([c.impression for c in profile.CHANNELS])
    holder = (rng.random(n) < holder_p[channel]).astype(np.int8)
    closer = (rng.random(n) < closer_p[channel]).astype(np.int8)
    impression = (rng.random(n) < impression_p[channel]).astype(np.int8)
    return channel, holder, closer, impression


def _costs(rng: np.random.Generator, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cost per session (NaN for NULL) and whether the session has a ``session_costs`` row."""
    n = len(channel)
    cpc = np.array([c.cpc for c in profile.CHANNELS])[channel]
    # Log-normal with mean cpc: mu = log(cpc) - sigma^2 / 2.
    draw = rng.lognormal(-(profile.COST_SIGMA**2) / 2, profile.COST_SIGMA, size=n) * cpc
    cost = np.where(cpc > 0, np.round(np.clip(draw, profile.COST_MIN, profile.COST_MAX), 2), 0.0)
    quality = rng.random(n)
    cost[quality < profile.NULL_COST_SHARE] = np.nan
    has_cost = quality >= profile.NULL_COST_SHARE + profile.MISSING_COST_SHARE
    has_cost |= quality < profile.NULL_COST_SHARE
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
    per_buyer_p = profile.CONVERSIONS_PER_BUYER_WEIGHTS / profile.CONVERSIONS_PER_BUYER_WEIGHTS.sum()
    draws = rng_buyers.choice(len(per_buyer_p), size=config.conversions, p=per_buyer_p) + 1
    buyers = int(np.searchsorted(np.cumsum(draws), config.conversions)) + 1
    per_buyer = draws[:buyers].copy()
    per_buyer[-1] -= int(per_buyer.sum()) - config.conversions
    buyer_of_conv = np.repeat(np.arange(buyers), per_buyer)
    rank = np.arange(config.conversions) - np.repeat(np.cumsum(per_buyer) - per_buyer, per_buyer)
    conv_time = _conversion_times(rng_conv, config, buyer_of_conv, rank)
    revenue_mu = math.log(profile.REVENUE_MEAN) - profile.REVENUE_SIGMA**2 / 2
    revenue = np.maximum(np.round(rng_rev.lognormal(revenue_mu, profile.REVENUE_SIGMA, config.conversions), 2), 0.01)

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
    returning = last_conv[rng_post.random(len(last_conv)) < profile.POST_PURCHASE_SHARE]
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
        user_ids=hex_ids(_scramble(np.arange(buyers + noise_users), int(id_keys[0]))),
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
    """Pick the bad rows of :data:`.demo_profile.BAD_ROWS`: each on a different one-time buyer's conversion.

    A conversion without sessions gets a user id of its own (drawn like every other, after the
    last user), so its buyer's sessions stay as visits of someone who never bought. A malformed
    session is one of another such conversion's journey.
    """
    wanted = sum(profile.BAD_ROWS.values())
    single = np.flatnonzero(per_buyer[buyer_of_conv] == 1)
    convs = np.zeros(0, np.int64)
    if config.bad_rows and len(single) >= 2 * wanted:
        convs = rng.choice(single, size=wanted, replace=False)
    n_sessionless = profile.BAD_ROWS["conversion_without_sessions"]
    n_date = profile.BAD_ROWS["session_impossible_date"]
    malformed = [int(rng.choice(np.flatnonzero(j_conv == conv))) for conv in convs[n_sessionless:]]
    sessionless = np.sort(convs[:n_sessionless])
    return {
        "sessionless_convs": sessionless,
        "sessionless_user_ids": hex_ids(_scramble(np.arange(users, users + len(sessionless)), user_key)),
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
