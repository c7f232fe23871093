"""Marketing messages of one chunk of customers: when they are sent, the logging policy's
channel and offer with its propensities, opens, clicks and conversions, and the purchases and
product views the messages cause.

Every function draws from the chunk's messages generator; `messages` calls them in one fixed
order, which the output depends on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._chunk import CustomerChunk, Rows, concat_rows, event_rows, within_group_index
from ._parameters import (
    APP,
    CONVERSION_DELAY_MEAN_DAYS,
    CONVERSION_WINDOW_DAYS,
    DEFAULT_CHANNEL_PRIORITY,
    DEFAULT_HOUR,
    DEFAULT_SEND_JITTER_MINUTES,
    EXPLORE_HOURS,
    EXPLORE_SHARE,
    MAX_OPEN_DELAY_HOURS,
    MESSAGE_CHANNELS,
    OFFERS,
    OPEN_DELAY_MEAN_HOURS,
    PURCHASE,
    STORE,
    TREATMENTS,
    VIEW,
    WEB,
)
from ._time import US_PER_DAY, US_PER_SECOND, hours_to_us, local_to_utc
from ._truth import click_given_open_probability, message_open_probability


def messages(
    chunk: CustomerChunk, rng: np.random.Generator, organic_parts: list[Rows]
) -> tuple[Rows, list[Rows]]:
    """The chunk's messages (observed columns and truth, one row each) and the events they cause:
    the purchases of new conversion orders and the product views of clicks. `organic_parts` are
    the chunk's organic events, whose orders take the credit for conversions that would have
    happened anyway."""
    sends = _sends(chunk, rng)
    policy = _logging_policy(sends, rng)
    outcome = _outcomes(chunk, sends, policy, rng)
    revenue, purchases = _conversions(chunk, sends, policy.arm, outcome, organic_parts, rng)
    clicks = np.flatnonzero(outcome.clicked)
    # a click lands on a product page
    views = event_rows(
        sends.cust[clicks],
        outcome.clicked_ts[clicks],
        outcome.land_channel[clicks],
        VIEW,
        chunk.taste_products(sends.cust[clicks], rng),
        1.0,
        -1,
    )
    return _message_columns(sends, policy, outcome, revenue), [purchases, views]


@dataclass
class _Sends:
    """The messages of the chunk, one row each: customer (local and global index), local day,
    whether the policy explored, the local send hour (slot and fractional), the UTC send instant
    and the message channels consented at that instant."""

    cust: np.ndarray
    g: np.ndarray
    day: np.ndarray
    explore: np.ndarray
    hour_slot: np.ndarray
    local_hour: np.ndarray
    sent: np.ndarray
    allowed: np.ndarray  # (messages, message channels)
    n_allowed: np.ndarray


@dataclass
class _Policy:
    """The logging policy's channel and treatment arm of each message, and their propensities."""

    channel: np.ndarray
    arm: np.ndarray  # 0 = plain message, 1.. = OFFERS[arm - 1]
    propensity_channel: np.ndarray
    propensity_hour: np.ndarray
    propensity_offer: np.ndarray
    propensity: np.ndarray


@dataclass
class _Outcomes:
    """What each message led to, with the truth probabilities it was drawn from."""

    weekday: np.ndarray
    p_open: np.ndarray
    opened: np.ndarray
    opened_ts: np.ndarray
    p_click: np.ndarray
    clicked: np.ndarray
    clicked_ts: np.ndarray
    p_control: np.ndarray
    p_if_opened: np.ndarray
    p_treated: np.ndarray
    converted: np.ndarray
    baseline: np.ndarray  # converted, and would have without the message
    window_end: np.ndarray
    converted_ts: np.ndarray
    land_channel: np.ndarray  # the digital channel a click or a new conversion order lands in


