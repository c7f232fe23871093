"""The tables written once from the whole population and catalogue: customers, identities,
consent, products and offers, and the truth's customers, products and product complements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features import columns as c

from ._catalogue import Catalogue
from ._ids import STORE_IDS
from ._parameters import (
    CATEGORIES,
    COMPLEMENT_ATTACH,
    LIFECYCLES,
    MESSAGE_CHANNELS,
    OFFERS,
    SEGMENTS,
    SHOP_CHANNELS,
    TIMEZONES,
    TREATMENTS,
    TRUTH_COLUMNS,
)
from ._population import Population
from ._time import INT64_MAX, US_PER_DAY, Window, ts_array


def offer_costs(mean_order_value: float) -> dict[str, float]:
    """`offers.cost` as written: currency per redemption, each offer's share of the order value
    × the mean order value of the generated purchases, rounded to cents."""
    return {o.offer_id: round(o.cost_share * mean_order_value, 2) for o in OFFERS}


def write_static_tables(
    folder: Path, pop: Population, cat: Catalogue, window: Window, mean_order_value: float
) -> dict[str, int]:
    """Writes every table but events and messages into `folder` (truth tables into its `truth/`);
    returns their row counts, truth tables as `truth/<name>`."""
    truth = folder / "truth"
    return {
        "customers": _write(_customers(pop), folder / "customers.parquet"),
        "identities": _write(_identities(pop), folder / "identities.parquet"),
        "consent": _write(_consent(pop), folder / "consent.parquet"),
        "products": _write(_products(cat), folder / "products.parquet"),
        "offers": _write(_offers(mean_order_value), folder / "offers.parquet"),
        "truth/customers": _write(_truth_customers(pop, window), truth / "customers.parquet"),
        "truth/products": _write(_truth_products(cat), truth / "products.parquet"),
        "truth/product_complements": _write(_truth_complements(cat), truth / "product_complements.parquet"),
    }


def _write(table: pa.Table, path: Path) -> int:
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def _canonical_ids(pop: Population) -> pa.Array:
    return pop.ids.slice(0, pop.n)


def _timezone_names(pop: Population) -> pa.Array:
    return pa.array(TIMEZONES, type=pa.string()).take(pa.array(pop.tz.astype(np.int64)))


def _category_names(cat: Catalogue) -> pa.Array:
    return pa.array(CATEGORIES, type=pa.string()).take(pa.array(cat.category.astype(np.int64)))


def _customers(pop: Population) -> pa.Table:
    return pa.table(
        {
            c.CUSTOMER_ID: _canonical_ids(pop),
            c.TIMEZONE: _timezone_names(pop),
            c.SIGNUP_TS: ts_array(pop.signup_us),
            "holdout": pa.array(pop.holdout),
        }
    )


def _identities(pop: Population) -> pa.Table:
    """crm (canonical), loyalty card, app device, email hash; grouped by customer."""
    n = pop.n
    number = np.arange(n, dtype=np.int64)
    systems = pa.array(["crm", "pos_loyalty", "app_device", "email"], type=pa.string())
    source_ids = pa.concat_arrays([pop.ids, pop.email_ids])
    present = np.concatenate([np.ones(n, dtype=bool), pop.has_loyalty, pop.has_app, pop.has_email])
    system = np.repeat(np.arange(4), n)[present]
    source_pos = np.flatnonzero(present)
    owner = np.tile(number, 4)[present]
    order = np.lexsort((system, owner))
    return pa.table(
        {
            c.SOURCE_SYSTEM: systems.take(pa.array(system[order])),
            c.SOURCE_ID: source_ids.take(pa.array(source_pos[order])),
            c.CUSTOMER_ID: _canonical_ids(pop).take(pa.array(owner[order])),
        }
    )


def _consent(pop: Population) -> pa.Table:
    """One row per customer and message channel, plus a later opt-out row for some."""
    k = len(MESSAGE_CHANNELS)
    owner = np.repeat(np.arange(pop.n, dtype=np.int64), k)
    channel = np.tile(np.arange(k), pop.n)
    opted = pop.consent_opted.ravel()
    updated = pop.consent_us.ravel()
    outs = np.flatnonzero(pop.opt_out_us.ravel() < INT64_MAX)
    owner = np.concatenate([owner, owner[outs]])
    channel = np.concatenate([channel, channel[outs]])
    opted = np.concatenate([opted, np.zeros(outs.size, dtype=bool)])
    updated = np.concatenate([updated, pop.opt_out_us.ravel()[outs]])
    order = np.lexsort((updated, channel, owner))
    return pa.table(
        {
            c.CUSTOMER_ID: _canonical_ids(pop).take(pa.array(owner[order])),
            c.CHANNEL: pa.array(MESSAGE_CHANNELS, type=pa.string()).take(pa.array(channel[order])),
            c.OPTED_IN: pa.array(opted[order]),
            c.UPDATED_TS: ts_array(updated[order]),
        }
    )


def _products(cat: Catalogue) -> pa.Table:
    return pa.table(
        {
            c.PRODUCT_ID: cat.ids,
            c.CATEGORY: _category_names(cat),
            c.PRICE: pa.array(cat.price),
            c.BRAND: pa.array(cat.brand.tolist(), type=pa.string()),
            c.REPLENISHMENT_DAYS: pa.array(cat.replenishment_days, from_pandas=True),
            c.IS_ACTIVE: pa.array(cat.is_active),
        }
    )


def _offers(mean_order_value: float) -> pa.Table:
    return pa.table(
        {
            c.OFFER_ID: pa.array([o.offer_id for o in OFFERS], type=pa.string()),
            c.KIND: pa.array([o.kind for o in OFFERS], type=pa.string()),
            c.VALUE: pa.array([o.value for o in OFFERS], type=pa.float64()),
            # currency per redemption, as the data contract has it (not the truth's share)
            c.COST: pa.array(list(offer_costs(mean_order_value).values()), type=pa.float64()),
        }
    )


def _truth_customers(pop: Population, window: Window) -> pa.Table:
    act_start = pop.act_start_day
    act_end = np.maximum(pop.act_end_day, act_start)
    no_activity = act_end <= act_start
    columns = {
        "customer_id": _canonical_ids(pop),
        "timezone": _timezone_names(pop),
        "signup_ts": ts_array(pop.signup_us),
        "lifecycle": pa.array(LIFECYCLES, type=pa.string()).take(pa.array(pop.lifecycle.astype(np.int64))),
        # activity window in whole days (UTC midnights; the customer's local days are close to it)
        "activity_start_ts": ts_array(window.start_us + act_start * US_PER_DAY, null=no_activity),
        "activity_end_ts": ts_array(window.start_us + act_end * US_PER_DAY, null=no_activity),
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
    assert tuple(columns) == TRUTH_COLUMNS["customers"]
    return pa.table(columns)


def _truth_products(cat: Catalogue) -> pa.Table:
    columns = {
        "product_id": cat.ids,
        "category": _category_names(cat),
        "style": pa.array(cat.style.astype(np.int16)),
        "brand": pa.array(cat.brand.tolist(), type=pa.string()),
        "price": pa.array(cat.price),
        "popularity": pa.array(cat.popularity),
        "replenishment_days": pa.array(cat.replenishment_days, from_pandas=True),
        "is_active": pa.array(cat.is_active),
        "is_new": pa.array(cat.is_new),
    }
    assert tuple(columns) == TRUTH_COLUMNS["products"]
    return pa.table(columns)


def _truth_complements(cat: Catalogue) -> pa.Table:
    owner, slot = np.nonzero(cat.complements >= 0)
    return pa.table(
        {
            "product_id": cat.ids.take(pa.array(owner)),
            "complement_product_id": cat.ids.take(pa.array(cat.complements[owner, slot])),
            "attach_probability": pa.array(COMPLEMENT_ATTACH / cat.n_complements[owner]),
        }
    )
