"""Organic shopping of one chunk of customers: session days and times, store and call-centre
baskets, web/app/social browsing and what carts become, complements, replenishments and returns.

Every function draws from the chunk's events generator; `organic_events` calls them in one fixed
order, which the output depends on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._chunk import CustomerChunk, Rows, concat_rows, event_rows, within_group_index
from ._parameters import (
    ADD_TO_CART,
    APP,
    CALL_CENTER,
    CATEGORIES,
    COMPLEMENT_ATTACH,
    PURCHASE,
    RETURN,
    RETURN_SHARE,
    SEARCH,
    SOCIAL_SHOP,
    STORE,
    VIEW,
    WEB,
)
from ._time import US_PER_DAY, US_PER_HOUR, US_PER_MINUTE, US_PER_SECOND, hours_to_us, local_to_utc


def organic_events(chunk: CustomerChunk, rng: np.random.Generator) -> list[Rows]:
    """The chunk's shopping without any message: searches, views and cart additions, then every
    purchase (with complements and replenishments) and the returns."""
    sessions = _sessions(chunk, rng)
    purchases = [_basket_purchases(chunk, sessions, rng)]
    browsing = _browse(chunk, sessions, rng)
    purchases += _cart_purchases(chunk, sessions, browsing, rng)

    bought = concat_rows(purchases)
    bought = concat_rows([bought, _complements(chunk, bought, rng)])
    bought = concat_rows([bought, _replenishments(chunk, bought, rng)])
    return [*browsing.events, bought, _returns(chunk, bought, rng)]


@dataclass
class _Sessions:
    """The chunk's shopping sessions: customer (local index), local day index, shop channel and
    UTC start."""

    cust: np.ndarray
    day: np.ndarray
    channel: np.ndarray
    start: np.ndarray


@dataclass
class _Browsing:
    """The web, app and social sessions (`session` indexes `_Sessions`) and their product views
    (`view_session` indexes the browsing sessions), with the events they logged."""

    session: np.ndarray
    cust: np.ndarray
    channel: np.ndarray
    start: np.ndarray
    end: np.ndarray
    view_session: np.ndarray
    view_cust: np.ndarray
    view_product: np.ndarray
    carted: np.ndarray  # per view
    events: list[Rows]  # searches, views, cart additions


def _sessions(chunk: CustomerChunk, rng: np.random.Generator) -> _Sessions:
    """Session days: a Poisson process over the activity window, thinned by the weekday
    preference and the season so that the kept days reveal both; then a channel from the
    customer's shopping mix and a local start time near the preferred hour."""
    pop, win = chunk.pop, chunk.win
    sl = slice(chunk.lo, chunk.hi)
    win_days = np.maximum(pop.act_end_day[sl] - pop.act_start_day[sl], 0)
    weekend_weight = np.exp(pop.weekend_pref[sl])
    max_w = np.maximum(1.0, weekend_weight)
    mean_w = (5.0 + 2.0 * weekend_weight) / 7.0
    expected = pop.sessions_per_year[sl] / 365.0 * win_days * max_w * win.season_max / mean_w
    cust = np.repeat(np.arange(chunk.n), rng.poisson(expected))
    day = pop.act_start_day[chunk.global_index(cust)] + (rng.random(cust.size) * win_days[cust]).astype(
        np.int64
    )
    w = np.where(win.weekday[day] >= 5, weekend_weight[cust], 1.0)
    keep = rng.random(cust.size) < w * win.season[day] / (max_w[cust] * win.season_max)
    cust, day = cust[keep], day[keep]

    channel = chunk.shop.draw(cust, rng.random(cust.size))
    hour = chunk.local_hours(cust, rng, store=channel == STORE)
    local_start = win.local_midnight_us[day] + hours_to_us(hour)
    start = local_to_utc(local_start, pop.tz[chunk.global_index(cust)])
    return _Sessions(cust=cust, day=day, channel=channel, start=start)


def _basket_purchases(chunk: CustomerChunk, sessions: _Sessions, rng: np.random.Generator) -> Rows:
    """Store visits and call-centre orders: one order of 1 + Poisson lines, 15 s apart."""
    cust, channel, start = sessions.cust, sessions.channel, sessions.start
    basket = np.flatnonzero((channel == STORE) | (channel == CALL_CENTER))
    n_lines = 1 + rng.poisson(np.where(channel[basket] == STORE, 0.6, 0.3))
    line_session = np.repeat(basket, n_lines)
    line_cust = cust[line_session]
    product = chunk.taste_products(line_cust, rng)
    orders = chunk.new_orders(basket.size)
    line_ts = start[line_session] + within_group_index(n_lines) * 15 * US_PER_SECOND
    return event_rows(
        line_cust,
        line_ts,
        channel[line_session],
        PURCHASE,
        product,
        chunk.quantity(product, rng),
        np.repeat(orders, n_lines),
    )