def _sends(chunk: CustomerChunk, rng: np.random.Generator) -> _Sends:
    """Message days of each reachable customer, and the send time (the logging policy, part 1:
    explore a uniform hour slot, or the default 10:00 + jitter); customers with no channel
    consented at that instant are not messaged."""
    pop, win = chunk.pop, chunk.win
    sl = slice(chunk.lo, chunk.hi)
    reachable = ~pop.holdout[sl] & pop.consent_opted[sl].any(axis=1)
    signup_day = np.floor_divide(pop.signup_us[sl] - win.start_us, US_PER_DAY)
    first_day = np.maximum(1, signup_day + 2)
    last_day = win.days - 1 - CONVERSION_WINDOW_DAYS  # every outcome window ends inside the history
    eligible_days = np.clip(last_day - first_day + 1, 0, None) * reachable
    cust = np.repeat(np.arange(chunk.n), rng.poisson(pop.message_intensity[sl] * eligible_days / 365.0))
    g = chunk.global_index(cust)
    m = cust.size
    day = first_day[cust] + (rng.random(m) * eligible_days[cust]).astype(np.int64)

    explore = rng.random(m) < EXPLORE_SHARE
    hour_slot = np.where(explore, rng.integers(EXPLORE_HOURS[0], EXPLORE_HOURS[-1] + 1, m), DEFAULT_HOUR)
    minutes = np.where(explore, rng.random(m) * 60.0, rng.random(m) * DEFAULT_SEND_JITTER_MINUTES)
    local_hour = hour_slot + minutes / 60.0
    sent = local_to_utc(win.local_midnight_us[day] + hours_to_us(local_hour), pop.tz[g])

    allowed = (
        pop.consent_opted[g] & (pop.consent_us[g] <= sent[:, None]) & (sent[:, None] < pop.opt_out_us[g])
    )
    n_allowed = allowed.sum(axis=1)
    keep = n_allowed > 0
    return _Sends(
        cust=cust[keep],
        g=g[keep],
        day=day[keep],
        explore=explore[keep],
        hour_slot=hour_slot[keep],
        local_hour=local_hour[keep],
        sent=sent[keep],
        allowed=allowed[keep],
        n_allowed=n_allowed[keep],
    )


def _logging_policy(sends: _Sends, rng: np.random.Generator) -> _Policy:
    """The logging policy, part 2: exploring messages take a uniform consented channel and a
    uniform treatment; the others the first consented channel of the business rule and no offer.
    The propensities are those of the mixture."""
    explore, allowed, n_allowed = sends.explore, sends.allowed, sends.n_allowed
    m = sends.cust.size
    priority = [MESSAGE_CHANNELS.index(ch) for ch in DEFAULT_CHANNEL_PRIORITY]
    default_channel = np.array(priority)[np.argmax(allowed[:, priority], axis=1)]
    pick = (rng.random(m) * n_allowed).astype(np.int64)
    random_channel = np.argmax(np.cumsum(allowed, axis=1) > pick[:, None], axis=1)
    channel = np.where(explore, random_channel, default_channel)
    arm = np.where(explore, rng.integers(0, len(TREATMENTS), m), 0)
    is_default_channel = channel == default_channel
    is_default_hour = sends.hour_slot == DEFAULT_HOUR
    return _Policy(
        channel=channel,
        arm=arm,
        propensity_channel=EXPLORE_SHARE / n_allowed + (1 - EXPLORE_SHARE) * is_default_channel,
        propensity_hour=EXPLORE_SHARE / len(EXPLORE_HOURS) + (1 - EXPLORE_SHARE) * is_default_hour,
        propensity_offer=EXPLORE_SHARE / len(TREATMENTS) + (1 - EXPLORE_SHARE) * (arm == 0),
        propensity=EXPLORE_SHARE / (n_allowed * len(EXPLORE_HOURS) * len(TREATMENTS))
        + (1 - EXPLORE_SHARE) * (is_default_channel & is_default_hour & (arm == 0)),
    )


