"""Synthetic omnichannel retail history with a hidden ground truth.

`generate()` writes a folder that satisfies the data contract (`features.contract`) plus a
`truth/` sub-folder holding the latent quantities that produced it. Models are trained on the
observed tables and evaluated against the truth, so every latent quantity below leaves a
measurable trace in the observed data.

The generative story
--------------------
Catalogue. Twelve categories with log-normal prices. Inside a category, products have a Zipf-like
popularity, one of `N_STYLES` latent styles (a brand tends to belong to a style) and, for
consumables, a replenishment cycle. A product has 1-3 complements in related categories that are
added to the same order with some probability. About 3 % of products are inactive (still sold in
the history, at a lower rate) and about 2 % are brand new and have no events at all (cold start).

Customers. Each customer lives in an IANA time zone and has a lifecycle (new, active, lapsing,
dormant) that fixes the window in which they shop. Their taste is a peaked Dirichlet draw over the
categories; their style decides which products they like *within* a category (so collaborative
filtering can learn more than category popularity); their price sensitivity tilts them towards
cheap products. A heavy-tailed activity rate sets how many shopping sessions they have, a
Dirichlet shopping mix sets the channel of each session (store, web, app, a little social and
call centre), and a preferred local hour (morning, lunch or evening peak with a width) plus a
weekday/weekend preference set *when* they shop and when they read messages.

Sessions. Web/app sessions search, view products (mostly of one category), put some in the cart,
and then buy online, buy in another channel within two days (browse in the app, buy in the store)
or abandon. Store and call-centre sessions are baskets. Purchases pull in complements, consumables
are bought again on their cycle (with noise) while the customer is active, and about 3 % of
purchase lines are returned. Events carry the id the channel knows the customer by: the store
sees the loyalty card (purchases of customers without one are anonymous and are not logged), the
app sees the device id for about half of its events, web and call centre see the canonical id. So
one customer is visible across channels only after stitching through `identities`.

Messages. Marketing sends each reachable customer (not in the 5 % random holdout, consented to a
channel) about 17 messages a year (about 11 per customer overall, counting the holdout, customers
without consent and recent sign-ups), never in the last 14 days so every outcome window is
complete. The logging policy is a mixture: with probability `EXPLORE_SHARE` the channel (among
channels consented at send time), the local send hour (6-21) and the offer (including none) are
drawn uniformly; otherwise a business rule sends email (or the first consented channel) at 10:00
local without an offer. The propensities are stored in the truth. A message is opened with probability

    sigmoid(CHANNEL_OPEN_LOGIT[channel] + responsiveness[customer, channel]
            + HOUR_MATCH_GAIN * hour_match(local hour, preferred hour, width) - HOUR_MATCH_OFFSET
            + weekend_pref[customer] * is_weekend(local day))

where `hour_match` is a Gaussian bump of the circular distance between the send and preferred
local hours (computed with real time-zone rules, so DST is correct). Responsiveness is correlated
with the shopping mix (app shoppers read push, store shoppers read SMS). A click follows an open
with `sigmoid(CLICK_LOGIT + 0.5 * responsiveness + CLICK_OFFER_BONUS * has_monetary_offer)`.

Conversion. Every customer has `p_base`, the probability of buying within 14 days with no
message, and an `uplift` for each treatment (each offer and the plain message), which acts only
when the message is opened:

    P(convert | opened)     = clip(p_base + uplift[offer], 0, 1)
    P(convert | not opened) = p_base
    P(convert | sent)       = p_base + P(open) * (clip(p_base + uplift, 0, 1) - p_base)

Customers belong to one of four uplift segments: *sure things* (high p_base, no uplift),
*persuadables* (low p_base, large uplift from discounts, scaled by price sensitivity), *lost
causes* (tiny p_base, no uplift) and *sleeping dogs* (negative uplift). Segments correlate with
observed behaviour (activity, lifecycle, cheap purchases). A conversion that would have happened
anyway (the draw fell below p_base) is credited to the customer's first organic order in the
14 days after the send when there is one; every other conversion is a new web/app order (app for push) that
appears in `events` at `converted_ts`. `revenue` is the order value net of the offer (percent off
for discounts, one free unit for BOGO); event amounts stay at list price. A click adds a product
view in the landing channel. `offers.cost` is currency per redemption, as the data contract has it
and a campaign system records it: the offer's share of the order value (`Offer.cost_share`, kept
in `truth/meta.json`) × the mean order value of the generated purchases, in cents.

Files
-----
Observed: customers, identities, consent, products, offers, events, messages (`.parquet`).
Truth (`truth/`): customers, products, product_complements, messages and meta.json; the column
lists are in `TRUTH_COLUMNS`. Timestamps are `timestamp[us, tz=UTC]`; ids are strings.

Determinism: one `numpy` generator per component, derived from `SeedSequence(seed).spawn`, and per
chunk of `CHUNK` customers a child of the component's sequence; no wall clock, no set or dict
order. The same arguments give byte-identical files (for the same library versions).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from features import columns as c
from features.contract import DEFAULT_CHANNELS, OFFER_KINDS

GENERATOR_VERSION = 2  # 2: offers.cost in currency per redemption (was a share of the order)

# Customers are generated in chunks of this size (bounded memory); results depend on it.
CHUNK = 50_000

US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR
INT64_MAX = np.iinfo(np.int64).max

# ----------------------------------------------------------------------------------------------
# Catalogue parameters
# ----------------------------------------------------------------------------------------------
CATEGORIES: tuple[str, ...] = (
    "grocery",
    "beauty",
    "pet",
    "baby",
    "apparel",
    "shoes",
    "home",
    "kitchen",
    "electronics",
    "toys",
    "sports",
    "books",
)
# share of the catalogue, median price and log-price spread per category
CATEGORY_CATALOGUE_SHARE = np.array([0.16, 0.10, 0.06, 0.06, 0.14, 0.06, 0.09, 0.07, 0.08, 0.06, 0.06, 0.06])
CATEGORY_MEDIAN_PRICE = np.array([4.5, 18.0, 22.0, 19.0, 32.0, 70.0, 38.0, 27.0, 120.0, 24.0, 40.0, 14.0])
CATEGORY_PRICE_SIGMA = np.array([0.55, 0.6, 0.6, 0.55, 0.6, 0.45, 0.7, 0.65, 0.9, 0.6, 0.7, 0.35])
# how much a category attracts customers (the Dirichlet base measure of taste)
CATEGORY_APPEAL = np.array([1.6, 1.0, 0.6, 0.5, 1.3, 0.6, 0.9, 0.7, 0.8, 0.6, 0.6, 0.8])
# mean extra units per purchase line (quantity = 1 + Poisson(mean))
CATEGORY_EXTRA_UNITS = np.array([0.6, 0.15, 0.3, 0.3, 0.05, 0.0, 0.05, 0.05, 0.0, 0.05, 0.05, 0.0])
# consumables: base replenishment cycle in days (most of their products have one)
REPLENISHMENT_BASE_DAYS = {"grocery": 18, "beauty": 42, "pet": 30, "baby": 21}
REPLENISHABLE_SHARE = 0.85
REPLENISHMENT_DAYS_RANGE = (14, 60)
COMPLEMENT_CATEGORIES = {
    "grocery": ("kitchen", "baby", "pet"),
    "beauty": ("apparel", "home"),
    "pet": ("grocery", "home"),
    "baby": ("toys", "grocery", "apparel"),
    "apparel": ("shoes", "beauty", "sports"),
    "shoes": ("apparel", "sports"),
    "home": ("kitchen", "books"),
    "kitchen": ("home", "grocery"),
    "electronics": ("books", "toys", "home"),
    "toys": ("baby", "books"),
    "sports": ("shoes", "apparel", "electronics"),
    "books": ("toys", "home"),
}
COMPLEMENT_ATTACH = 0.25  # probability that a purchase line pulls one of its complements
ZIPF_EXPONENT = 0.9
N_STYLES = 20
STYLE_BOOST = 2.2  # log-weight bonus of a product whose style matches the customer's
# price sensitivity is binned for sampling; bin b tilts weights by (price / median) ** -elasticity
PRICE_ELASTICITY_BY_BIN = (0.0, 0.6, 1.4)
INACTIVE_SHARE = 0.03
INACTIVE_WEIGHT = 0.3  # discontinued products sold less during the history
NEW_PRODUCT_SHARE = 0.02
BRAND_STEMS = (
    "Acorn", "Birch", "Cobalt", "Dune", "Ember", "Fjord", "Garnet", "Harbor", "Iris", "Juniper",
    "Kestrel", "Lumen", "Maple", "Nimbus", "Orchid", "Pioneer", "Quartz", "Redwood", "Sable",
    "Tundra", "Umber", "Vale", "Willow", "Zephyr",
)  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Customer parameters
# ----------------------------------------------------------------------------------------------
TIMEZONES: tuple[str, ...] = (
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "Asia/Tokyo",
    "Australia/Sydney",
)
TIMEZONE_SHARE = np.array([0.25, 0.15, 0.15, 0.12, 0.10, 0.08, 0.08, 0.07])
STORES_PER_ZONE = 5
HOME_STORE_SHARE = 0.85

LIFECYCLES: tuple[str, ...] = ("new", "active", "lapsing", "dormant")
LIFECYCLE_SHARE = np.array([0.10, 0.50, 0.20, 0.20])
NEW_SIGNUP_DAYS = (1, 60)  # new customers signed up this many days before the end
LAPSING_GAP_DAYS = (60, 150)  # lapsing customers stopped shopping this many days before the end
DORMANT_GAP_DAYS = (150, 450)  # dormant ones longer ago (possibly before the window)

TASTE_CONCENTRATION = 0.3  # Dirichlet concentration per unit of appeal: small = peaked tastes
SESSIONS_PER_YEAR = 5.0  # median shopping sessions per active year (before segment factors)
ACTIVITY_LOG_SD = 0.9  # heavy tail of activity
MAX_SESSIONS_PER_YEAR = 400.0

SHOP_CHANNELS: tuple[str, ...] = ("store", "web", "app", "social", "call_center")
STORE, WEB, APP, SOCIAL_SHOP, CALL_CENTER = range(5)
SHOP_MIX_ALPHA = np.array([1.3, 1.3, 1.0, 0.12, 0.08])
HAS_APP_SHARE = 0.6
APP_DEVICE_ID_SHARE = 0.5  # share of app events logged under the device id instead of the login

# preferred local hour: mixture of (mean, sd, weight)
PREFERRED_HOUR_MIXTURE = ((8.0, 1.0, 0.30), (12.5, 0.8, 0.25), (20.0, 1.3, 0.45))
PREFERRED_HOUR_WIDTH = (0.8, 2.2)
WEEKEND_PREF_SD = 0.6
ON_PREFERENCE_SHARE = 0.85  # share of sessions at the preferred hour; the rest uniform 7-23
STORE_HOURS = (8.0, 21.75)

HOLDOUT_SHARE = 0.05

# ----------------------------------------------------------------------------------------------
# Messaging parameters
# ----------------------------------------------------------------------------------------------
MESSAGE_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "social")
CHANNEL_OPEN_LOGIT = np.array([-1.3, -0.4, -0.9, -1.8])
# business-rule channel order: the default policy sends on the first consented of these
DEFAULT_CHANNEL_PRIORITY: tuple[str, ...] = ("email", "push", "sms", "social")
OPEN_DELAY_MEAN_HOURS = np.array([5.0, 0.3, 0.5, 8.0])
MAX_OPEN_DELAY_HOURS = 72.0
RESPONSIVENESS_SD = 0.55
HOUR_MATCH_GAIN = 1.6
HOUR_MATCH_OFFSET = 0.6
CLICK_LOGIT = -1.0
CLICK_OFFER_BONUS = 0.5

CONSENT_SHARE = {"email": 0.72, "sms": 0.30, "push": 0.75, "social": 0.25}  # push: of app users
NO_CONSENT_SHARE = 0.07
OPT_OUT_SHARE = 0.04  # share of opted-in (customer, channel) pairs that opt out later

MESSAGES_PER_YEAR = 17.0  # mean for a reachable customer over a full year
MESSAGE_INTENSITY_SHAPE = 3.0
EXPLORE_SHARE = 0.6
EXPLORE_HOURS = tuple(range(6, 22))  # uniformly random send hour slots (local)
DEFAULT_HOUR = 10
DEFAULT_SEND_JITTER_MINUTES = 15
CONVERSION_WINDOW_DAYS = 14
CONVERSION_DELAY_MEAN_DAYS = 1.5  # after an open


@dataclass(frozen=True)
class Offer:
    """A marketing offer.

    `value` is the headline number: percent off for `discount`, percent off the second unit for
    `bogo` (100 = free), the waived shipping fee in currency units for `free_shipping`, 0 for
    `content`. `cost_share` is the expected cost of a redemption **as a fraction of the order
    value** (truth: the bench scores a redemption at this share of that customer's order); the
    observed `offers.cost` is what a campaign system records, currency per redemption (the data
    contract's unit): this share × the mean order value of the generated purchases, in cents.
    `persuasion` is truth only: how strongly the offer moves a fully price-sensitive persuadable.
    """

    offer_id: str
    kind: str
    value: float
    cost_share: float
    persuasion: float


OFFERS: tuple[Offer, ...] = (
    Offer("OF_DISC10", "discount", 10.0, 0.10, 0.55),
    Offer("OF_DISC20", "discount", 20.0, 0.20, 1.00),
    Offer("OF_BOGO", "bogo", 100.0, 0.25, 0.75),
    Offer("OF_FREESHIP", "free_shipping", 5.0, 0.05, 0.30),
    Offer("OF_CONTENT", "content", 0.0, 0.0, 0.08),
)
NO_OFFER_PERSUASION = 0.05  # a plain product message without an offer
# treatment arms: 0 = plain message without offer, 1.. = OFFERS[arm - 1]
TREATMENTS: tuple[str, ...] = ("none", *(o.offer_id for o in OFFERS))
ARM_PERSUASION = np.array([NO_OFFER_PERSUASION, *(o.persuasion for o in OFFERS)])
ARM_IS_MONETARY = np.array([False, *(o.kind in ("discount", "bogo", "free_shipping") for o in OFFERS)])

SEGMENTS: tuple[str, ...] = ("sure_thing", "persuadable", "lost_cause", "sleeping_dog")
SURE_THING, PERSUADABLE, LOST_CAUSE, SLEEPING_DOG = range(4)
SEGMENT_P_BASE = ((0.30, 0.60), (0.02, 0.10), (0.002, 0.015), (0.12, 0.30))  # uniform ranges
SEGMENT_ACTIVITY_FACTOR = np.array([2.0, 1.0, 0.5, 1.3])

EVENT_TYPES: tuple[str, ...] = ("view", "search", "add_to_cart", "purchase", "return")
VIEW, SEARCH, ADD_TO_CART, PURCHASE, RETURN = range(5)
RETURN_SHARE = 0.045  # of non-grocery purchase lines

# Which id each table uses, by id kind (index into the per-customer id arrays)
CANONICAL, LOYALTY, DEVICE = range(3)

TRUTH_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": (
        "customer_id", "timezone", "signup_ts", "lifecycle", "activity_start_ts", "activity_end_ts",
        "holdout", "home_store_id", "has_app", "has_loyalty_card", "style",
        *(f"taste_{k}" for k in CATEGORIES), "price_sensitivity", "sessions_per_year",
        *(f"shop_{ch}" for ch in SHOP_CHANNELS), *(f"responsiveness_{ch}" for ch in MESSAGE_CHANNELS),
        "preferred_hour", "preferred_hour_width", "weekend_pref", "replenishment_loyalty",
        "message_intensity", "segment", "p_base", *(f"uplift_{t}" for t in TREATMENTS),
    ),
    "products": (
        "product_id", "category", "style", "brand", "price", "popularity", "replenishment_days",
        "is_active", "is_new",
    ),
    "product_complements": ("product_id", "complement_product_id", "attach_probability"),
    "messages": (
        "message_id", "customer_id", "policy", "local_send_hour", "local_weekday",
        "propensity_channel", "propensity_hour", "propensity_offer", "propensity", "p_open",
        "p_click_given_open", "p_convert_if_opened", "p_convert_treated", "p_convert_control",
        "uplift",
    ),
}  # fmt: skip

assert set(SHOP_CHANNELS) <= set(DEFAULT_CHANNELS) and set(MESSAGE_CHANNELS) <= set(DEFAULT_CHANNELS)
assert {o.kind for o in OFFERS} <= set(OFFER_KINDS)


@dataclass
class GenerationSummary:
    """What `generate` wrote: the folder, row counts per table (truth tables as `truth/<name>`)
    and how long it took."""

    out_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ==============================================================================================
# Public helpers: the truth formulas, for scoring policies
# ==============================================================================================
def hour_match(local_hours, preferred_hours, widths) -> np.ndarray:
    """Gaussian bump exp(-d^2 / 2 w^2) of the circular distance d (hours, 0-12) between a local
    send hour and the preferred local hour; 1 at the preferred hour."""
    h = np.asarray(local_hours, dtype=np.float64)
    pref = np.asarray(preferred_hours, dtype=np.float64)
    dist = np.abs((h - pref + 12.0) % 24.0 - 12.0)
    return np.exp(-0.5 * (dist / np.asarray(widths, dtype=np.float64)) ** 2)


def local_time_parts(ts_utc, timezones) -> tuple[np.ndarray, np.ndarray]:
    """Local fractional hour (0-24) and weekday (0 = Monday) of UTC timestamps, per row's IANA
    time zone, with real DST rules."""
    ts = pd.DatetimeIndex(pd.to_datetime(ts_utc, utc=True))
    zones = np.asarray(timezones, dtype=object)
    hours = np.empty(len(ts), dtype=np.float64)
    weekdays = np.empty(len(ts), dtype=np.int64)
    for zone in sorted(pd.unique(zones)):
        sel = np.flatnonzero(zones == zone)
        local = ts[sel].tz_convert(zone)
        hours[sel] = local.hour + local.minute / 60.0 + local.second / 3600.0
        weekdays[sel] = local.day_of_week
    return hours, weekdays


def true_open_probability(
    truth_customers: pd.DataFrame, customer_ids, channels, local_hours, local_weekdays
) -> np.ndarray:
    """P(open) of a message, exactly as generated:

    sigmoid(CHANNEL_OPEN_LOGIT[channel] + responsiveness_<channel>
            + HOUR_MATCH_GAIN * hour_match(local_hour, preferred_hour, preferred_hour_width)
            - HOUR_MATCH_OFFSET + weekend_pref * (local_weekday >= 5))

    `channels` are message channels (email, sms, push, social); local hours are fractional
    (10.5 = 10:30 local), weekdays 0 = Monday. All arguments are aligned arrays.
    """
    rows = _truth_rows(truth_customers, customer_ids)
    ch = _channel_codes(channels)
    resp = truth_customers[[f"responsiveness_{x}" for x in MESSAGE_CHANNELS]].to_numpy(np.float64)
    return _open_probability(
        ch,
        resp[rows, ch],
        np.asarray(local_hours, dtype=np.float64),
        np.asarray(local_weekdays),
        truth_customers["preferred_hour"].to_numpy(np.float64)[rows],
        truth_customers["preferred_hour_width"].to_numpy(np.float64)[rows],
        truth_customers["weekend_pref"].to_numpy(np.float64)[rows],
    )


def true_click_probability(truth_customers: pd.DataFrame, customer_ids, channels, offer_ids) -> np.ndarray:
    """P(click | open) = sigmoid(CLICK_LOGIT + 0.5 * responsiveness_<channel>
    + CLICK_OFFER_BONUS * (offer is a discount, bogo or free shipping))."""
    rows = _truth_rows(truth_customers, customer_ids)
    ch = _channel_codes(channels)
    resp = truth_customers[[f"responsiveness_{x}" for x in MESSAGE_CHANNELS]].to_numpy(np.float64)
    return _click_probability(resp[rows, ch], _arm_codes(offer_ids))


def true_conversion_probability(
    truth_customers: pd.DataFrame, customer_ids, offer_ids, open_probability=None
) -> np.ndarray:
    """P(purchase within 14 days) of a customer who receives a message with the given offer.

    `offer_ids`: an offer id per row, or None/NaN for a plain message without offer.
    Without `open_probability`: the probability *given the message is opened*,
    clip(p_base + uplift_<offer>, 0, 1). With it (e.g. from `true_open_probability`): the
    probability given the message is sent, p_base + P(open) * (clip(p_base + uplift) - p_base),
    because an unopened message acts like no message. With no message at all it is `p_base`.
    """
    rows = _truth_rows(truth_customers, customer_ids)
    arms = _arm_codes(offer_ids)
    uplift = truth_customers[[f"uplift_{t}" for t in TREATMENTS]].to_numpy(np.float64)[rows, arms]
    p_base = truth_customers["p_base"].to_numpy(np.float64)[rows]
    p_opened = np.clip(p_base + uplift, 0.0, 1.0)
    if open_probability is None:
        return p_opened
    return p_base + np.asarray(open_probability, dtype=np.float64) * (p_opened - p_base)


def true_uplift(truth_customers: pd.DataFrame, customer_ids, offer_ids, open_probability=None) -> np.ndarray:
    """`true_conversion_probability(...) - p_base`: the causal effect of the message on conversion
    (given open without `open_probability`, given send with it)."""
    rows = _truth_rows(truth_customers, customer_ids)
    p_base = truth_customers["p_base"].to_numpy(np.float64)[rows]
    return true_conversion_probability(truth_customers, customer_ids, offer_ids, open_probability) - p_base


def default_n_products(n_customers: int) -> int:
    """Catalogue size that grows with the square root of the customer base (5,656 for 20k)."""
    return int(min(20000, max(300, 40 * n_customers**0.5)))


def _truth_rows(truth_customers: pd.DataFrame, customer_ids) -> np.ndarray:
    index = pd.Index(truth_customers[c.CUSTOMER_ID].astype(str))
    rows = index.get_indexer(pd.Index(np.asarray(customer_ids, dtype=object).astype(str)))
    if (rows < 0).any():
        raise KeyError("unknown customer ids (canonical ids only)")
    return rows


def _channel_codes(channels) -> np.ndarray:
    lookup = {ch: i for i, ch in enumerate(MESSAGE_CHANNELS)}
    try:
        return np.array([lookup[ch] for ch in np.asarray(channels, dtype=object)], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"not a message channel: {exc}; expected one of {MESSAGE_CHANNELS}") from None


def _arm_codes(offer_ids) -> np.ndarray:
    lookup = {o.offer_id: i + 1 for i, o in enumerate(OFFERS)}
    values = pd.Series(np.asarray(offer_ids, dtype=object), dtype=object)
    missing = values.isna().to_numpy()
    arms = np.zeros(len(values), dtype=np.int64)
    for i in np.flatnonzero(~missing):
        offer = values.iat[i]
        if offer not in lookup:
            raise ValueError(f"unknown offer id {offer!r}")
        arms[i] = lookup[offer]
    return arms


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _open_probability(channel, responsiveness, local_hour, weekday, pref_hour, width, weekend_pref):
    logit = (
        CHANNEL_OPEN_LOGIT[channel]
        + responsiveness
        + HOUR_MATCH_GAIN * hour_match(local_hour, pref_hour, width)
        - HOUR_MATCH_OFFSET
        + weekend_pref * (weekday >= 5)
    )
    return _sigmoid(logit)


def _click_probability(responsiveness, arms):
    return _sigmoid(CLICK_LOGIT + 0.5 * responsiveness + CLICK_OFFER_BONUS * ARM_IS_MONETARY[arms])


# ==============================================================================================
# generate()
# ==============================================================================================
def generate(
    n_customers: int,
    seed: int,
    out_dir: str | Path,
    n_products: int | None = None,
    end: str = "2026-06-30",
    days: int = 365,
    show_progress: bool = False,
) -> GenerationSummary:
    """Generate `days` days of history ending with the day `end` (inclusive; the window is
    [end + 1 day - days, end + 1 day) in UTC) for `n_customers` customers into `out_dir`.

    `n_products` defaults to `default_n_products(n_customers)`. The folder is built in
    `.<name>.tmp-<pid>` next to `out_dir` and swapped into place when complete. An existing
    `out_dir` is replaced only if it is empty or a previous output (it has `truth/meta.json`);
    otherwise ValueError. `show_progress` shows a tqdm bar over chunks of `CHUNK` customers.
    """
    started = time.perf_counter()
    if n_customers < 1:
        raise ValueError("n_customers must be at least 1")
    if not 3 * CONVERSION_WINDOW_DAYS <= days <= 1500:
        raise ValueError(f"days must be between {3 * CONVERSION_WINDOW_DAYS} and 1500")
    n_products = default_n_products(n_customers) if n_products is None else int(n_products)
    if n_products < 5 * len(CATEGORIES):
        raise ValueError(f"n_products must be at least {5 * len(CATEGORIES)}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)

    window = _Window.make(end, days)
    seeds = np.random.SeedSequence(seed).spawn(6)
    ss_products, ss_customers, ss_identities, ss_consent, ss_events, ss_messages = seeds
    catalogue = _Catalogue.make(n_products, np.random.default_rng(ss_products))
    population = _Population.make(
        n_customers,
        window,
        np.random.default_rng(ss_customers),
        np.random.default_rng(ss_identities),
        np.random.default_rng(ss_consent),
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "truth").mkdir(parents=True)
    scratch = tmp / "_scratch"
    rows: dict[str, int] = {}
    try:
        n_chunks = math.ceil(n_customers / CHUNK)
        event_seeds = ss_events.spawn(n_chunks)
        message_seeds = ss_messages.spawn(n_chunks)
        chunks = range(n_chunks)
        if show_progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="customers", unit="chunk")
        for chunk in chunks:
            lo, hi = chunk * CHUNK, min(n_customers, (chunk + 1) * CHUNK)
            rng_events = np.random.default_rng(event_seeds[chunk])
            rng_messages = np.random.default_rng(message_seeds[chunk])
            gen = _ChunkGenerator(population, catalogue, window, lo, hi)
            parts = gen.organic_events(rng_events)
            messages, message_parts = gen.messages(rng_messages, parts)
            events = gen.finalize_events(parts + message_parts, rng_events)
            _write_scratch(scratch / "events", chunk, events, events["ts"])
            _write_scratch(scratch / "messages", chunk, messages, messages["sent"])

        rows["events"], mean_order_value = _merge_events(
            scratch / "events", tmp / "events.parquet", population, catalogue
        )
        rows["messages"], rows["truth/messages"] = _merge_messages(
            scratch / "messages", tmp / "messages.parquet", tmp / "truth" / "messages.parquet", population
        )
        shutil.rmtree(scratch, ignore_errors=True)
        rows.update(_write_static_tables(tmp, population, catalogue, window, mean_order_value))
        meta = _meta(seed, n_customers, n_products, end, days, window, mean_order_value)
        (tmp / "truth" / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GenerationSummary(out_dir=out_dir, rows=rows, seconds=time.perf_counter() - started)


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    if any(out_dir.iterdir()) and not (out_dir / "truth" / "meta.json").is_file():
        raise ValueError(f"{out_dir} is a non-empty folder that is not a previous generate() output")


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; the previous output is removed only afterwards."""
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def offer_costs(mean_order_value: float) -> dict[str, float]:
    """`offers.cost` as written: currency per redemption, each offer's share of the order value
    × the mean order value of the generated purchases, rounded to cents."""
    return {o.offer_id: round(o.cost_share * mean_order_value, 2) for o in OFFERS}


def _meta(seed, n_customers, n_products, end, days, window, mean_order_value: float) -> dict:
    costs = offer_costs(mean_order_value)
    return {
        "generator": "features.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_customers": int(n_customers),
        "n_products": int(n_products),
        "end": str(end),
        "days": int(days),
        "chunk": CHUNK,
        "window_start": pd.Timestamp(window.start_us, unit="us", tz="UTC").isoformat(),
        "window_end_exclusive": pd.Timestamp(window.end_us, unit="us", tz="UTC").isoformat(),
        "parameters": {
            "categories": list(CATEGORIES),
            "category_median_price": CATEGORY_MEDIAN_PRICE.tolist(),
            "category_price_sigma": CATEGORY_PRICE_SIGMA.tolist(),
            "category_appeal": CATEGORY_APPEAL.tolist(),
            "replenishment_base_days": dict(sorted(REPLENISHMENT_BASE_DAYS.items())),
            "complement_categories": {k: list(v) for k, v in sorted(COMPLEMENT_CATEGORIES.items())},
            "complement_attach": COMPLEMENT_ATTACH,
            "n_styles": N_STYLES,
            "style_boost": STYLE_BOOST,
            "price_elasticity_by_bin": list(PRICE_ELASTICITY_BY_BIN),
            "timezones": list(TIMEZONES),
            "timezone_share": TIMEZONE_SHARE.tolist(),
            "lifecycles": list(LIFECYCLES),
            "lifecycle_share": LIFECYCLE_SHARE.tolist(),
            "sessions_per_year_median": SESSIONS_PER_YEAR,
            "activity_log_sd": ACTIVITY_LOG_SD,
            "shop_channels": list(SHOP_CHANNELS),
            "shop_mix_alpha": SHOP_MIX_ALPHA.tolist(),
            "app_device_id_share": APP_DEVICE_ID_SHARE,
            "holdout_share": HOLDOUT_SHARE,
            "message_channels": list(MESSAGE_CHANNELS),
            "channel_open_logit": dict(zip(MESSAGE_CHANNELS, CHANNEL_OPEN_LOGIT.tolist(), strict=True)),
            "hour_match_gain": HOUR_MATCH_GAIN,
            "hour_match_offset": HOUR_MATCH_OFFSET,
            "click_logit": CLICK_LOGIT,
            "click_offer_bonus": CLICK_OFFER_BONUS,
            "consent_share": dict(sorted(CONSENT_SHARE.items())),
            "messages_per_year": MESSAGES_PER_YEAR,
            "logging_policy": {
                "explore_share": EXPLORE_SHARE,
                "explore_hours": list(EXPLORE_HOURS),
                "explore_offers": list(TREATMENTS),
                "default_channel_priority": list(DEFAULT_CHANNEL_PRIORITY),
                "default_hour": DEFAULT_HOUR,
                "default_offer": "none",
            },
            "conversion_window_days": CONVERSION_WINDOW_DAYS,
            "offers": [
                {
                    "offer_id": o.offer_id,
                    "kind": o.kind,
                    "value": o.value,
                    "cost_share": o.cost_share,
                    "cost": costs[o.offer_id],
                    "persuasion": o.persuasion,
                }
                for o in OFFERS
            ],
            "mean_order_value": round(float(mean_order_value), 6),
            "no_offer_persuasion": NO_OFFER_PERSUASION,
            "segments": list(SEGMENTS),
            "segment_p_base": [list(r) for r in SEGMENT_P_BASE],
            "segment_activity_factor": SEGMENT_ACTIVITY_FACTOR.tolist(),
            "return_share": RETURN_SHARE,
        },
    }


# ==============================================================================================
# Time window
# ==============================================================================================
@dataclass(frozen=True)
class _Window:
    """The history: `days` local calendar days ending with `end`. Instants are int64 µs since the
    epoch (UTC); `local_midnight_us[d]` is local day d's midnight as a wall-clock number."""

    start_us: int
    end_us: int  # exclusive
    days: int
    local_midnight_us: np.ndarray
    weekday: np.ndarray  # 0 = Monday
    season: np.ndarray  # shopping intensity multiplier, mean 1
    season_max: float

    @staticmethod
    def make(end: str, days: int) -> _Window:
        end_day = pd.Timestamp(end)
        if end_day.tzinfo is not None:
            end_day = end_day.tz_convert("UTC").tz_localize(None)
        end_day = end_day.normalize()
        first_day = end_day - pd.Timedelta(days=days - 1)
        dates = pd.date_range(first_day, periods=days, freq="D", unit="us")
        midnight = dates.asi8.astype(np.int64)
        start_us = int(midnight[0])
        end_us = int(midnight[-1]) + US_PER_DAY
        month, dom = dates.month.to_numpy(), dates.day.to_numpy()
        season = np.ones(days)
        # holiday peak (late November to Christmas), January sales, quiet February
        season[((month == 11) & (dom >= 20)) | ((month == 12) & (dom <= 24))] = 1.5
        season[(month == 1) & (dom <= 10)] = 1.2
        season[month == 2] = 0.85
        season /= season.mean()
        return _Window(
            start_us=start_us,
            end_us=end_us,
            days=days,
            local_midnight_us=midnight,
            weekday=dates.day_of_week.to_numpy().astype(np.int8),
            season=season,
            season_max=float(season.max()),
        )


def _local_to_utc(local_us: np.ndarray, tz_codes: np.ndarray) -> np.ndarray:
    """Wall-clock local times (µs) in each row's zone → UTC µs. Non-existent times (spring
    forward) move forward; ambiguous ones (fall back) take standard time."""
    out = np.empty(local_us.shape, dtype=np.int64)
    for code, zone in enumerate(TIMEZONES):
        sel = np.flatnonzero(tz_codes == code)
        if sel.size == 0:
            continue
        naive = pd.DatetimeIndex(local_us[sel].astype("datetime64[us]"))
        aware = naive.tz_localize(zone, ambiguous=np.zeros(sel.size, dtype=bool), nonexistent="shift_forward")
        out[sel] = aware.as_unit("us").asi8
    return out


# ==============================================================================================
# Sampling helpers
# ==============================================================================================
class _RowSampler:
    """Draw a column index per row from row-specific categorical distributions, vectorised: the
    per-row CDFs are laid end to end, shifted by the row number, and searched once."""

    def __init__(self, probs: np.ndarray):
        probs = np.asarray(probs, dtype=np.float64)
        totals = probs.sum(axis=1, keepdims=True)
        totals[totals <= 0] = 1.0
        cdf = np.cumsum(probs / totals, axis=1)
        cdf[:, -1] = 1.0
        self.n_cols = probs.shape[1]
        self.flat = (cdf + np.arange(probs.shape[0])[:, None]).ravel()

    def draw(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        # keep u away from 1 so that row + u never rounds up into the next row
        pos = np.searchsorted(self.flat, rows + u * (1.0 - 1e-9), side="right")
        return np.clip(pos - rows * self.n_cols, 0, self.n_cols - 1)


def _within_group_index(counts: np.ndarray) -> np.ndarray:
    """For rows repeated `counts` times each, the position of every copy inside its group."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _hours_to_us(hours: np.ndarray) -> np.ndarray:
    return np.round(hours * US_PER_HOUR).astype(np.int64)


def _scramble(numbers: np.ndarray, bits: int, multiplier: int, offset: int) -> np.ndarray:
    """A bijection of [0, 2**bits), so that source ids are unique but do not reveal the canonical
    customer number: rounds of (odd multiply + add) mod 2**bits and xor-shift, each invertible."""
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(bits // 2)
    x = np.asarray(numbers, dtype=np.uint64) & mask
    with np.errstate(over="ignore"):
        for _ in range(3):
            x = (x * np.uint64(multiplier | 1) + np.uint64(offset)) & mask
            x ^= x >> shift
    return x


def _format_ids(prefix: str, numbers: np.ndarray, width: int, base: int = 10, valid=None) -> pa.Array:
    """Fixed-width ids such as 'C0000042' for many numbers at once, built as raw bytes (a Python
    f-string per row is far too slow for tens of millions of rows)."""
    alphabet = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    x = np.asarray(numbers).astype(np.uint64)
    n = x.size
    head = len(prefix)
    buf = np.empty((n, head + width), dtype=np.uint8)
    buf[:, :head] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    rest = x.copy()
    for pos in range(head + width - 1, head - 1, -1):
        buf[:, pos] = alphabet[(rest % np.uint64(base)).astype(np.intp)]
        rest //= np.uint64(base)
    if n and rest.any():
        raise ValueError(f"{prefix} ids do not fit in {width} digits")
    offsets = np.arange(0, (n + 1) * (head + width), head + width, dtype=np.int64)
    if valid is None:
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf.ravel())).cast(
            pa.string()
        )
    valid = np.asarray(valid, dtype=bool)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    array = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(buf.ravel()), bitmap, int(n - valid.sum())
    )
    return array.cast(pa.string())


def _ts_array(us: np.ndarray, null=None) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.timestamp("us", tz="UTC"), mask=null)


# ==============================================================================================
# Catalogue
# ==============================================================================================
@dataclass
class _Catalogue:
    category: np.ndarray  # int, index into CATEGORIES
    price: np.ndarray
    style: np.ndarray
    brand: np.ndarray  # object array of names
    popularity: np.ndarray  # share within the category
    replenishment_days: np.ndarray  # float, NaN when not replenishable
    is_active: np.ndarray
    is_new: np.ndarray
    complements: np.ndarray  # (n, 3) product indices, -1 padded
    n_complements: np.ndarray
    ids: pa.Array
    # flattened per-cell CDF over each category's products; cell = (category, style, price bin)
    cell_cdf: np.ndarray
    cell_product: np.ndarray

    @property
    def n(self) -> int:
        return self.category.size

    @staticmethod
    def make(n_products: int, rng: np.random.Generator) -> _Catalogue:
        n_cat = len(CATEGORIES)
        counts = np.maximum(5, np.floor(CATEGORY_CATALOGUE_SHARE * n_products).astype(int))
        counts[0] += n_products - counts.sum()  # grocery absorbs the rounding
        category = rng.permutation(np.repeat(np.arange(n_cat), counts))
        n = n_products

        log_price = np.log(CATEGORY_MEDIAN_PRICE[category]) + CATEGORY_PRICE_SIGMA[
            category
        ] * rng.standard_normal(n)
        price = np.exp(log_price)
        # retail price points: x.99 above 5, two decimals below
        price = np.where(price >= 5, np.floor(price) + 0.99, np.round(np.maximum(price, 0.49), 2))

        style = rng.integers(0, N_STYLES, n)
        popularity = np.empty(n)
        brand = np.empty(n, dtype=object)
        for k in range(n_cat):
            members = np.flatnonzero(category == k)
            ranks = rng.permutation(members.size)
            weight = (ranks + 1.0) ** -ZIPF_EXPONENT
            popularity[members] = weight / weight.sum()
            # each style has a home brand per category, so brand carries style information
            n_brands = int(rng.integers(6, 15))
            names = np.array(
                [f"{BRAND_STEMS[(3 * k + b) % len(BRAND_STEMS)]} {b + 1}" for b in range(n_brands)]
            )
            home_brand = rng.integers(0, n_brands, N_STYLES)
            zipf_brand = rng.choice(n_brands, size=members.size, p=_zipf(n_brands, 1.0))
            brand_idx = np.where(rng.random(members.size) < 0.6, home_brand[style[members]], zipf_brand)
            brand[members] = names[brand_idx]

        replenishment_days = np.full(n, np.nan)
        for name, base in REPLENISHMENT_BASE_DAYS.items():
            members = np.flatnonzero(category == CATEGORIES.index(name))
            has = rng.random(members.size) < REPLENISHABLE_SHARE
            cycle = np.round(base * rng.uniform(0.7, 1.5, members.size))
            cycle = np.clip(cycle, *REPLENISHMENT_DAYS_RANGE)
            replenishment_days[members[has]] = cycle[has]

        status = rng.random(n)
        is_new = status < NEW_PRODUCT_SHARE
        is_active = ~((status >= NEW_PRODUCT_SHARE) & (status < NEW_PRODUCT_SHARE + INACTIVE_SHARE))

        # base sampling weight: popularity, fewer sales for discontinued ones, none for new ones
        base_weight = popularity * np.where(is_active, 1.0, INACTIVE_WEIGHT) * ~is_new
        relative_price = price / CATEGORY_MEDIAN_PRICE[category]
        cdf_parts, product_parts = [], []
        for k in range(n_cat):
            members = np.flatnonzero(category == k)
            for s in range(N_STYLES):
                style_weight = base_weight[members] * np.exp(STYLE_BOOST * (style[members] == s))
                for b, elasticity in enumerate(PRICE_ELASTICITY_BY_BIN):
                    w = style_weight * relative_price[members] ** -elasticity
                    if w.sum() <= 0:
                        w = np.ones(members.size)
                    cdf = np.cumsum(w) / w.sum()
                    cdf[-1] = 1.0
                    cell = (k * N_STYLES + s) * len(PRICE_ELASTICITY_BY_BIN) + b
                    cdf_parts.append(cdf + cell)
                    product_parts.append(members)
        catalogue = _Catalogue(
            category=category,
            price=price,
            style=style,
            brand=brand,
            popularity=popularity,
            replenishment_days=replenishment_days,
            is_active=is_active,
            is_new=is_new,
            complements=np.full((n, 3), -1, dtype=np.int64),
            n_complements=np.zeros(n, dtype=np.int64),
            ids=_format_ids("P", np.arange(1, n + 1), 6),
            cell_cdf=np.concatenate(cdf_parts),
            cell_product=np.concatenate(product_parts),
        )

        # complements: 1-3 per product, in related categories, style-coherent and popular
        n_comp = rng.choice([1, 2, 3], size=n, p=[0.4, 0.35, 0.25])
        for slot in range(3):
            has = np.flatnonzero(n_comp > slot)
            options = [COMPLEMENT_CATEGORIES[CATEGORIES[k]] for k in category[has]]
            pick = (rng.random(has.size) * np.array([len(o) for o in options])).astype(int)
            comp_cat = np.array(
                [CATEGORIES.index(o[i]) for o, i in zip(options, pick, strict=True)], dtype=np.int64
            )
            catalogue.complements[has, slot] = catalogue.draw(
                comp_cat, style[has], np.zeros(has.size, dtype=np.int64), rng.random(has.size)
            )
        catalogue.n_complements = n_comp
        return catalogue

    def draw(self, category, style, price_bin, u) -> np.ndarray:
        """One product per row from the (category, style, price-bin) cell distribution."""
        cell = (np.asarray(category) * N_STYLES + np.asarray(style)) * len(
            PRICE_ELASTICITY_BY_BIN
        ) + price_bin
        pos = np.searchsorted(self.cell_cdf, cell + u * (1.0 - 1e-9), side="right")
        return self.cell_product[pos]


def _zipf(n: int, exponent: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


# ==============================================================================================
# Customers (all of them at once: a few hundred bytes each)
# ==============================================================================================
@dataclass
class _Population:
    n: int
    tz: np.ndarray
    lifecycle: np.ndarray
    signup_us: np.ndarray
    act_start_day: np.ndarray  # first local day index of activity
    act_end_day: np.ndarray  # exclusive
    taste: np.ndarray  # (n, categories)
    style: np.ndarray
    price_sensitivity: np.ndarray
    price_bin: np.ndarray
    sessions_per_year: np.ndarray
    shop_mix: np.ndarray  # (n, shop channels)
    has_app: np.ndarray
    has_loyalty: np.ndarray
    has_email: np.ndarray
    responsiveness: np.ndarray  # (n, message channels)
    pref_hour: np.ndarray
    pref_width: np.ndarray
    weekend_pref: np.ndarray
    replenishment_loyalty: np.ndarray
    holdout: np.ndarray
    segment: np.ndarray
    p_base: np.ndarray
    uplift: np.ndarray  # (n, treatments)
    home_store: np.ndarray
    message_intensity: np.ndarray
    consent_opted: np.ndarray  # (n, message channels) initial answer
    consent_us: np.ndarray  # when it was given
    opt_out_us: np.ndarray  # INT64_MAX when never
    ids: pa.Array  # canonical ids, then loyalty ids, then device ids (nulls where none)
    email_ids: pa.Array

    @staticmethod
    def make(
        n: int,
        window: _Window,
        rng: np.random.Generator,
        rng_ids: np.random.Generator,
        rng_consent: np.random.Generator,
    ) -> _Population:
        tz = rng.choice(len(TIMEZONES), size=n, p=TIMEZONE_SHARE).astype(np.int8)
        lifecycle = rng.choice(len(LIFECYCLES), size=n, p=LIFECYCLE_SHARE).astype(np.int8)

        # lifecycle → how long ago they stopped shopping and when they signed up (days before end)
        gap_days = np.zeros(n, dtype=np.int64)
        lapsing, dormant = lifecycle == 2, lifecycle == 3
        gap_days[lapsing] = rng.integers(*LAPSING_GAP_DAYS, lapsing.sum(), endpoint=True)
        gap_days[dormant] = rng.integers(*DORMANT_GAP_DAYS, dormant.sum(), endpoint=True)
        signup_days_before = np.select(
            [lifecycle == 0, lifecycle == 1],
            [rng.uniform(*NEW_SIGNUP_DAYS, n), rng.uniform(NEW_SIGNUP_DAYS[1] + 15, 1500, n)],
            gap_days + rng.uniform(30, 1300, n),
        )
        signup_us = window.end_us - np.round(signup_days_before * US_PER_DAY).astype(np.int64)
        signup_day = np.floor_divide(signup_us - window.start_us, US_PER_DAY)
        act_start_day = np.maximum(0, signup_day + 1)
        act_end_day = window.days - gap_days

        taste = rng.gamma(
            TASTE_CONCENTRATION * CATEGORY_APPEAL * len(CATEGORIES) / CATEGORY_APPEAL.sum(),
            size=(n, len(CATEGORIES)),
        )
        taste += 1e-12
        taste /= taste.sum(axis=1, keepdims=True)
        style = rng.integers(0, N_STYLES, n)
        price_sensitivity = rng.beta(1.6, 1.6, n)
        price_bin = np.minimum((price_sensitivity * 3).astype(np.int64), 2)
        activity_z = rng.standard_normal(n)

        # uplift segment: a multinomial logit of latent traits (Gumbel-max sampling)
        scores = np.stack(
            [
                -0.3 + 1.2 * activity_z + 0.8 * (lifecycle == 1) - 1.0 * price_sensitivity,
                0.0 + 2.5 * (price_sensitivity - 0.5) + 0.3 * (lifecycle == 0),
                -0.6 - 0.8 * activity_z + 1.5 * (lifecycle == 3) + 0.6 * (lifecycle == 2),
                np.full(n, -1.9),
            ],
            axis=1,
        )
        segment = np.argmax(scores + rng.gumbel(size=scores.shape), axis=1).astype(np.int8)
        sessions_per_year = np.minimum(
            SESSIONS_PER_YEAR * np.exp(ACTIVITY_LOG_SD * activity_z) * SEGMENT_ACTIVITY_FACTOR[segment],
            MAX_SESSIONS_PER_YEAR,
        )

        shop_mix = rng.dirichlet(SHOP_MIX_ALPHA, size=n)
        has_app = rng.random(n) < HAS_APP_SHARE
        shop_mix[~has_app, WEB] += shop_mix[~has_app, APP]
        shop_mix[~has_app, APP] = 0.0
        # who is known to which source system (store shoppers mostly carry a loyalty card)
        has_loyalty = rng_ids.random(n) < np.clip(0.35 + 1.0 * shop_mix[:, STORE], 0, 0.95)
        has_email = rng_ids.random(n) < 0.88

        # responsiveness per message channel, correlated with how they shop
        responsiveness = RESPONSIVENESS_SD * rng.standard_normal((n, len(MESSAGE_CHANNELS)))
        responsiveness[:, 0] += 1.2 * (shop_mix[:, WEB] - 0.35)
        responsiveness[:, 1] += 1.2 * (shop_mix[:, STORE] - 0.35)
        responsiveness[:, 2] += 2.0 * (shop_mix[:, APP] - 0.25)
        responsiveness[:, 3] += 3.0 * (shop_mix[:, SOCIAL_SHOP] - 0.04)

        means, sds, weights = (np.array(v) for v in zip(*PREFERRED_HOUR_MIXTURE, strict=True))
        component = rng.choice(len(weights), size=n, p=weights / weights.sum())
        pref_hour = (means[component] + sds[component] * rng.standard_normal(n)) % 24.0
        pref_width = rng.uniform(*PREFERRED_HOUR_WIDTH, n)
        weekend_pref = WEEKEND_PREF_SD * rng.standard_normal(n)
        replenishment_loyalty = rng.beta(2.0, 3.0, n)
        holdout = rng.random(n) < HOLDOUT_SHARE
        home_store = (tz.astype(np.int64) * STORES_PER_ZONE + rng.integers(0, STORES_PER_ZONE, n)).astype(
            np.int16
        )
        message_intensity = rng.gamma(MESSAGE_INTENSITY_SHAPE, MESSAGES_PER_YEAR / MESSAGE_INTENSITY_SHAPE, n)

        # conversion truth: p_base and uplift per treatment (given open) by segment
        p_lo = np.array([r[0] for r in SEGMENT_P_BASE])[segment]
        p_hi = np.array([r[1] for r in SEGMENT_P_BASE])[segment]
        p_base = p_lo + (p_hi - p_lo) * rng.random(n)
        persuasion = ARM_PERSUASION[None, :]
        noise = np.exp(0.25 * rng.standard_normal((n, len(TREATMENTS))))
        uplift = np.select(
            [
                (segment == PERSUADABLE)[:, None],
                (segment == SURE_THING)[:, None],
                (segment == LOST_CAUSE)[:, None],
            ],
            [
                (0.05 + 0.55 * price_sensitivity[:, None]) * persuasion * noise,
                0.01 * persuasion * (rng.random((n, 1)) - 0.5),
                0.01 * persuasion * noise,
            ],
            # sleeping dogs: being contacted at all pushes them away; offers soften it a little
            -(0.06 + 0.08 * rng.random((n, 1))) * (1.0 - 0.3 * persuasion),
        )

        # identities: unique per system by construction (bijections of the customer number)
        number = np.arange(n, dtype=np.uint64)
        width = max(7, len(str(n)))
        canonical = _format_ids("C", number + 1, width)
        loyalty = _format_ids("L", _scramble(number, 32, 2654435761, 104729), 10, valid=has_loyalty)
        device = _format_ids(
            "D", _scramble(number, 48, 0x5DEECE66D, 0xB5AD4ECEDA1), 12, base=16, valid=has_app
        )
        email = _format_ids(
            "E", _scramble(number, 64, 0x9E3779B97F4A7C15, 0x632BE59BD9B4E019), 16, base=16, valid=has_email
        )

        # consent per message channel: given at signup; some opt out later
        m = len(MESSAGE_CHANNELS)
        share = np.stack(
            [
                np.full(n, CONSENT_SHARE["email"]) * has_email,
                np.full(n, CONSENT_SHARE["sms"]) + 0.25 * shop_mix[:, STORE],
                np.full(n, CONSENT_SHARE["push"]) * has_app,
                np.full(n, CONSENT_SHARE["social"]) + 1.5 * shop_mix[:, SOCIAL_SHOP],
            ],
            axis=1,
        )
        consent_opted = rng_consent.random((n, m)) < share
        consent_opted[rng_consent.random(n) < NO_CONSENT_SHARE] = False
        consent_us = signup_us[:, None] + rng_consent.integers(0, 2 * US_PER_HOUR, (n, m))
        consent_us = np.minimum(consent_us, window.end_us - 1)
        opt_out_from = np.maximum(consent_us, window.start_us) + US_PER_DAY
        opt_out_span = window.end_us - US_PER_DAY - opt_out_from
        opts_out = consent_opted & (rng_consent.random((n, m)) < OPT_OUT_SHARE) & (opt_out_span > 0)
        opt_out_us = np.full((n, m), INT64_MAX, dtype=np.int64)
        offsets = (rng_consent.random((n, m)) * np.maximum(opt_out_span, 0)).astype(np.int64)
        opt_out_us[opts_out] = (opt_out_from + offsets)[opts_out]

        return _Population(
            n=n,
            tz=tz,
            lifecycle=lifecycle,
            signup_us=signup_us,
            act_start_day=act_start_day,
            act_end_day=act_end_day,
            taste=taste,
            style=style,
            price_sensitivity=price_sensitivity,
            price_bin=price_bin,
            sessions_per_year=sessions_per_year,
            shop_mix=shop_mix,
            has_app=has_app,
            has_loyalty=has_loyalty,
            has_email=has_email,
            responsiveness=responsiveness,
            pref_hour=pref_hour,
            pref_width=pref_width,
            weekend_pref=weekend_pref,
            replenishment_loyalty=replenishment_loyalty,
            holdout=holdout,
            segment=segment,
            p_base=p_base,
            uplift=uplift,
            home_store=home_store,
            message_intensity=message_intensity,
            consent_opted=consent_opted,
            consent_us=consent_us,
            opt_out_us=opt_out_us,
            ids=pa.concat_arrays([canonical, loyalty, device]),
            email_ids=email,
        )


# ==============================================================================================
# Per-chunk generation of events and messages
# ==============================================================================================
def _event_rows(cust, ts, channel, event_type, product, qty, order) -> dict[str, np.ndarray]:
    size = np.asarray(cust).size
    return {
        "cust": np.asarray(cust, dtype=np.int64),
        "ts": np.asarray(ts, dtype=np.int64),
        "channel": np.broadcast_to(np.asarray(channel, dtype=np.int8), size).copy(),
        "etype": np.broadcast_to(np.asarray(event_type, dtype=np.int8), size).copy(),
        "product": np.broadcast_to(np.asarray(product, dtype=np.int64), size).copy(),
        "qty": np.broadcast_to(np.asarray(qty, dtype=np.float64), size).copy(),
        "order": np.broadcast_to(np.asarray(order, dtype=np.int64), size).copy(),
    }


def _concat_rows(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _OrderIndex:
    """Orders sorted by (customer, first timestamp), to find a customer's first order in a time
    range with one vectorised search on the key customer * 2**TIME_BITS + (ts - origin)."""

    TIME_BITS = 47  # 2**47 µs is about 4.4 years; customer numbers in a chunk need < 16 bits

    def __init__(self, cust, ts, gross, origin_us: int):
        assert CHUNK < 2 ** (63 - self.TIME_BITS)
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


class _ChunkGenerator:
    """Events and messages of customers lo..hi-1 ("local" index = global - lo)."""

    def __init__(self, pop: _Population, cat: _Catalogue, win: _Window, lo: int, hi: int):
        self.pop, self.cat, self.win, self.lo, self.hi = pop, cat, win, lo, hi
        self.n = hi - lo
        sl = slice(lo, hi)
        self.taste = _RowSampler(pop.taste[sl])
        self.shop = _RowSampler(pop.shop_mix[sl])
        buying_mix = pop.shop_mix[sl].copy()
        buying_mix[:, WEB] += buying_mix[:, SOCIAL_SHOP]  # social is browse-only
        buying_mix[:, SOCIAL_SHOP] = 0.0
        self.buying = _RowSampler(buying_mix)
        self.next_order = 0

    # -- small helpers ------------------------------------------------------------------------
    def _g(self, cust: np.ndarray) -> np.ndarray:
        return cust + self.lo

    def _new_orders(self, count: int) -> np.ndarray:
        orders = np.arange(self.next_order, self.next_order + count, dtype=np.int64)
        self.next_order += count
        return orders

    def _products(self, cust, categories, rng) -> np.ndarray:
        g = self._g(cust)
        return self.cat.draw(categories, self.pop.style[g], self.pop.price_bin[g], rng.random(cust.size))

    def _taste_products(self, cust, rng) -> np.ndarray:
        return self._products(cust, self.taste.draw(cust, rng.random(cust.size)), rng)

    def _quantity(self, product, rng) -> np.ndarray:
        return 1.0 + rng.poisson(CATEGORY_EXTRA_UNITS[self.cat.category[product]])

    def _local_hours(self, cust, rng, store: np.ndarray | None = None) -> np.ndarray:
        g = self._g(cust)
        on_pref = rng.random(cust.size) < ON_PREFERENCE_SHARE
        hour = np.where(
            on_pref,
            (self.pop.pref_hour[g] + self.pop.pref_width[g] * rng.standard_normal(cust.size)) % 24.0,
            rng.uniform(7.0, 23.0, cust.size),
        )
        if store is not None:
            hour = np.where(store, np.clip(hour, *STORE_HOURS), hour)
        return hour

    # -- organic shopping ---------------------------------------------------------------------
    def organic_events(self, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
        pop, win = self.pop, self.win
        sl = slice(self.lo, self.hi)
        win_days = np.maximum(pop.act_end_day[sl] - pop.act_start_day[sl], 0)

        # session days: a Poisson process over the activity window, thinned by the weekday
        # preference and the season so that the kept days reveal both
        weekend_weight = np.exp(pop.weekend_pref[sl])
        max_w = np.maximum(1.0, weekend_weight)
        mean_w = (5.0 + 2.0 * weekend_weight) / 7.0
        expected = pop.sessions_per_year[sl] / 365.0 * win_days * max_w * win.season_max / mean_w
        cust = np.repeat(np.arange(self.n), rng.poisson(expected))
        day = pop.act_start_day[self._g(cust)] + (rng.random(cust.size) * win_days[cust]).astype(np.int64)
        w = np.where(win.weekday[day] >= 5, weekend_weight[cust], 1.0)
        keep = rng.random(cust.size) < w * win.season[day] / (max_w[cust] * win.season_max)
        cust, day = cust[keep], day[keep]

        channel = self.shop.draw(cust, rng.random(cust.size))
        hour = self._local_hours(cust, rng, store=channel == STORE)
        local_start = win.local_midnight_us[day] + _hours_to_us(hour)
        start = _local_to_utc(local_start, pop.tz[self._g(cust)])

        parts: list[dict[str, np.ndarray]] = []
        purchases: list[dict[str, np.ndarray]] = []

        # baskets: store visits and call-centre orders
        basket = np.flatnonzero((channel == STORE) | (channel == CALL_CENTER))
        n_lines = 1 + rng.poisson(np.where(channel[basket] == STORE, 0.6, 0.3))
        line_session = np.repeat(basket, n_lines)
        line_cust = cust[line_session]
        product = self._taste_products(line_cust, rng)
        orders = self._new_orders(basket.size)
        line_ts = start[line_session] + _within_group_index(n_lines) * 15 * US_PER_SECOND
        purchases.append(
            _event_rows(
                line_cust,
                line_ts,
                channel[line_session],
                PURCHASE,
                product,
                self._quantity(product, rng),
                np.repeat(orders, n_lines),
            )
        )

        # browsing: web/app (search, view, cart, buy) and social (view only)
        browse = np.flatnonzero((channel == WEB) | (channel == APP) | (channel == SOCIAL_SHOP))
        b_cust, b_channel, b_start = cust[browse], channel[browse], start[browse]
        social = b_channel == SOCIAL_SHOP
        n_views = 1 + rng.poisson(np.where(social, 0.8, 2.5))
        searched = ~social & (rng.random(browse.size) < 0.35)
        parts.append(
            _event_rows(b_cust[searched], b_start[searched], b_channel[searched], SEARCH, -1, 0.0, -1)
        )
        session_category = self.taste.draw(b_cust, rng.random(browse.size))
        v_session = np.repeat(np.arange(browse.size), n_views)
        v_cust = b_cust[v_session]
        v_category = np.where(
            rng.random(v_session.size) < 0.8,
            session_category[v_session],
            self.taste.draw(v_cust, rng.random(v_session.size)),
        )
        v_product = self._products(v_cust, v_category, rng)
        gaps = (5 + rng.exponential(40.0, v_session.size)) * US_PER_SECOND
        cum = np.cumsum(gaps)
        first = np.cumsum(n_views) - n_views
        offset = (cum - np.repeat(cum[first] - gaps[first], n_views)).astype(np.int64)
        v_ts = b_start[v_session] + offset
        parts.append(_event_rows(v_cust, v_ts, b_channel[v_session], VIEW, v_product, 1.0, -1))

        carted = ~social[v_session] & (rng.random(v_session.size) < 0.3)
        cart_ts = v_ts + ((10 + rng.exponential(20.0, v_session.size)) * US_PER_SECOND).astype(np.int64)
        parts.append(
            _event_rows(
                v_cust[carted],
                cart_ts[carted],
                b_channel[v_session][carted],
                ADD_TO_CART,
                v_product[carted],
                1.0,
                -1,
            )
        )

        # outcome of sessions with a cart: buy here, buy in another channel later, or abandon
        n_carted = np.bincount(v_session[carted], minlength=browse.size)
        session_end = b_start + offset[first + n_views - 1] + 60 * US_PER_SECOND
        outcome_u = rng.random(browse.size)
        buy_here = (n_carted > 0) & (outcome_u < 0.55)
        elsewhere = (n_carted > 0) & (outcome_u >= 0.55) & (outcome_u < 0.80)
        g = self._g(b_cust)
        visits_store = pop.has_loyalty[g] & (pop.shop_mix[g, STORE] > 0.02)
        other_digital = np.where(b_channel == WEB, np.where(pop.has_app[g], APP, -1), WEB)
        to_store = visits_store & ((rng.random(browse.size) < 0.7) | (other_digital < 0))
        cross_channel = np.where(to_store, STORE, other_digital)
        elsewhere &= cross_channel >= 0

        # cross-channel purchase: 0-2 local days later at a preferred hour, always after the session
        cross = np.flatnonzero(elsewhere)
        c_cust = b_cust[cross]
        session_local_day = win.local_midnight_us[day[browse[cross]]]
        day_offset = rng.choice(3, size=cross.size, p=[0.3, 0.45, 0.25])
        c_hour = self._local_hours(c_cust, rng, store=cross_channel[cross] == STORE)
        c_local = session_local_day + day_offset * US_PER_DAY + _hours_to_us(c_hour)
        c_utc = _local_to_utc(c_local, pop.tz[self._g(c_cust)])
        too_early = c_utc <= session_end[cross] + 30 * US_PER_MINUTE
        c_utc = np.where(too_early, c_utc + US_PER_DAY, c_utc)
        cross_ts = np.zeros(browse.size, dtype=np.int64)
        cross_ts[cross] = c_utc

        buy_session = buy_here[v_session] & carted
        here_orders = np.full(browse.size, -1, dtype=np.int64)
        here_orders[buy_here] = self._new_orders(int(buy_here.sum()))
        rows = np.flatnonzero(buy_session)
        purchases.append(
            _event_rows(
                v_cust[rows],
                session_end[v_session[rows]] + rows % 1000,  # µs apart: a stable order inside the order
                b_channel[v_session[rows]],
                PURCHASE,
                v_product[rows],
                self._quantity(v_product[rows], rng),
                here_orders[v_session[rows]],
            )
        )
        cross_orders = np.full(browse.size, -1, dtype=np.int64)
        cross_orders[cross] = self._new_orders(cross.size)
        rows = np.flatnonzero(elsewhere[v_session] & carted)
        purchases.append(
            _event_rows(
                v_cust[rows],
                cross_ts[v_session[rows]] + rows % 1000,
                cross_channel[v_session[rows]],
                PURCHASE,
                v_product[rows],
                self._quantity(v_product[rows], rng),
                cross_orders[v_session[rows]],
            )
        )

        bought = _concat_rows(purchases)
        bought = _concat_rows([bought, self._complements(bought, rng)])
        bought = _concat_rows([bought, self._replenishments(bought, rng)])
        parts.append(bought)
        parts.append(self._returns(bought, rng))
        return parts

    def _complements(self, lines: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
        product = lines["product"]
        n_comp = self.cat.n_complements[product]
        attach = np.flatnonzero(rng.random(product.size) < COMPLEMENT_ATTACH)
        slot = (rng.random(attach.size) * n_comp[attach]).astype(np.int64)
        comp = self.cat.complements[product[attach], slot]
        ok = comp >= 0
        attach, comp = attach[ok], comp[ok]
        return _event_rows(
            lines["cust"][attach],
            lines["ts"][attach] + 5 * US_PER_SECOND,
            lines["channel"][attach],
            PURCHASE,
            comp,
            self._quantity(comp, rng),
            lines["order"][attach],
        )

    def _replenishments(self, lines: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
        """Consumables are bought again on their cycle (log-normal noise, whole days so the local
        hour stays near the customer's habit) while the customer is active, each repeat with the
        customer's replenishment loyalty."""
        pop, cat = self.pop, self.cat
        repl = ~np.isnan(cat.replenishment_days[lines["product"]])
        cust, ts, product = lines["cust"][repl], lines["ts"][repl], lines["product"][repl]
        g = self._g(cust)
        active_until = np.minimum(self.win.start_us + pop.act_end_day[g] * US_PER_DAY, self.win.end_us)
        out = []
        while cust.size:
            g = self._g(cust)
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
            alternative = self._products(cust, cat.category[product], rng)
            product = np.where(switch & ~np.isnan(cat.replenishment_days[alternative]), alternative, product)
            channel = self.buying.draw(cust, rng.random(cust.size))
            out.append(
                _event_rows(
                    cust,
                    ts,
                    channel,
                    PURCHASE,
                    product,
                    self._quantity(product, rng),
                    self._new_orders(cust.size),
                )
            )
        if not out:
            return _event_rows(np.zeros(0), np.zeros(0), 0, PURCHASE, 0, 1.0, 0)
        return _concat_rows(out)

    def _returns(self, lines: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
        product = lines["product"]
        grocery = self.cat.category[product] == CATEGORIES.index("grocery")
        ret = np.flatnonzero(~grocery & (rng.random(product.size) < RETURN_SHARE))
        cust = lines["cust"][ret]
        g = self._g(cust)
        ts = (
            lines["ts"][ret]
            + rng.integers(3, 31, ret.size) * US_PER_DAY
            + (rng.standard_normal(ret.size) * 2 * US_PER_HOUR).astype(np.int64)
        )
        in_store = self.pop.has_loyalty[g] & (rng.random(ret.size) < 0.5)
        channel = np.where(in_store, STORE, lines["channel"][ret])
        return _event_rows(cust, ts, channel, RETURN, product[ret], lines["qty"][ret], lines["order"][ret])

    # -- messages -----------------------------------------------------------------------------
    def messages(
        self, rng: np.random.Generator, organic_parts: list[dict[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
        pop, win, cat = self.pop, self.win, self.cat
        sl = slice(self.lo, self.hi)
        reachable = ~pop.holdout[sl] & pop.consent_opted[sl].any(axis=1)
        signup_day = np.floor_divide(pop.signup_us[sl] - win.start_us, US_PER_DAY)
        first_day = np.maximum(1, signup_day + 2)
        last_day = win.days - 1 - CONVERSION_WINDOW_DAYS  # every outcome window ends inside the history
        eligible_days = np.clip(last_day - first_day + 1, 0, None) * reachable
        cust = np.repeat(np.arange(self.n), rng.poisson(pop.message_intensity[sl] * eligible_days / 365.0))
        g = self._g(cust)
        m = cust.size
        day = first_day[cust] + (rng.random(m) * eligible_days[cust]).astype(np.int64)

        # logging policy, part 1: send time (explore: uniform hour slot; default: 10:00 + jitter)
        explore = rng.random(m) < EXPLORE_SHARE
        hour_slot = np.where(explore, rng.integers(EXPLORE_HOURS[0], EXPLORE_HOURS[-1] + 1, m), DEFAULT_HOUR)
        minutes = np.where(explore, rng.random(m) * 60.0, rng.random(m) * DEFAULT_SEND_JITTER_MINUTES)
        local_hour = hour_slot + minutes / 60.0
        sent = _local_to_utc(win.local_midnight_us[day] + _hours_to_us(local_hour), pop.tz[g])

        # channels consented at that instant; customers with none left are not messaged
        allowed = (
            pop.consent_opted[g] & (pop.consent_us[g] <= sent[:, None]) & (sent[:, None] < pop.opt_out_us[g])
        )
        n_allowed = allowed.sum(axis=1)
        keep = n_allowed > 0
        cust, g, day, explore, hour_slot, local_hour, sent, allowed, n_allowed = (
            a[keep] for a in (cust, g, day, explore, hour_slot, local_hour, sent, allowed, n_allowed)
        )
        m = cust.size

        # logging policy, part 2: channel and offer
        priority = [MESSAGE_CHANNELS.index(ch) for ch in DEFAULT_CHANNEL_PRIORITY]
        default_channel = np.array(priority)[np.argmax(allowed[:, priority], axis=1)]
        pick = (rng.random(m) * n_allowed).astype(np.int64)
        random_channel = np.argmax(np.cumsum(allowed, axis=1) > pick[:, None], axis=1)
        channel = np.where(explore, random_channel, default_channel)
        arm = np.where(explore, rng.integers(0, len(TREATMENTS), m), 0)
        is_default_channel = channel == default_channel
        is_default_hour = hour_slot == DEFAULT_HOUR
        propensity_channel = EXPLORE_SHARE / n_allowed + (1 - EXPLORE_SHARE) * is_default_channel
        propensity_hour = EXPLORE_SHARE / len(EXPLORE_HOURS) + (1 - EXPLORE_SHARE) * is_default_hour
        propensity_offer = EXPLORE_SHARE / len(TREATMENTS) + (1 - EXPLORE_SHARE) * (arm == 0)
        propensity = EXPLORE_SHARE / (n_allowed * len(EXPLORE_HOURS) * len(TREATMENTS)) + (
            1 - EXPLORE_SHARE
        ) * (is_default_channel & is_default_hour & (arm == 0))

        # outcomes
        weekday = win.weekday[day]
        p_open = _open_probability(
            channel,
            pop.responsiveness[g, channel],
            local_hour,
            weekday,
            pop.pref_hour[g],
            pop.pref_width[g],
            pop.weekend_pref[g],
        )
        opened = rng.random(m) < p_open
        open_delay = np.minimum(rng.exponential(OPEN_DELAY_MEAN_HOURS[channel]), MAX_OPEN_DELAY_HOURS)
        opened_ts = sent + _hours_to_us(open_delay) + 5 * US_PER_SECOND
        p_click = _click_probability(pop.responsiveness[g, channel], arm)
        clicked = opened & (rng.random(m) < p_click)
        clicked_ts = opened_ts + ((10 + rng.exponential(240.0, m)) * US_PER_SECOND).astype(np.int64)

        p_control = pop.p_base[g]
        p_if_opened = np.clip(p_control + pop.uplift[g, arm], 0.0, 1.0)
        p_treated = p_control + p_open * (p_if_opened - p_control)
        u_convert = rng.random(m)
        converted = u_convert < np.where(opened, p_if_opened, p_control)
        # a conversion below p_base would have happened without the message ("baseline"); it is
        # credited to an organic order in the window when the customer has one
        baseline = converted & (u_convert < p_control)
        window_end = sent + CONVERSION_WINDOW_DAYS * US_PER_DAY - US_PER_SECOND
        after_open = np.where(clicked, clicked_ts, opened_ts) + (
            rng.exponential(CONVERSION_DELAY_MEAN_DAYS, m) * US_PER_DAY
        ).astype(np.int64)
        anytime = sent + (rng.random(m) * (CONVERSION_WINDOW_DAYS * US_PER_DAY)).astype(np.int64)
        converted_ts = np.minimum(np.where(opened, after_open, anytime), window_end)

        # the digital channel the customer lands in: push opens the app
        share_app = pop.shop_mix[g, APP] / np.maximum(pop.shop_mix[g, APP] + pop.shop_mix[g, WEB], 1e-9)
        land_app = (channel == MESSAGE_CHANNELS.index("push")) | (rng.random(m) < share_app)
        land_channel = np.where(land_app & pop.has_app[g], APP, WEB)

        discount_pct = np.array([0.0, *(o.value if o.kind == "discount" else 0.0 for o in OFFERS)])
        bogo_arm = TREATMENTS.index("OF_BOGO")
        gross = np.zeros(m)
        first_price = np.zeros(m)

        organic = self._order_index(organic_parts)
        lookup = np.flatnonzero(baseline)
        found, order_pos = organic.first_between(cust[lookup], sent[lookup], window_end[lookup])
        credited = lookup[found]
        converted_ts[credited] = organic.ts[order_pos[found]]
        gross[credited] = organic.gross[order_pos[found]]

        # new orders for the other conversions; they appear as web/app purchases in events
        conv = np.setdiff1d(np.flatnonzero(converted), credited)
        n_lines = 1 + rng.poisson(0.6, conv.size)
        line_conv = np.repeat(np.arange(conv.size), n_lines)
        line_cust = cust[conv][line_conv]
        product = self._taste_products(line_cust, rng)
        qty = self._quantity(product, rng)
        first_line = _within_group_index(n_lines) == 0
        qty = np.where(first_line & (arm[conv][line_conv] == bogo_arm), np.maximum(qty, 2.0), qty)
        amount = np.round(cat.price[product] * qty, 2)
        gross[conv] = np.bincount(line_conv, weights=amount, minlength=conv.size)
        first_price[conv[line_conv[first_line]]] = cat.price[product[first_line]]
        orders = self._new_orders(conv.size)
        event_parts = [
            _event_rows(
                line_cust,
                converted_ts[conv][line_conv] + _within_group_index(n_lines),
                land_channel[conv][line_conv],
                PURCHASE,
                product,
                qty,
                orders[line_conv],
            )
        ]
        # revenue net of the offer: percent off for discounts; for BOGO the free unit of new orders
        # (an organic order credited to a BOGO message gets its free unit on top)
        revenue = gross * (1 - discount_pct[arm] / 100.0) - np.where(arm == bogo_arm, first_price, 0.0)
        # a click lands on a product page
        clicks = np.flatnonzero(clicked)
        event_parts.append(
            _event_rows(
                cust[clicks],
                clicked_ts[clicks],
                land_channel[clicks],
                VIEW,
                self._taste_products(cust[clicks], rng),
                1.0,
                -1,
            )
        )

        revenue_all = np.where(converted, np.round(revenue, 2), np.nan)
        messages = {
            "gidx": g.astype(np.int64),
            "seq": np.arange(m, dtype=np.int64),
            "sent": sent,
            "channel": channel.astype(np.int8),
            "week": (day // 7 + 1).astype(np.int64),
            "arm": arm.astype(np.int8),
            "opened": np.where(opened, opened_ts, -1),
            "clicked": np.where(clicked, clicked_ts, -1),
            "converted": np.where(converted, converted_ts, -1),
            "revenue": revenue_all,
            "explore": explore,
            "local_hour": local_hour,
            "weekday": weekday.astype(np.int8),
            "propensity_channel": propensity_channel,
            "propensity_hour": propensity_hour,
            "propensity_offer": propensity_offer,
            "propensity": propensity,
            "p_open": p_open,
            "p_click": p_click,
            "p_if_opened": p_if_opened,
            "p_treated": p_treated,
            "p_control": p_control,
        }
        return messages, event_parts

    def _order_index(self, parts: list[dict[str, np.ndarray]]) -> _OrderIndex:
        """The chunk's organic orders that will be observed, searchable by (customer, time)."""
        ev = _concat_rows(parts)
        g = self._g(ev["cust"])
        sel = (ev["etype"] == PURCHASE) & (ev["order"] >= 0)
        sel &= (ev["ts"] >= self.win.start_us) & (ev["ts"] < self.win.end_us)
        sel &= ~((ev["channel"] == STORE) & ~self.pop.has_loyalty[g])
        rows = np.flatnonzero(sel)
        rows = rows[np.lexsort((ev["ts"][rows], ev["order"][rows]))]
        amount = np.round(self.cat.price[ev["product"][rows]] * ev["qty"][rows], 2)
        _, first, inverse = np.unique(ev["order"][rows], return_index=True, return_inverse=True)
        gross = np.bincount(inverse, weights=amount, minlength=first.size)
        first_rows = rows[first]
        return _OrderIndex(
            ev["cust"][first_rows],
            ev["ts"][first_rows],
            gross,
            self.win.start_us,
        )

    # -- finishing ----------------------------------------------------------------------------
    def finalize_events(self, parts, rng) -> dict[str, np.ndarray]:
        """Drop what was never observed, choose the id each channel logs, number the orders."""
        pop, cat, win = self.pop, self.cat, self.win
        ev = _concat_rows(parts)
        g = self._g(ev["cust"])
        observed = (ev["ts"] >= win.start_us) & (ev["ts"] < win.end_us)
        observed &= ~((ev["channel"] == STORE) & ~pop.has_loyalty[g])  # anonymous store purchase
        ev = {k: v[observed] for k, v in ev.items()}
        g = self._g(ev["cust"])
        n = g.size

        id_kind = np.full(n, CANONICAL, dtype=np.int8)
        id_kind[ev["channel"] == STORE] = LOYALTY
        id_kind[(ev["channel"] == APP) & (rng.random(n) < APP_DEVICE_ID_SHARE)] = DEVICE

        store = np.full(n, -1, dtype=np.int64)
        in_store = ev["channel"] == STORE
        away = rng.random(n) >= HOME_STORE_SHARE
        other_store = pop.tz[g].astype(np.int64) * STORES_PER_ZONE + rng.integers(0, STORES_PER_ZONE, n)
        store[in_store] = np.where(away, other_store, pop.home_store[g])[in_store]

        priced = (ev["etype"] == PURCHASE) | (ev["etype"] == RETURN)
        amount = np.where(priced, np.round(cat.price[np.maximum(ev["product"], 0)] * ev["qty"], 2), 0.0)

        # order ids: rank a customer's orders by time; the key is then scrambled (see _order_ids)
        order_key = np.full(n, -1, dtype=np.int64)
        has_order = np.flatnonzero(ev["order"] >= 0)
        if has_order.size:
            local_order = ev["order"][has_order]
            by_order = has_order[np.lexsort((ev["ts"][has_order], local_order))]
            uniq, first = np.unique(ev["order"][by_order], return_index=True)
            o_rows = by_order[first]  # the earliest row of each order
            o_g, o_ts = g[o_rows], ev["ts"][o_rows]
            rank_order = np.lexsort((uniq, o_ts, o_g))
            sorted_g = o_g[rank_order]
            group_start = np.searchsorted(sorted_g, sorted_g, side="left")
            seq = np.empty(uniq.size, dtype=np.int64)
            seq[rank_order] = np.arange(uniq.size) - group_start
            if seq.max() >= ORDER_SLOTS:
                raise RuntimeError("too many orders for one customer")
            key_of = o_g * ORDER_SLOTS + seq
            order_key[has_order] = key_of[np.searchsorted(uniq, local_order)]

        return {
            "gidx": g.astype(np.int64),
            "seq": np.arange(n, dtype=np.int64),
            "ts": ev["ts"],
            "id_kind": id_kind,
            "channel": ev["channel"],
            "etype": ev["etype"],
            "product": ev["product"],
            "qty": ev["qty"],
            "amount": amount,
            "order_key": order_key,
            "store": store,
        }


ORDER_SLOTS = 100_000  # order keys are customer number * ORDER_SLOTS + the customer's order rank
ORDER_ID_BITS = 40


def _order_ids(keys: np.ndarray, valid: np.ndarray) -> pa.Array:
    scrambled = _scramble(np.where(valid, keys, 0), ORDER_ID_BITS, 0x9E3779B97F4B, 0x2545F491)
    return _format_ids("O", scrambled, 13, valid=valid)


# ==============================================================================================
# Scratch files and the final, time-sorted tables
# ==============================================================================================
def _write_scratch(folder: Path, chunk: int, columns: dict[str, np.ndarray], ts: np.ndarray) -> None:
    """Bucket a chunk's rows by UTC month so the final files can be time-sorted one month at a
    time (bounded memory whatever the number of customers)."""
    if ts.size == 0:
        return
    month = ts.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
    order = np.argsort(month, kind="stable")
    month_sorted = month[order]
    months, starts = np.unique(month_sorted, return_index=True)
    ends = np.append(starts[1:], month_sorted.size)
    for mo, s, e in zip(months, starts, ends, strict=True):
        rows = order[s:e]
        table = pa.table({k: v[rows] for k, v in columns.items()})
        target = folder / f"{int(mo):06d}"
        target.mkdir(parents=True, exist_ok=True)
        feather.write_feather(table, target / f"{chunk:06d}.arrow", compression="uncompressed")


def _read_month(folder: Path) -> dict[str, np.ndarray]:
    tables = [feather.read_table(f) for f in sorted(folder.iterdir())]
    table = pa.concat_tables(tables)
    return {name: table.column(name).to_numpy() for name in table.column_names}


EVENTS_SCHEMA = pa.schema(
    [
        (c.CUSTOMER_ID, pa.string()),
        (c.TS, pa.timestamp("us", tz="UTC")),
        (c.CHANNEL, pa.string()),
        (c.EVENT_TYPE, pa.string()),
        (c.PRODUCT_ID, pa.string()),
        (c.QUANTITY, pa.float64()),
        (c.AMOUNT, pa.float64()),
        (c.ORDER_ID, pa.string()),
        (c.STORE_ID, pa.string()),
    ]
)
MESSAGES_SCHEMA = pa.schema(
    [
        (c.MESSAGE_ID, pa.string()),
        (c.CUSTOMER_ID, pa.string()),
        (c.CHANNEL, pa.string()),
        (c.SENT_TS, pa.timestamp("us", tz="UTC")),
        (c.CAMPAIGN_ID, pa.string()),
        (c.OFFER_ID, pa.string()),
        (c.OPENED_TS, pa.timestamp("us", tz="UTC")),
        (c.CLICKED_TS, pa.timestamp("us", tz="UTC")),
        (c.CONVERTED_TS, pa.timestamp("us", tz="UTC")),
        (c.REVENUE, pa.float64()),
    ]
)
TRUTH_MESSAGES_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("customer_id", pa.string()),
        ("policy", pa.string()),
        ("local_send_hour", pa.float64()),
        ("local_weekday", pa.int8()),
        ("propensity_channel", pa.float64()),
        ("propensity_hour", pa.float64()),
        ("propensity_offer", pa.float64()),
        ("propensity", pa.float64()),
        ("p_open", pa.float64()),
        ("p_click_given_open", pa.float64()),
        ("p_convert_if_opened", pa.float64()),
        ("p_convert_treated", pa.float64()),
        ("p_convert_control", pa.float64()),
        ("uplift", pa.float64()),
    ]
)
STORE_IDS = _format_ids("S", np.arange(1, len(TIMEZONES) * STORES_PER_ZONE + 1), 3)


def _month_folders(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def _merge_events(folder: Path, path: Path, pop: _Population, cat: _Catalogue) -> tuple[int, float]:
    """Writes the events month by month; returns their count and the mean order value of the
    purchases (summed amounts over distinct orders), which prices the offers' costs."""
    channels = pa.array(SHOP_CHANNELS, type=pa.string())
    event_types = pa.array(EVENT_TYPES, type=pa.string())
    total = 0
    spend = 0.0
    order_keys: list[np.ndarray] = []
    with pq.ParquetWriter(path, EVENTS_SCHEMA, compression="zstd") as writer:
        for month in _month_folders(folder):
            ev = _read_month(month)
            order = np.lexsort((ev["seq"], ev["gidx"], ev["ts"]))
            ev = {k: v[order] for k, v in ev.items()}
            has_product = ev["product"] >= 0
            has_order = ev["order_key"] >= 0
            bought = has_order & (ev["etype"] == PURCHASE)
            spend += float(ev["amount"][bought].sum())
            order_keys.append(np.unique(ev["order_key"][bought]))
            table = pa.table(
                [
                    pop.ids.take(pa.array(ev["id_kind"].astype(np.int64) * pop.n + ev["gidx"])),
                    _ts_array(ev["ts"]),
                    channels.take(pa.array(ev["channel"].astype(np.int64))),
                    event_types.take(pa.array(ev["etype"].astype(np.int64))),
                    cat.ids.take(pa.array(np.maximum(ev["product"], 0), mask=~has_product)),
                    pa.array(ev["qty"], type=pa.float64()),
                    pa.array(ev["amount"], type=pa.float64()),
                    _order_ids(ev["order_key"], has_order),
                    STORE_IDS.take(pa.array(np.maximum(ev["store"], 0), mask=ev["store"] < 0)),
                ],
                schema=EVENTS_SCHEMA,
            )
            writer.write_table(table)
            total += table.num_rows
    n_orders = np.unique(np.concatenate(order_keys)).size if order_keys else 0
    return total, (spend / n_orders if n_orders else 0.0)


def _merge_messages(folder: Path, path: Path, truth_path: Path, pop: _Population) -> tuple[int, int]:
    channels = pa.array(MESSAGE_CHANNELS, type=pa.string())
    offers = pa.array([None, *(o.offer_id for o in OFFERS)], type=pa.string())
    policies = pa.array(["default", "explore"], type=pa.string())
    canonical = pop.ids.slice(0, pop.n)
    total = 0
    width = 9
    with (
        pq.ParquetWriter(path, MESSAGES_SCHEMA, compression="zstd") as writer,
        # the truth is mostly unique floats: dictionary encoding would only cost time
        pq.ParquetWriter(
            truth_path, TRUTH_MESSAGES_SCHEMA, compression="zstd", use_dictionary=["policy"]
        ) as truth_writer,
    ):
        for month in _month_folders(folder):
            ms = _read_month(month)
            order = np.lexsort((ms["seq"], ms["gidx"], ms["sent"]))
            ms = {k: v[order] for k, v in ms.items()}
            m = order.size
            message_ids = _format_ids("M", np.arange(total + 1, total + m + 1), width)
            customer_ids = canonical.take(pa.array(ms["gidx"]))
            table = pa.table(
                [
                    message_ids,
                    customer_ids,
                    channels.take(pa.array(ms["channel"].astype(np.int64))),
                    _ts_array(ms["sent"]),
                    _format_ids("CMP", ms["week"], 3),
                    offers.take(pa.array(ms["arm"].astype(np.int64))),
                    _ts_array(ms["opened"], null=ms["opened"] < 0),
                    _ts_array(ms["clicked"], null=ms["clicked"] < 0),
                    _ts_array(ms["converted"], null=ms["converted"] < 0),
                    pa.array(ms["revenue"], type=pa.float64(), from_pandas=True),
                ],
                schema=MESSAGES_SCHEMA,
            )
            truth = pa.table(
                [
                    message_ids,
                    customer_ids,
                    policies.take(pa.array(ms["explore"].astype(np.int64))),
                    pa.array(ms["local_hour"]),
                    pa.array(ms["weekday"], type=pa.int8()),
                    pa.array(ms["propensity_channel"]),
                    pa.array(ms["propensity_hour"]),
                    pa.array(ms["propensity_offer"]),
                    pa.array(ms["propensity"]),
                    pa.array(ms["p_open"]),
                    pa.array(ms["p_click"]),
                    pa.array(ms["p_if_opened"]),
                    pa.array(ms["p_treated"]),
                    pa.array(ms["p_control"]),
                    pa.array(ms["p_treated"] - ms["p_control"]),
                ],
                schema=TRUTH_MESSAGES_SCHEMA,
            )
            writer.write_table(table)
            truth_writer.write_table(truth)
            total += m
    return total, total


def _write(table: pa.Table, path: Path) -> int:
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def _write_static_tables(
    folder: Path, pop: _Population, cat: _Catalogue, window: _Window, mean_order_value: float
) -> dict[str, int]:
    rows: dict[str, int] = {}
    n = pop.n
    canonical = pop.ids.slice(0, n)
    zones = pa.array(TIMEZONES, type=pa.string())
    timezone = zones.take(pa.array(pop.tz.astype(np.int64)))

    rows["customers"] = _write(
        pa.table(
            {
                c.CUSTOMER_ID: canonical,
                c.TIMEZONE: timezone,
                c.SIGNUP_TS: _ts_array(pop.signup_us),
                "holdout": pa.array(pop.holdout),
            }
        ),
        folder / "customers.parquet",
    )

    # identities: crm (canonical), loyalty card, app device, email hash; grouped by customer
    number = np.arange(n, dtype=np.int64)
    systems = pa.array(["crm", "pos_loyalty", "app_device", "email"], type=pa.string())
    source_ids = pa.concat_arrays([pop.ids, pop.email_ids])
    present = np.concatenate([np.ones(n, dtype=bool), pop.has_loyalty, pop.has_app, pop.has_email])
    system = np.repeat(np.arange(4), n)[present]
    source_pos = np.flatnonzero(present)
    owner = np.tile(number, 4)[present]
    order = np.lexsort((system, owner))
    rows["identities"] = _write(
        pa.table(
            {
                c.SOURCE_SYSTEM: systems.take(pa.array(system[order])),
                c.SOURCE_ID: source_ids.take(pa.array(source_pos[order])),
                c.CUSTOMER_ID: canonical.take(pa.array(owner[order])),
            }
        ),
        folder / "identities.parquet",
    )

    # consent: one row per customer and message channel, plus a later opt-out row for some
    k = len(MESSAGE_CHANNELS)
    owner = np.repeat(number, k)
    channel = np.tile(np.arange(k), n)
    opted = pop.consent_opted.ravel()
    updated = pop.consent_us.ravel()
    outs = np.flatnonzero(pop.opt_out_us.ravel() < INT64_MAX)
    owner = np.concatenate([owner, owner[outs]])
    channel = np.concatenate([channel, channel[outs]])
    opted = np.concatenate([opted, np.zeros(outs.size, dtype=bool)])
    updated = np.concatenate([updated, pop.opt_out_us.ravel()[outs]])
    order = np.lexsort((updated, channel, owner))
    rows["consent"] = _write(
        pa.table(
            {
                c.CUSTOMER_ID: canonical.take(pa.array(owner[order])),
                c.CHANNEL: pa.array(MESSAGE_CHANNELS, type=pa.string()).take(pa.array(channel[order])),
                c.OPTED_IN: pa.array(opted[order]),
                c.UPDATED_TS: _ts_array(updated[order]),
            }
        ),
        folder / "consent.parquet",
    )

    category = pa.array(CATEGORIES, type=pa.string()).take(pa.array(cat.category.astype(np.int64)))
    rows["products"] = _write(
        pa.table(
            {
                c.PRODUCT_ID: cat.ids,
                c.CATEGORY: category,
                c.PRICE: pa.array(cat.price),
                c.BRAND: pa.array(cat.brand.tolist(), type=pa.string()),
                c.REPLENISHMENT_DAYS: pa.array(cat.replenishment_days, from_pandas=True),
                c.IS_ACTIVE: pa.array(cat.is_active),
            }
        ),
        folder / "products.parquet",
    )
    rows["offers"] = _write(
        pa.table(
            {
                c.OFFER_ID: pa.array([o.offer_id for o in OFFERS], type=pa.string()),
                c.KIND: pa.array([o.kind for o in OFFERS], type=pa.string()),
                c.VALUE: pa.array([o.value for o in OFFERS], type=pa.float64()),
                # currency per redemption, as the data contract has it (not the truth's share)
                c.COST: pa.array(list(offer_costs(mean_order_value).values()), type=pa.float64()),
            }
        ),
        folder / "offers.parquet",
    )

    # ---- truth ----
    truth = folder / "truth"
    act_start = pop.act_start_day
    act_end = np.maximum(pop.act_end_day, act_start)
    no_activity = act_end <= act_start
    truth_customers = {
        "customer_id": canonical,
        "timezone": timezone,
        "signup_ts": _ts_array(pop.signup_us),
        "lifecycle": pa.array(LIFECYCLES, type=pa.string()).take(pa.array(pop.lifecycle.astype(np.int64))),
        # activity window in whole days (UTC midnights; the customer's local days are close to it)
        "activity_start_ts": _ts_array(window.start_us + act_start * US_PER_DAY, null=no_activity),
        "activity_end_ts": _ts_array(window.start_us + act_end * US_PER_DAY, null=no_activity),
        "holdout": pa.array(pop.holdout),
        "home_store_id": STORE_IDS.take(pa.array(pop.home_store.astype(np.int64))),
        "has_app": pa.array(pop.has_app),
        "has_loyalty_card": pa.array(pop.has_loyalty),
        "style": pa.array(pop.style.astype(np.int16)),
        **{f"taste_{k}": pa.array(pop.taste[:, i]) for i, k in enumerate(CATEGORIES)},
        "price_sensitivity": pa.array(pop.price_sensitivity),
        "sessions_per_year": pa.array(pop.sessions_per_year),
        **{f"shop_{ch}": pa.array(pop.shop_mix[:, i]) for i, ch in enumerate(SHOP_CHANNELS)},
        **{
            f"responsiveness_{ch}": pa.array(pop.responsiveness[:, i])
            for i, ch in enumerate(MESSAGE_CHANNELS)
        },
        "preferred_hour": pa.array(pop.pref_hour),
        "preferred_hour_width": pa.array(pop.pref_width),
        "weekend_pref": pa.array(pop.weekend_pref),
        "replenishment_loyalty": pa.array(pop.replenishment_loyalty),
        "message_intensity": pa.array(pop.message_intensity),
        "segment": pa.array(SEGMENTS, type=pa.string()).take(pa.array(pop.segment.astype(np.int64))),
        "p_base": pa.array(pop.p_base),
        **{f"uplift_{t}": pa.array(pop.uplift[:, i]) for i, t in enumerate(TREATMENTS)},
    }
    assert tuple(truth_customers) == TRUTH_COLUMNS["customers"]
    rows["truth/customers"] = _write(pa.table(truth_customers), truth / "customers.parquet")

    truth_products = {
        "product_id": cat.ids,
        "category": category,
        "style": pa.array(cat.style.astype(np.int16)),
        "brand": pa.array(cat.brand.tolist(), type=pa.string()),
        "price": pa.array(cat.price),
        "popularity": pa.array(cat.popularity),
        "replenishment_days": pa.array(cat.replenishment_days, from_pandas=True),
        "is_active": pa.array(cat.is_active),
        "is_new": pa.array(cat.is_new),
    }
    assert tuple(truth_products) == TRUTH_COLUMNS["products"]
    rows["truth/products"] = _write(pa.table(truth_products), truth / "products.parquet")

    owner, slot = np.nonzero(cat.complements >= 0)
    rows["truth/product_complements"] = _write(
        pa.table(
            {
                "product_id": cat.ids.take(pa.array(owner)),
                "complement_product_id": cat.ids.take(pa.array(cat.complements[owner, slot])),
                "attach_probability": pa.array(COMPLEMENT_ATTACH / cat.n_complements[owner]),
            }
        ),
        truth / "product_complements.parquet",
    )
    return rows