def _browse(chunk: CustomerChunk, sessions: _Sessions, rng: np.random.Generator) -> _Browsing:
    """Web and app sessions search, view products (mostly of one category) and put some in the
    cart; social sessions only view."""
    channel = sessions.channel
    browse = np.flatnonzero((channel == WEB) | (channel == APP) | (channel == SOCIAL_SHOP))
    b_cust, b_channel, b_start = sessions.cust[browse], channel[browse], sessions.start[browse]
    social = b_channel == SOCIAL_SHOP
    n_views = 1 + rng.poisson(np.where(social, 0.8, 2.5))
    searched = ~social & (rng.random(browse.size) < 0.35)
    events = [event_rows(b_cust[searched], b_start[searched], b_channel[searched], SEARCH, -1, 0.0, -1)]

    session_category = chunk.taste.draw(b_cust, rng.random(browse.size))
    v_session = np.repeat(np.arange(browse.size), n_views)
    v_cust = b_cust[v_session]
    v_category = np.where(
        rng.random(v_session.size) < 0.8,
        session_category[v_session],
        chunk.taste.draw(v_cust, rng.random(v_session.size)),
    )
    v_product = chunk.products(v_cust, v_category, rng)
    gaps = (5 + rng.exponential(40.0, v_session.size)) * US_PER_SECOND
    cum = np.cumsum(gaps)
    first = np.cumsum(n_views) - n_views
    offset = (cum - np.repeat(cum[first] - gaps[first], n_views)).astype(np.int64)
    v_ts = b_start[v_session] + offset
    events.append(event_rows(v_cust, v_ts, b_channel[v_session], VIEW, v_product, 1.0, -1))

    carted = ~social[v_session] & (rng.random(v_session.size) < 0.3)
    cart_ts = v_ts + ((10 + rng.exponential(20.0, v_session.size)) * US_PER_SECOND).astype(np.int64)
    events.append(
        event_rows(
            v_cust[carted],
            cart_ts[carted],
            b_channel[v_session][carted],
            ADD_TO_CART,
            v_product[carted],
            1.0,
            -1,
        )
    )
    return _Browsing(
        session=browse,
        cust=b_cust,
        channel=b_channel,
        start=b_start,
        end=b_start + offset[first + n_views - 1] + 60 * US_PER_SECOND,
        view_session=v_session,
        view_cust=v_cust,
        view_product=v_product,
        carted=carted,
        events=events,
    )


def _cart_purchases(
    chunk: CustomerChunk, sessions: _Sessions, browsing: _Browsing, rng: np.random.Generator
) -> list[Rows]:
    """What a session with a cart becomes: bought here, bought in another channel within two days
    (browse in the app, buy in the store), or abandoned. The purchases of both kinds."""
    size = browsing.session.size
    v_session, carted, v_product = browsing.view_session, browsing.carted, browsing.view_product
    n_carted = np.bincount(v_session[carted], minlength=size)
    outcome_u = rng.random(size)
    buy_here = (n_carted > 0) & (outcome_u < 0.55)
    elsewhere = (n_carted > 0) & (outcome_u >= 0.55) & (outcome_u < 0.80)
    cross_channel = _cross_channel(chunk, browsing, rng)
    elsewhere &= cross_channel >= 0
    cross = np.flatnonzero(elsewhere)
    cross_ts = _cross_channel_times(chunk, sessions, browsing, cross, cross_channel, rng)

    here_orders = np.full(size, -1, dtype=np.int64)
    here_orders[buy_here] = chunk.new_orders(int(buy_here.sum()))
    rows = np.flatnonzero(buy_here[v_session] & carted)
    here = event_rows(
        browsing.view_cust[rows],
        browsing.end[v_session[rows]] + rows % 1000,  # µs apart: a stable order inside the order
        browsing.channel[v_session[rows]],
        PURCHASE,
        v_product[rows],
        chunk.quantity(v_product[rows], rng),
        here_orders[v_session[rows]],
    )
    cross_orders = np.full(size, -1, dtype=np.int64)
    cross_orders[cross] = chunk.new_orders(cross.size)
    rows = np.flatnonzero(elsewhere[v_session] & carted)
    later = event_rows(
        browsing.view_cust[rows],
        cross_ts[v_session[rows]] + rows % 1000,
        cross_channel[v_session[rows]],
        PURCHASE,
        v_product[rows],
        chunk.quantity(v_product[rows], rng),
        cross_orders[v_session[rows]],
    )
    return [here, later]


def _cross_channel(chunk: CustomerChunk, browsing: _Browsing, rng: np.random.Generator) -> np.ndarray:
    """Where each browsing session's cart would be bought later: mostly the store for loyalty-card
    holders who shop there, otherwise the other digital channel; -1 when there is none."""
    pop = chunk.pop
    g = chunk.global_index(browsing.cust)
    visits_store = pop.has_loyalty[g] & (pop.shop_mix[g, STORE] > 0.02)
    other_digital = np.where(browsing.channel == WEB, np.where(pop.has_app[g], APP, -1), WEB)
    to_store = visits_store & ((rng.random(browsing.session.size) < 0.7) | (other_digital < 0))
    return np.where(to_store, STORE, other_digital)