def _outcomes(chunk: CustomerChunk, sends: _Sends, policy: _Policy, rng: np.random.Generator) -> _Outcomes:
    """Open, click and conversion of each message, their instants, and the channel it lands in."""
    pop, win = chunk.pop, chunk.win
    g, sent, channel, arm = sends.g, sends.sent, policy.channel, policy.arm
    m = g.size
    weekday = win.weekday[sends.day]
    p_open = message_open_probability(
        channel,
        pop.responsiveness[g, channel],
        sends.local_hour,
        weekday,
        pop.pref_hour[g],
        pop.pref_width[g],
        pop.weekend_pref[g],
    )
    opened = rng.random(m) < p_open
    open_delay = np.minimum(rng.exponential(OPEN_DELAY_MEAN_HOURS[channel]), MAX_OPEN_DELAY_HOURS)
    opened_ts = sent + hours_to_us(open_delay) + 5 * US_PER_SECOND
    p_click = click_given_open_probability(pop.responsiveness[g, channel], arm)
    clicked = opened & (rng.random(m) < p_click)
    clicked_ts = opened_ts + ((10 + rng.exponential(240.0, m)) * US_PER_SECOND).astype(np.int64)

    p_control = pop.p_base[g]
    p_if_opened = np.clip(p_control + pop.uplift[g, arm], 0.0, 1.0)
    u_convert = rng.random(m)
    converted = u_convert < np.where(opened, p_if_opened, p_control)
    window_end = sent + CONVERSION_WINDOW_DAYS * US_PER_DAY - US_PER_SECOND
    after_open = np.where(clicked, clicked_ts, opened_ts) + (
        rng.exponential(CONVERSION_DELAY_MEAN_DAYS, m) * US_PER_DAY
    ).astype(np.int64)
    anytime = sent + (rng.random(m) * (CONVERSION_WINDOW_DAYS * US_PER_DAY)).astype(np.int64)

    # the digital channel the customer lands in: push opens the app
    share_app = pop.shop_mix[g, APP] / np.maximum(pop.shop_mix[g, APP] + pop.shop_mix[g, WEB], 1e-9)
    land_app = (channel == MESSAGE_CHANNELS.index("push")) | (rng.random(m) < share_app)
    return _Outcomes(
        weekday=weekday,
        p_open=p_open,
        opened=opened,
        opened_ts=opened_ts,
        p_click=p_click,
        clicked=clicked,
        clicked_ts=clicked_ts,
        p_control=p_control,
        p_if_opened=p_if_opened,
        p_treated=p_control + p_open * (p_if_opened - p_control),
        converted=converted,
        # a conversion below p_base would have happened without the message ("baseline"); it is
        # credited to an organic order in the window when the customer has one
        baseline=converted & (u_convert < p_control),
        window_end=window_end,
        converted_ts=np.minimum(np.where(opened, after_open, anytime), window_end),
        land_channel=np.where(land_app & pop.has_app[g], APP, WEB),
    )


def _conversions(
    chunk: CustomerChunk,
    sends: _Sends,
    arm: np.ndarray,
    outcome: _Outcomes,
    organic_parts: list[Rows],
    rng: np.random.Generator,
) -> tuple[np.ndarray, Rows]:
    """Revenue per message and the purchase rows of new conversion orders.

    A baseline conversion goes to the customer's first organic order in the window when there is
    one (`outcome.converted_ts` becomes that order's time); every other conversion is a new order
    in the landing channel. Revenue is the order value net of the offer."""
    cat = chunk.cat
    m = sends.cust.size
    discount_pct = np.array([0.0, *(o.value if o.kind == "discount" else 0.0 for o in OFFERS)])
    bogo_arm = TREATMENTS.index("OF_BOGO")
    gross = np.zeros(m)
    first_price = np.zeros(m)

    organic = _order_index(chunk, organic_parts)
    lookup = np.flatnonzero(outcome.baseline)
    found, order_pos = organic.first_between(
        sends.cust[lookup], sends.sent[lookup], outcome.window_end[lookup]
    )
    credited = lookup[found]
    outcome.converted_ts[credited] = organic.ts[order_pos[found]]
    gross[credited] = organic.gross[order_pos[found]]

    # new orders for the other conversions; they appear as web/app purchases in events
    conv = np.setdiff1d(np.flatnonzero(outcome.converted), credited)
    n_lines = 1 + rng.poisson(0.6, conv.size)
    line_conv = np.repeat(np.arange(conv.size), n_lines)
    line_cust = sends.cust[conv][line_conv]
    product = chunk.taste_products(line_cust, rng)
    qty = chunk.quantity(product, rng)
    first_line = within_group_index(n_lines) == 0
    qty = np.where(first_line & (arm[conv][line_conv] == bogo_arm), np.maximum(qty, 2.0), qty)
    amount = np.round(cat.price[product] * qty, 2)
    gross[conv] = np.bincount(line_conv, weights=amount, minlength=conv.size)
    first_price[conv[line_conv[first_line]]] = cat.price[product[first_line]]
    orders = chunk.new_orders(conv.size)
    purchases = event_rows(
        line_cust,
        outcome.converted_ts[conv][line_conv] + within_group_index(n_lines),
        outcome.land_channel[conv][line_conv],
        PURCHASE,
        product,
        qty,
        orders[line_conv],
    )
    # revenue net of the offer: percent off for discounts; for BOGO the free unit of new orders
    # (an organic order credited to a BOGO message gets its free unit on top)
    revenue = gross * (1 - discount_pct[arm] / 100.0) - np.where(arm == bogo_arm, first_price, 0.0)
    return revenue, purchases


