"""The parameters of the generative story (the package docstring tells it): catalogue, customers,
messaging, offers and uplift segments, and the columns of the truth tables. `truth/meta.json`
records most of them beside each generated folder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.contract import DEFAULT_CHANNELS, OFFER_KINDS

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
