"""`generate()`: the whole run, from the seeds to the finished folder swapped into place, and the
`truth/meta.json` that records how it was made."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._catalogue import Catalogue
from ._chunk import CustomerChunk
from ._messages import messages
from ._observed import observed_events
from ._parameters import (
    ACTIVITY_LOG_SD,
    APP_DEVICE_ID_SHARE,
    CATEGORIES,
    CATEGORY_APPEAL,
    CATEGORY_MEDIAN_PRICE,
    CATEGORY_PRICE_SIGMA,
    CHANNEL_OPEN_LOGIT,
    CLICK_LOGIT,
    CLICK_OFFER_BONUS,
    COMPLEMENT_ATTACH,
    COMPLEMENT_CATEGORIES,
    CONSENT_SHARE,
    CONVERSION_WINDOW_DAYS,
    DEFAULT_CHANNEL_PRIORITY,
    DEFAULT_HOUR,
    EXPLORE_HOURS,
    EXPLORE_SHARE,
    HOLDOUT_SHARE,
    HOUR_MATCH_GAIN,
    HOUR_MATCH_OFFSET,
    LIFECYCLE_SHARE,
    LIFECYCLES,
    MESSAGE_CHANNELS,
    MESSAGES_PER_YEAR,
    N_STYLES,
    NO_OFFER_PERSUASION,
    OFFERS,
    PRICE_ELASTICITY_BY_BIN,
    REPLENISHMENT_BASE_DAYS,
    RETURN_SHARE,
    SEGMENT_ACTIVITY_FACTOR,
    SEGMENT_P_BASE,
    SEGMENTS,
    SESSIONS_PER_YEAR,
    SHOP_CHANNELS,
    SHOP_MIX_ALPHA,
    STYLE_BOOST,
    TIMEZONE_SHARE,
    TIMEZONES,
    TREATMENTS,
)
from ._population import Population
from ._shopping import organic_events
from ._static_tables import offer_costs, write_static_tables
from ._time import Window
from ._writing import merge_events, merge_messages, write_scratch

GENERATOR_VERSION = 2  # 2: offers.cost in currency per redemption (was a share of the order)

# Customers are generated in chunks of this size (bounded memory); results depend on it.
CHUNK = 50_000


@dataclass
class GenerationSummary:
    """What `generate` wrote: the folder, row counts per table (truth tables as `truth/<name>`)
    and how long it took."""

    out_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def default_n_products(n_customers: int) -> int:
    """Catalogue size that grows with the square root of the customer base (5,656 for 20k)."""
    return int(min(20000, max(300, 40 * n_customers**0.5)))


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

    window = Window.make(end, days)
    seeds = np.random.SeedSequence(seed).spawn(6)
    ss_products, ss_customers, ss_identities, ss_consent, ss_events, ss_messages = seeds
    catalogue = Catalogue.make(n_products, np.random.default_rng(ss_products))
    population = Population.make(
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
        _write_chunks(scratch, population, catalogue, window, ss_events, ss_messages, show_progress)
        rows["events"], mean_order_value = merge_events(
            scratch / "events", tmp / "events.parquet", population, catalogue
        )
        rows["messages"], rows["truth/messages"] = merge_messages(
            scratch / "messages", tmp / "messages.parquet", tmp / "truth" / "messages.parquet", population
        )
        shutil.rmtree(scratch, ignore_errors=True)
        rows.update(write_static_tables(tmp, population, catalogue, window, mean_order_value))
        meta = _meta(seed, n_customers, n_products, end, days, window, mean_order_value)
        (tmp / "truth" / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GenerationSummary(out_dir=out_dir, rows=rows, seconds=time.perf_counter() - started)


def _write_chunks(
    scratch: Path,
    population: Population,
    catalogue: Catalogue,
    window: Window,
    ss_events: np.random.SeedSequence,
    ss_messages: np.random.SeedSequence,
    show_progress: bool,
) -> None:
    """Events and messages of each chunk of `CHUNK` customers into the scratch folder, drawn from
    the chunk's own children of the events and messages seed sequences."""
    n_customers = population.n
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
        customers = CustomerChunk(population, catalogue, window, lo, hi)
        organic = organic_events(customers, rng_events)
        sent_messages, caused = messages(customers, rng_messages, organic)
        events = observed_events(customers, organic + caused, rng_events)
        write_scratch(scratch / "events", chunk, events, events["ts"])
        write_scratch(scratch / "messages", chunk, sent_messages, sent_messages["sent"])


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