def _message_columns(sends: _Sends, policy: _Policy, outcome: _Outcomes, revenue: np.ndarray) -> Rows:
    """The scratch columns of the chunk's messages: what `messages.parquet` and the truth's
    messages are written from (-1 for an instant that did not happen)."""
    converted = outcome.converted
    return {
        "gidx": sends.g.astype(np.int64),
        "seq": np.arange(sends.g.size, dtype=np.int64),
        "sent": sends.sent,
        "channel": policy.channel.astype(np.int8),
        "week": (sends.day // 7 + 1).astype(np.int64),
        "arm": policy.arm.astype(np.int8),
        "opened": np.where(outcome.opened, outcome.opened_ts, -1),
        "clicked": np.where(outcome.clicked, outcome.clicked_ts, -1),
        "converted": np.where(converted, outcome.converted_ts, -1),
        "revenue": np.where(converted, np.round(revenue, 2), np.nan),
        "explore": sends.explore,
        "local_hour": sends.local_hour,
        "weekday": outcome.weekday.astype(np.int8),
        "propensity_channel": policy.propensity_channel,
        "propensity_hour": policy.propensity_hour,
        "propensity_offer": policy.propensity_offer,
        "propensity": policy.propensity,
        "p_open": outcome.p_open,
        "p_click": outcome.p_click,
        "p_if_opened": outcome.p_if_opened,
        "p_treated": outcome.p_treated,
        "p_control": outcome.p_control,
    }


class _OrderIndex:
    """Orders sorted by (customer, first timestamp), to find a customer's first order in a time
    range with one vectorised search on the key customer * 2**TIME_BITS + (ts - origin)."""

    TIME_BITS = 47  # 2**47 µs is about 4.4 years; customer numbers in a chunk need < 16 bits

    def __init__(self, cust, ts, gross, origin_us: int):
        self.origin = origin_us
        key = self._key(cust, ts)
        order = np.argsort(key, kind="stable")
        self.key, self.ts, self.gross = key[order], ts[order], gross[order]

    def _key(self, cust, ts) -> np.ndarray:
        return (np.asarray(cust, dtype=np.int64) << self.TIME_BITS) + (
            np.asarray(ts, dtype=np.int64) - self.origin
        )

    def first_between(self, cust, ts_from, ts_to) -> tuple[np.ndarray, np.ndarray]:
        """(found, position) of each customer's first order with ts_from <= ts <= ts_to."""
        pos = np.searchsorted(self.key, self._key(cust, ts_from), side="left")
        safe = np.minimum(pos, max(self.key.size - 1, 0))
        found = (
            (pos < self.key.size) & (self.key[safe] <= self._key(cust, ts_to)) if self.key.size else pos < 0
        )
        return found, safe


def _order_index(chunk: CustomerChunk, parts: list[Rows]) -> _OrderIndex:
    """The chunk's organic orders that will be observed, searchable by (customer, time)."""
    assert chunk.n < 2 ** (63 - _OrderIndex.TIME_BITS)  # local customer numbers fit above the time
    ev = concat_rows(parts)
    g = chunk.global_index(ev["cust"])
    sel = (ev["etype"] == PURCHASE) & (ev["order"] >= 0)
    sel &= (ev["ts"] >= chunk.win.start_us) & (ev["ts"] < chunk.win.end_us)
    sel &= ~((ev["channel"] == STORE) & ~chunk.pop.has_loyalty[g])
    rows = np.flatnonzero(sel)
    rows = rows[np.lexsort((ev["ts"][rows], ev["order"][rows]))]
    amount = np.round(chunk.cat.price[ev["product"][rows]] * ev["qty"][rows], 2)
    _, first, inverse = np.unique(ev["order"][rows], return_index=True, return_inverse=True)
    gross = np.bincount(inverse, weights=amount, minlength=first.size)
    first_rows = rows[first]
    return _OrderIndex(ev["cust"][first_rows], ev["ts"][first_rows], gross, chunk.win.start_us)
