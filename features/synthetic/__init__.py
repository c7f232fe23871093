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

Modules
-------
`_parameters` (every number above), `_catalogue`, `_population`, then per chunk of customers
`_chunk`, `_shopping` (organic events), `_messages` and `_observed` (what the source systems log);
`_writing` (scratch files, time-sorted events and messages) and `_static_tables`; `_truth` (the
formulas above, for scoring policies); `_generate` (the run, `CHUNK` and `truth/meta.json`).
"""

from ._generate import GENERATOR_VERSION, GenerationSummary, default_n_products, generate
from ._parameters import CATEGORIES, MESSAGE_CHANNELS, OFFERS, SEGMENTS, TREATMENTS, TRUTH_COLUMNS, Offer
from ._static_tables import offer_costs
from ._truth import (
    hour_match,
    local_time_parts,
    true_click_probability,
    true_conversion_probability,
    true_open_probability,
    true_uplift,
)

__all__ = [
    "CATEGORIES",
    "GENERATOR_VERSION",
    "MESSAGE_CHANNELS",
    "OFFERS",
    "SEGMENTS",
    "TREATMENTS",
    "TRUTH_COLUMNS",
    "GenerationSummary",
    "Offer",
    "default_n_products",
    "generate",
    "hour_match",
    "local_time_parts",
    "offer_costs",
    "true_click_probability",
    "true_conversion_probability",
    "true_open_probability",
    "true_uplift",
]
