"""The chunked tables on disk: each chunk's events and messages go to scratch files bucketed by
UTC month, and the final `events.parquet`, `messages.parquet` and `truth/messages.parquet` are
merged from them one month at a time, time-sorted (bounded memory whatever the number of
customers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from features import columns as c

from ._catalogue import Catalogue
from ._ids import STORE_IDS, format_ids, order_ids
from ._parameters import EVENT_TYPES, MESSAGE_CHANNELS, OFFERS, PURCHASE, SHOP_CHANNELS
from ._population import Population
from ._time import ts_array

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


def write_scratch(folder: Path, chunk: int, columns: dict[str, np.ndarray], ts: np.ndarray) -> None:
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


def _month_folders(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def merge_events(folder: Path, path: Path, pop: Population, cat: Catalogue) -> tuple[int, float]:
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
                    ts_array(ev["ts"]),
                    channels.take(pa.array(ev["channel"].astype(np.int64))),
                    event_types.take(pa.array(ev["etype"].astype(np.int64))),
                    cat.ids.take(pa.array(np.maximum(ev["product"], 0), mask=~has_product)),
                    pa.array(ev["qty"], type=pa.float64()),
                    pa.array(ev["amount"], type=pa.float64()),
                    order_ids(ev["order_key"], has_order),
                    STORE_IDS.take(pa.array(np.maximum(ev["store"], 0), mask=ev["store"] < 0)),
                ],
                schema=EVENTS_SCHEMA,
            )
            writer.write_table(table)
            total += table.num_rows
    n_orders = np.unique(np.concatenate(order_keys)).size if order_keys else 0
    return total, (spend / n_orders if n_orders else 0.0)


def merge_messages(folder: Path, path: Path, truth_path: Path, pop: Population) -> tuple[int, int]:
    """Writes the messages and their truth month by month, numbering the message ids in time
    order; returns the row counts of both."""
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
            message_ids = format_ids("M", np.arange(total + 1, total + m + 1), width)
            customer_ids = canonical.take(pa.array(ms["gidx"]))
            table = pa.table(
                [
                    message_ids,
                    customer_ids,
                    channels.take(pa.array(ms["channel"].astype(np.int64))),
                    ts_array(ms["sent"]),
                    format_ids("CMP", ms["week"], 3),
                    offers.take(pa.array(ms["arm"].astype(np.int64))),
                    ts_array(ms["opened"], null=ms["opened"] < 0),
                    ts_array(ms["clicked"], null=ms["clicked"] < 0),
                    ts_array(ms["converted"], null=ms["converted"] < 0),
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
