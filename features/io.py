"""Reading and writing the tables of a data folder.

`load_tables` is the one entry point for training and serving: it finds each table's file, reads
it, validates it against `features.contract` (raising `DataValidationError` on any error) and
returns normalised frames in a `Tables`, with derived fallbacks and notes for what was missing.

Normalised dtypes: ids and strings `str` (pandas' pyarrow-backed string dtype, missing = NaN),
timestamps `datetime64[us, UTC]`, floats `float64`, booleans `bool`. Extra columns are kept as
read. Writes are atomic (temp file or folder, then rename) so readers never see half a table.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import columns as c
from features.contract import FILE_SUFFIXES, PRODUCTS, TABLES, ContractConfig
from features.problems import ERROR, DataValidationError
from features.validation import DEFAULT_CONFIG, STRING_DTYPE, read_and_validate
from features.validation import _isin as is_in

TABLE_NAMES: tuple[str, ...] = tuple(TABLES)
PRODUCTS_COLUMNS: frozenset[str] = frozenset(col.name for col in PRODUCTS.columns)

# Notes for optional tables that are absent and not derived: what is missing and what it means.
ABSENT_TABLE_NOTES: dict[str, str] = {
    "messages": "no messages table: no contact history, so message responses and contact fatigue "
    "cannot be learned; messaging features are skipped",
    "customers": "no customers table: customers are the ids seen in events (after identity stitching) "
    "and every customer's time zone is taken as UTC",
    "identities": "no identities table: customer ids in events are used as they are (no identity stitching)",
    "consent": "no consent table: no channel opt-ins or opt-outs are known; consent filtering is skipped",
    "offers": "no offers table: there are no offers to choose from; offer actions are skipped",
}


@dataclass
class Tables:
    """The normalised tables of one data folder; absent optional tables are None."""

    events: pd.DataFrame | None = None
    messages: pd.DataFrame | None = None
    customers: pd.DataFrame | None = None
    identities: pd.DataFrame | None = None
    consent: pd.DataFrame | None = None
    products: pd.DataFrame | None = None
    offers: pd.DataFrame | None = None
    # Human messages: what was missing and how it was derived or skipped, and data warnings.
    notes: list[str] = field(default_factory=list)
    # Names of tables the loader built itself (e.g. products from events) rather than read.
    derived: list[str] = field(default_factory=list)

    def present(self) -> list[str]:
        """Names of the tables that are available (read or derived), in contract order."""
        return [name for name in TABLE_NAMES if getattr(self, name) is not None]

    def get(self, name: str) -> pd.DataFrame | None:
        if name not in TABLES:
            raise KeyError(name)
        return getattr(self, name)

    def as_dict(self) -> dict[str, pd.DataFrame]:
        """The available tables by name (e.g. for `write_dir_atomic`)."""
        return {name: getattr(self, name) for name in self.present()}


def rows_before(
    frame: pd.DataFrame, time_column: str, limit, columns: list[str] | tuple[str, ...] | None = None
) -> pd.DataFrame:
    """`frame.loc[frame[time_column] < limit, columns]` (rows in order, index kept; `columns`
    that the frame lacks are left out), without copying the rows when all of them are before
    `limit`, as in a fit on all history: at a million customers a copy of the events is gigabytes.
    Selecting columns copies nothing (pandas' copy-on-write)."""
    before = (frame[time_column] < limit).to_numpy(dtype=bool, na_value=False)
    if columns is not None:
        columns = [name for name in frame.columns if name in columns]
        if len(columns) == len(frame.columns):
            columns = None
    if before.all():
        return frame if columns is None else frame[columns]
    return frame.loc[before] if columns is None else frame.loc[before, columns]


# --------------------------------------------------------------------------------------------
# Writing


def write_table_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    """Writes `df` as parquet or CSV (by the suffix of `path`): temp file in the same folder, then rename."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        kind = "parquet"
    elif path.name.endswith(".csv.gz"):
        kind = "csv.gz"
    elif path.name.endswith(".csv"):
        kind = "csv"
    else:
        raise ValueError(f"{path}: cannot tell the format (use .parquet, .csv or .csv.gz)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is a rename on one file system: readers see old or new, never half.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if kind == "parquet":
            df.to_parquet(tmp_name, index=False)
        else:
            df.to_csv(tmp_name, index=False, compression="gzip" if kind == "csv.gz" else None)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_dir_atomic(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> Path:
    """Writes a folder of tables: into a temp sibling folder, then swapped in place of `out_dir`.

    Keys are table names ("events" becomes events.parquet) or file names with a suffix
    ("events.csv"). An existing `out_dir` is replaced as a whole; between its removal and the
    rename there is a moment where it is absent, but never a folder with only some tables.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{token}"
    old_dir = out_dir.parent / f".{out_dir.name}.old-{token}"
    tmp_dir.mkdir()
    try:
        for key, frame in tables.items():
            file_name = key if any(key.endswith(s) for s in FILE_SUFFIXES) else f"{key}.parquet"
            write_table_atomic(frame, tmp_dir / file_name)
        if out_dir.exists():
            os.replace(out_dir, old_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if old_dir.exists() and not out_dir.exists():
            os.replace(old_dir, out_dir)  # put the previous version back
        raise
    shutil.rmtree(old_dir, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------------
# Loading


def load_tables(data_dir: str | Path, config: ContractConfig = DEFAULT_CONFIG) -> Tables:
    """Reads, validates and normalises every table in `data_dir`.

    Raises DataValidationError if any error-severity problem is found (warnings become notes).
    Absent optional tables are None with a note, except products, which is derived from events.
    """
    problems, parsed = read_and_validate(data_dir, config)
    if any(problem.severity == ERROR for problem in problems):
        raise DataValidationError(problems)

    tables = Tables(**{name: parsed.get(name) for name in TABLE_NAMES})
    tables.notes += [f"{problem.severity}: {problem}" for problem in problems]  # warnings only, by now

    # validation has looked already: only then scan the events again (tens of millions of rows)
    lacks_products = any((problem.table, problem.column) == ("events", c.PRODUCT_ID) for problem in problems)
    if tables.products is not None and tables.events is not None and lacks_products:
        tables.products, added = complete_products(tables.products, tables.events)
        if added:
            tables.notes.append(
                f"products: {added:,} product ids of events are not in the products table; added with "
                "category 'unknown', price = median amount/quantity of their purchases and is_active True"
            )
    if tables.products is not None and tables.events is not None and tables.products[c.PRICE].isna().any():
        tables.products, from_purchases, from_overall = fill_missing_prices(tables.products, tables.events)
        tables.notes.append(
            f"products.price: {from_purchases + from_overall:,} products have no price; "
            f"{from_purchases:,} take the median amount/quantity of their purchases in events and "
            f"{from_overall:,} never bought take the median over all purchases"
        )
    if tables.products is None and tables.events is not None:
        products = derive_products(tables.events)
        if products is None:
            tables.notes.append("no products table and no product ids in events: products are unknown")
        else:
            tables.products = products
            tables.derived.append("products")
            tables.notes.append(
                f"no products table: categories and prices unknown; {len(products):,} products are taken "
                "from events with category 'unknown', price = median amount/quantity of their purchases "
                "(the median over all purchases for products never bought) and is_active True"
            )
    for name, note in ABSENT_TABLE_NOTES.items():
        if getattr(tables, name) is None:
            tables.notes.append(note)
    return tables


def purchase_unit_prices(events: pd.DataFrame) -> tuple[pd.Series, float]:
    """The median unit price (amount / quantity) of each product's purchases, and over all purchases.

    Negative unit prices (refund noise) count as 0; without any purchase the overall median is 0.
    """
    purchases = events.loc[
        (events[c.EVENT_TYPE] == "purchase")
        & events[c.PRODUCT_ID].notna()
        & events[c.AMOUNT].notna()
        & (events[c.QUANTITY] > 0),
        [c.PRODUCT_ID, c.AMOUNT, c.QUANTITY],
    ]
    unit_price = (purchases[c.AMOUNT] / purchases[c.QUANTITY]).clip(lower=0.0)
    median_by_product = unit_price.groupby(purchases[c.PRODUCT_ID], sort=False).median()
    overall = float(unit_price.median()) if len(unit_price) else 0.0
    return median_by_product, overall if np.isfinite(overall) else 0.0


def fill_missing_prices(products: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """`products` with missing prices filled as `derive_products` prices products: the median unit
    price of the product's purchases, else the median over all purchases (then 0).

    Returns the filled table and how many prices came from the product's own purchases and how
    many from the overall median. Given prices are kept as they are.
    """
    missing = products[c.PRICE].isna()
    if not missing.any():
        return products, 0, 0
    median_by_product, overall = purchase_unit_prices(events)
    own = products.loc[missing, c.PRODUCT_ID].map(median_by_product).astype("float64")
    from_purchases = int(own.notna().sum())
    filled = products[c.PRICE].copy()
    filled.loc[missing] = own.fillna(overall).to_numpy()
    return products.assign(**{c.PRICE: filled}), from_purchases, int(missing.sum()) - from_purchases


def complete_products(products: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """`products` plus a derived row (as `derive_products` makes) for every product id of events
    that it lacks; and how many were added. Free columns of the added rows are missing."""
    in_events = events[c.PRODUCT_ID]
    # an arrow hash lookup: events may have tens of millions of rows
    lacking = in_events.notna().to_numpy() & ~is_in(in_events, products[c.PRODUCT_ID])
    if not lacking.any():
        return products, 0
    extra = derive_products(events.loc[lacking])
    if extra is None:
        return products, 0
    extra = extra.reindex(columns=products.columns)
    for column in products.columns:  # keep the table's dtypes (free columns: missing values)
        if column not in PRODUCTS_COLUMNS:
            continue
        extra[column] = extra[column].astype(products[column].dtype)
    # never bought: the median over all purchases, as for every derived price (not just these)
    median_by_product, overall = purchase_unit_prices(events)
    extra[c.PRICE] = extra[c.PRODUCT_ID].map(median_by_product).astype("float64").fillna(overall)
    return pd.concat([products, extra], ignore_index=True), len(extra)


def derive_products(events: pd.DataFrame) -> pd.DataFrame | None:
    """A products table from the product ids seen in events (None when events name no product).

    Price is the median unit price (amount / quantity) of the product's purchases, falling back
    to the median over all purchases, then 0; negative unit prices (refund noise) count as 0.
    """
    product_ids = events[c.PRODUCT_ID].dropna().unique()
    if len(product_ids) == 0:
        return None
    product_ids = pd.Series(product_ids, dtype=STRING_DTYPE).sort_values(ignore_index=True)
    median_by_product, overall = purchase_unit_prices(events)
    price = product_ids.map(median_by_product).astype("float64").fillna(overall)

    derived = {
        c.PRODUCT_ID: product_ids,
        c.CATEGORY: pd.Series("unknown", index=product_ids.index, dtype=STRING_DTYPE),
        c.PRICE: price,
        c.BRAND: pd.Series(np.nan, index=product_ids.index, dtype=STRING_DTYPE),
        c.REPLENISHMENT_DAYS: pd.Series(np.nan, index=product_ids.index, dtype="float64"),
        c.IS_ACTIVE: pd.Series(True, index=product_ids.index, dtype="bool"),
        c.CHANNELS: pd.Series(np.nan, index=product_ids.index, dtype=STRING_DTYPE),
        c.STORE_ONLY: pd.Series(False, index=product_ids.index, dtype="bool"),
        c.ONLINE_ONLY: pd.Series(False, index=product_ids.index, dtype="bool"),
    }
    # keep the contract's column order, should it change
    return pd.DataFrame({col.name: derived[col.name] for col in PRODUCTS.columns})