def _cross_channel_times(
    chunk: CustomerChunk,
    sessions: _Sessions,
    browsing: _Browsing,
    cross: np.ndarray,
    cross_channel: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """UTC instant of the cross-channel purchase per browsing session (0 where none): 0-2 local
    days later at a preferred hour, always after the session."""
    pop, win = chunk.pop, chunk.win
    c_cust = browsing.cust[cross]
    session_local_day = win.local_midnight_us[sessions.day[browsing.session[cross]]]
    day_offset = rng.choice(3, size=cross.size, p=[0.3, 0.45, 0.25])
    c_hour = chunk.local_hours(c_cust, rng, store=cross_channel[cross] == STORE)
    c_local = session_local_day + day_offset * US_PER_DAY + hours_to_us(c_hour)
    c_utc = local_to_utc(c_local, pop.tz[chunk.global_index(c_cust)])
    too_early = c_utc <= browsing.end[cross] + 30 * US_PER_MINUTE
    c_utc = np.where(too_early, c_utc + US_PER_DAY, c_utc)
    cross_ts = np.zeros(browsing.session.size, dtype=np.int64)
    cross_ts[cross] = c_utc
    return cross_ts


def _complements(chunk: CustomerChunk, lines: Rows, rng: np.random.Generator) -> Rows:
    """A purchase line pulls one of its product's complements into the same order, 5 s later."""
    product = lines["product"]
    n_comp = chunk.cat.n_complements[product]
    attach = np.flatnonzero(rng.random(product.size) < COMPLEMENT_ATTACH)
    slot = (rng.random(attach.size) * n_comp[attach]).astype(np.int64)
    comp = chunk.cat.complements[product[attach], slot]
    ok = comp >= 0
    attach, comp = attach[ok], comp[ok]
    return event_rows(
        lines["cust"][attach],
        lines["ts"][attach] + 5 * US_PER_SECOND,
        lines["channel"][attach],
        PURCHASE,
        comp,
        chunk.quantity(comp, rng),
        lines["order"][attach],
    )


def _replenishments(chunk: CustomerChunk, lines: Rows, rng: np.random.Generator) -> Rows:
    """Consumables are bought again on their cycle (log-normal noise, whole days so the local
    hour stays near the customer's habit) while the customer is active, each repeat with the
    customer's replenishment loyalty."""
    pop, cat, win = chunk.pop, chunk.cat, chunk.win
    repl = ~np.isnan(cat.replenishment_days[lines["product"]])
    cust, ts, product = lines["cust"][repl], lines["ts"][repl], lines["product"][repl]
    g = chunk.global_index(cust)
    active_until = np.minimum(win.start_us + pop.act_end_day[g] * US_PER_DAY, win.end_us)
    out = []
    while cust.size:
        g = chunk.global_index(cust)
        go = rng.random(cust.size) < pop.replenishment_loyalty[g]
        cust, ts, product, active_until = cust[go], ts[go], product[go], active_until[go]
        cycle = cat.replenishment_days[product] * np.exp(0.15 * rng.standard_normal(cust.size))
        ts = (
            ts
            + np.round(np.maximum(cycle, 3.0)).astype(np.int64) * US_PER_DAY
            + (rng.standard_normal(cust.size) * 1.5 * US_PER_HOUR).astype(np.int64)
        )
        alive = ts < active_until
        cust, ts, product, active_until = cust[alive], ts[alive], product[alive], active_until[alive]
        # mostly the same product again; sometimes another of the same category
        switch = rng.random(cust.size) < 0.15
        alternative = chunk.products(cust, cat.category[product], rng)
        product = np.where(switch & ~np.isnan(cat.replenishment_days[alternative]), alternative, product)
        channel = chunk.buying.draw(cust, rng.random(cust.size))
        out.append(
            event_rows(
                cust,
                ts,
                channel,
                PURCHASE,
                product,
                chunk.quantity(product, rng),
                chunk.new_orders(cust.size),
            )
        )
    if not out:
        return event_rows(np.zeros(0), np.zeros(0), 0, PURCHASE, 0, 1.0, 0)
    return concat_rows(out)


def _returns(chunk: CustomerChunk, lines: Rows, rng: np.random.Generator) -> Rows:
    """A few non-grocery purchase lines come back 3-30 days later, half of them to a store when
    the customer has a loyalty card."""
    product = lines["product"]
    grocery = chunk.cat.category[product] == CATEGORIES.index("grocery")
    ret = np.flatnonzero(~grocery & (rng.random(product.size) < RETURN_SHARE))
    cust = lines["cust"][ret]
    g = chunk.global_index(cust)
    ts = (
        lines["ts"][ret]
        + rng.integers(3, 31, ret.size) * US_PER_DAY
        + (rng.standard_normal(ret.size) * 2 * US_PER_HOUR).astype(np.int64)
    )
    in_store = chunk.pop.has_loyalty[g] & (rng.random(ret.size) < 0.5)
    channel = np.where(in_store, STORE, lines["channel"][ret])
    return event_rows(cust, ts, channel, RETURN, product[ret], lines["qty"][ret], lines["order"][ret])
