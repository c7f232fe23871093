"""Checks a folder of tables against the data contract and reports every problem found.

`validate_tables` takes the raw frames (CSV read as all-string columns, parquet as stored), checks
them against `features.contract` and returns the problems together with the parsed, normalised
frames; `features.io.load_tables` builds on it. Every problem names the table, the column, the
0-based data row in the file (or None for whole-table and whole-column problems) and a reason a
person can act on.

Everything that touches all rows is vectorised (pandas / pyarrow compute), because event tables
can have tens of millions of rows. Python loops only build the messages of at most
`MAX_EXAMPLE_ROWS` example rows per (table, column, reason), followed by one summary count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import columns as c
from features.contract import (
    ATTRIBUTE,
    BOOL,
    CHANNEL_KIND,
    CHANNEL_LIST,
    FILE_SUFFIXES,
    FLOAT,
    ID,
    INT,
    STR,
    TABLES,
    TIMESTAMP,
    TIMEZONE_KIND,
    ColumnSpec,
    ContractConfig,
    Reference,
    TableSpec,
)
from features.problems import ERROR, WARNING, DataValidationError, Problem
from features.table_files import find_table_file, read_raw_table

# At most this many example rows per (table, column, reason); the rest is one summary count.
MAX_EXAMPLE_ROWS = 20

DEFAULT_CONFIG = ContractConfig()

# Normalised dtypes of loaded tables. IDS/strings use pandas' default string dtype ("str":
# pyarrow-backed, missing values are NaN), so ids like "00123" are never numbers.
STRING_DTYPE = pd.StringDtype(na_value=np.nan)
TIMESTAMP_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")

TIMESTAMP_HINT = "expected ISO 8601 with an offset, e.g. 2026-01-01T10:00:00+00:00"
BOOL_WORDS: dict[str, bool] = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

# A time of day followed by a zone designator: "…10:00Z", "…10:00:00.5+02:00", "…10:00 -0530".
# Requiring the ":mm" before it keeps a bare date such as "2026-01-01" from looking like "-01".
_OFFSET_AT_END = re.compile(r":\d{2}(?:[.,]\d+)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")

# Customer ids in events, messages and consent may be canonical ids or source ids that
# `identities` stitches, so references to customers also accept identities.source_id. Events
# carry no Reference to customers in the contract (an event may come from any id, and the
# generator's events carry source ids); when a customers table is given, an event customer known
# neither to it nor to identities is still a customer, with the defaults: a customers table may
# list only some customers (demographics of a panel), so this is one warning with the count.
_IMPLICIT_REFERENCES: dict[str, tuple[Reference, ...]] = {
    "events": (Reference(c.CUSTOMER_ID, "customers", c.CUSTOMER_ID, severity=WARNING),),
}
# What a customer missing from the customers table gets (said in the warning).
CUSTOMER_DEFAULTS = "time zone UTC, no signup date, no segment, attributes missing"
# What a product of events missing from the products table gets on load (features.io).
PRODUCT_DEFAULTS = (
    "category 'unknown', price the median amount/quantity of its purchases, active, sold on every channel"
)

# STR columns whose values come from a configurable list: (config attribute, severity, label).
# Unknown event types are only a warning: they are ignored downstream, retailers log many kinds.
_ENUMERATED_COLUMNS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("offers", c.KIND): ("offer_kinds", ERROR, "offer kind"),
    ("events", c.EVENT_TYPE): ("event_types", WARNING, "event type"),
}

_KIND_NAMES = {
    ID: "ids (strings)",
    STR: "strings",
    TIMESTAMP: "timezone-aware timestamps (ISO 8601 strings with an offset, or a tz-aware column)",
    FLOAT: "numbers",
    INT: "whole numbers",
    BOOL: "booleans (true/false, 1/0, yes/no)",
    CHANNEL_KIND: "channel names (strings)",
    CHANNEL_LIST: "comma-separated channel names (strings) or lists of channel names",
    TIMEZONE_KIND: "IANA time-zone names (strings)",
    ATTRIBUTE: "numbers or text",
}


# --------------------------------------------------------------------------------------------
# Folder level


def validate_dir(data_dir: str | Path, config: ContractConfig = DEFAULT_CONFIG) -> list[Problem]:
    """All problems with the tables in `data_dir` (an empty list means the folder is valid)."""
    problems, _ = read_and_validate(data_dir, config)
    return problems


def read_and_validate(
    data_dir: str | Path, config: ContractConfig = DEFAULT_CONFIG
) -> tuple[list[Problem], dict[str, pd.DataFrame]]:
    """Finds and reads every table file in `data_dir`, then validates them: (problems, parsed frames)."""
    folder = Path(data_dir)
    if not folder.exists():
        return [Problem("", None, None, f"{folder} does not exist")], {}
    if not folder.is_dir():
        return [Problem("", None, None, f"{folder} is not a folder")], {}

    problems: list[Problem] = []
    raw: dict[str, pd.DataFrame] = {}
    unreadable: set[str] = set()
    for name in TABLES:
        try:
            path = find_table_file(folder, name)
        except DataValidationError as exc:  # two files for the same table
            problems += exc.problems
            unreadable.add(name)
            continue
        if path is None:
            continue
        try:
            raw[name] = read_raw_table(path)
        except Exception as exc:  # any reader failure is a problem to report, not a crash
            problems.append(Problem(name, None, None, f"cannot read {path.name}: {str(exc).strip()}"))
            unreadable.add(name)
    problems += _unknown_files(folder)

    table_problems, parsed = _validate_tables(raw, config, unreadable)
    return problems + table_problems, parsed


def _unknown_files(folder: Path) -> list[Problem]:
    """Warn about table-like files that are not part of the contract (often a misspelt name)."""
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = next((s for s in FILE_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None:  # READMEs and the like are none of our business
            continue
        stem = path.name[: -len(suffix)]
        if stem not in TABLES:
            problems.append(
                Problem(
                    stem,
                    None,
                    None,
                    f"file {path.name} is not a table of the contract ({', '.join(TABLES)}); ignored",
                    WARNING,
                )
            )
    return problems


# --------------------------------------------------------------------------------------------
# Table level


def validate_tables(
    raw: dict[str, pd.DataFrame], config: ContractConfig = DEFAULT_CONFIG
) -> tuple[list[Problem], dict[str, pd.DataFrame]]:
    """Checks raw frames (keyed by table name) against the contract.

    Returns the problems and the parsed frames: contract columns converted to their normalised
    dtypes (values that do not parse become missing), absent optional columns added with their
    default, extra columns kept as they are. The frames are only trustworthy without errors.
    """
    return _validate_tables(raw, config, unreadable=())


def _validate_tables(
    raw: dict[str, pd.DataFrame], config: ContractConfig, unreadable: Collection[str]
) -> tuple[list[Problem], dict[str, pd.DataFrame]]:
    problems: list[Problem] = []
    for name in raw:
        if name not in TABLES:
            problems.append(
                Problem(
                    name, None, None, f"not a table of the contract ({', '.join(TABLES)}); ignored", WARNING
                )
            )
    for name, spec in TABLES.items():
        if spec.required and name not in raw and name not in unreadable:
            expected = ", ".join(name + suffix for suffix in FILE_SUFFIXES)
            problems.append(
                Problem(name, None, None, f"required table is missing (expected one of {expected})")
            )

    parsed: dict[str, pd.DataFrame] = {}
    for name, spec in TABLES.items():
        if name in raw:
            parsed[name] = _validate_table(spec, raw[name], config, problems)

    _check_references(parsed, problems)
    if "identities" in parsed:
        _check_identities(parsed, problems)
    return problems, parsed


def _validate_table(
    spec: TableSpec, raw: pd.DataFrame, config: ContractConfig, problems: list[Problem]
) -> pd.DataFrame:
    name = spec.name
    if not isinstance(raw.index, pd.RangeIndex) or raw.index.start != 0 or raw.index.step != 1:
        raw = raw.reset_index(drop=True)  # rows are reported by position in the file
    if len(raw) == 0:
        problems.append(Problem(name, None, None, "table has no rows"))

    duplicated = raw.columns.duplicated()
    if duplicated.any():
        counts = pd.Series(raw.columns).value_counts()
        for column in dict.fromkeys(raw.columns[duplicated]):
            problems.append(
                Problem(
                    name,
                    str(column),
                    None,
                    f"column appears {counts[column]} times in the header; column names must be unique",
                )
            )
        raw = raw.loc[:, ~duplicated]  # parse the first occurrence

    present = [str(col) for col in raw.columns]
    columns: dict[str, pd.Series] = {}
    for col_spec in spec.columns:
        if col_spec.name not in raw.columns:
            if col_spec.required:
                problems.append(
                    Problem(
                        name,
                        col_spec.name,
                        None,
                        f"required column is missing (columns present: {', '.join(present) or 'none'})",
                    )
                )
            columns[col_spec.name] = _default_column(col_spec, raw.index)
        else:
            parsed = _parse_column(name, col_spec, raw[col_spec.name], config, problems)
            if col_spec.nullable and col_spec.default is not None:
                # an empty cell in a column with a default means the default (e.g. quantity 1 on a view)
                parsed = parsed.fillna(col_spec.default)
                if col_spec.kind == BOOL:
                    parsed = parsed.astype(bool)
            columns[col_spec.name] = parsed

    known = {col_spec.name for col_spec in spec.columns}
    for col in raw.columns:
        if col in known:
            continue
        if spec.attribute_prefix and isinstance(col, str) and col.startswith(spec.attribute_prefix):
            columns[col] = _parse_attribute(name, col, spec.attribute_prefix, raw[col], problems)
            continue
        if not spec.allow_extra_columns:
            problems.append(
                Problem(name, str(col), None, "unexpected column (this table takes no extra columns)")
            )
        columns[col] = raw[col]
    # copy=False: with copy-on-write, untouched string columns are shared, not duplicated.
    frame = pd.DataFrame(columns, index=raw.index, copy=False)

    _check_enumerations(name, frame, raw, config, problems)
    _check_primary_key(spec, frame, problems)
    if name == "events":
        _check_event_quantities(frame, problems)
    if name == "messages":
        _check_message_order(frame, problems)
    if name == "products":
        _check_channel_flags(frame, problems)
        if c.CATEGORY in raw.columns and raw[c.CATEGORY].isna().any():
            empty = raw[c.CATEGORY].isna().to_numpy()
            problems.append(
                Problem(
                    name,
                    c.CATEGORY,
                    int(np.flatnonzero(empty)[0]),
                    f"{int(empty.sum()):,} product(s) have no category: category 'unknown'",
                    WARNING,
                )
            )
    return frame


def _default_column(col_spec: ColumnSpec, index: pd.Index) -> pd.Series:
    """An absent column filled with its default (or missing values) in the normalised dtype."""
    value = col_spec.default
    kind = col_spec.kind
    if kind == TIMESTAMP:
        ts = pd.NaT if value is None else pd.Timestamp(value)
        return pd.Series(ts, index=index, dtype=TIMESTAMP_DTYPE, name=col_spec.name)
    if kind == FLOAT:
        return pd.Series(
            np.nan if value is None else float(value), index=index, dtype="float64", name=col_spec.name
        )
    if kind == INT:
        dtype = "Int64" if value is None else "int64"
        return pd.Series(pd.NA if value is None else int(value), index=index, dtype=dtype, name=col_spec.name)
    if kind == BOOL:
        if value is None:
            return pd.Series(pd.NA, index=index, dtype="boolean", name=col_spec.name)
        return pd.Series(bool(value), index=index, dtype="bool", name=col_spec.name)
    return pd.Series(
        np.nan if value is None else str(value), index=index, dtype=STRING_DTYPE, name=col_spec.name
    )


# --------------------------------------------------------------------------------------------
# Column parsing


def _parse_column(
    table: str, col_spec: ColumnSpec, raw: pd.Series, config: ContractConfig, problems: list[Problem]
) -> pd.Series:
    """Converts one column to its normalised dtype, reporting values and nulls that break the contract."""
    column, kind = col_spec.name, col_spec.kind
    missing = raw.isna().to_numpy()

    def report(bad: np.ndarray, describe: Callable[[int], str], summary: str, severity: str = ERROR) -> None:
        _report_rows(problems, table, column, bad, describe, summary, severity)

    def wrong_type_column() -> None:
        problems.append(
            Problem(
                table, column, None, f"wrong type: column has dtype {raw.dtype}; expected {_KIND_NAMES[kind]}"
            )
        )

    if kind == CHANNEL_LIST:
        parsed = _parse_channel_list(raw, config, report, wrong_type_column)
    elif kind in (ID, STR, CHANNEL_KIND, TIMEZONE_KIND):
        parsed = _parse_text(raw, kind, report, wrong_type_column)
        if kind == CHANNEL_KIND:
            allowed = ", ".join(config.channels)
            bad = _unknown_values(parsed, config.channels)
            report(
                bad,
                lambda row: (
                    f"unknown channel {_show(raw.iloc[row])}; expected one of {allowed} "
                    "(configurable in ContractConfig.channels)"
                ),
                "unknown channel",
            )
        elif kind == TIMEZONE_KIND:
            values = pd.unique(parsed.dropna())
            bad_zones = [zone for zone in values if not _is_time_zone(str(zone))]
            bad = _isin(parsed, bad_zones) if bad_zones else np.zeros(len(parsed), dtype=bool)
            report(
                bad,
                lambda row: (
                    f"unknown time zone {_show(raw.iloc[row])}; expected an IANA name such as "
                    "Europe/Paris, America/New_York or UTC"
                ),
                "unknown time zone",
            )
    elif kind in (FLOAT, INT):
        parsed = _parse_number(raw, kind, report, wrong_type_column)
        if col_spec.min_value is not None and col_spec.min_exclusive:
            minimum = col_spec.min_value
            below = (parsed <= minimum).to_numpy(dtype=bool, na_value=False)
            report(
                below,
                lambda row: f"{column} {_show(parsed.iloc[row])} must be > {minimum:g}",
                f"{column} not above {minimum:g}",
            )
        elif col_spec.min_value is not None:
            minimum = col_spec.min_value
            below = (parsed < minimum).to_numpy(dtype=bool, na_value=False)
            if minimum == 0:
                report(
                    below,
                    lambda row: f"negative {column} {_show(parsed.iloc[row])}; must be >= 0",
                    f"negative {column}",
                )
            else:
                report(
                    below,
                    lambda row: f"{column} {_show(parsed.iloc[row])} is below the minimum {minimum:g}",
                    f"{column} below the minimum",
                )
    elif kind == BOOL:
        parsed = _parse_bool(raw, report, wrong_type_column)
    elif kind == TIMESTAMP:
        parsed = _parse_timestamp(table, column, raw, report, problems)
    else:  # a kind added to the contract without a parser here
        raise ValueError(f"{table}.{column}: unknown column kind {kind!r}")

    if not col_spec.nullable:
        report(missing, lambda row: "missing value in a non-nullable column", "missing values")
    parsed.name = column
    return parsed


def _is_text(series: pd.Series) -> bool:
    return isinstance(series.dtype, (pd.StringDtype, pd.CategoricalDtype)) or series.dtype == object


def _parse_text(raw: pd.Series, kind: str, report, wrong_type_column) -> pd.Series:
    """Ids and strings as STRING_DTYPE. Integral float ids (parquet written from pandas) become '123'."""
    if _is_text(raw) or pd.api.types.is_integer_dtype(raw.dtype):
        return raw.astype(STRING_DTYPE)
    if pd.api.types.is_float_dtype(raw.dtype):
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
        fractional = ~np.isnan(values) & (np.floor(values) != values)
        if kind == ID:
            report(
                fractional,
                lambda row: f"wrong type: {_show(raw.iloc[row])} is not an id (it has a fractional part)",
                "ids that are not ids",
            )
            whole = pd.Series(np.where(fractional, np.nan, values), index=raw.index).astype("Int64")
            return whole.astype(STRING_DTYPE)
        return raw.astype(STRING_DTYPE)
    if kind in (ID, CHANNEL_KIND, TIMEZONE_KIND):  # booleans, timestamps, ...: not an id or a name
        wrong_type_column()
    return raw.astype(STRING_DTYPE)


def _parse_channel_list(raw: pd.Series, config: ContractConfig, report, wrong_type_column) -> pd.Series:
    """Channel lists as comma-separated text ("web,app"); a list column (parquet) is joined.

    Empty lists and empty cells are missing (sold everywhere). Every name must be a configured
    channel: a misspelt one would silently take the product off the channel meant.
    """
    if _is_text(raw) and not _holds_lists(raw):
        text = raw.astype(STRING_DTYPE)
    elif raw.dtype == object or isinstance(raw.dtype, pd.ArrowDtype):
        text = pd.Series(
            [
                ",".join(str(part) for part in value)
                if isinstance(value, list | tuple | np.ndarray)
                else (None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))
                for value in raw.tolist()
            ],
            index=raw.index,
            dtype=STRING_DTYPE,
        )
    else:
        wrong_type_column()
        return pd.Series(np.nan, index=raw.index, dtype=STRING_DTYPE)
    # normalise: names stripped, empty parts dropped, "" → missing
    names = text.str.split(",")
    normalised = names.map(
        lambda parts: ",".join(p.strip() for p in parts if p.strip()) if isinstance(parts, list) else np.nan
    ).astype(STRING_DTYPE)
    normalised = normalised.mask(normalised == "")
    distinct = {
        part
        for value in pd.unique(normalised.dropna())
        for part in str(value).split(",")
        if part not in config.channels
    }
    if distinct:
        exploded = normalised.str.split(",").explode()
        bad_rows = exploded[exploded.isin(distinct)].index.unique()
        bad = np.zeros(len(raw), dtype=bool)
        bad[raw.index.get_indexer(bad_rows)] = True
        allowed = ", ".join(config.channels)
        report(
            bad,
            lambda row: (
                f"unknown channel in {_show(normalised.iloc[row])}; expected names from {allowed}, "
                "comma-separated (configurable in ContractConfig.channels)"
            ),
            "unknown channels in channel lists",
        )
    return normalised


def _holds_lists(raw: pd.Series) -> bool:
    """An object column of lists (parquet list columns read into pandas)."""
    if raw.dtype != object:
        return False
    first = raw.dropna().head(1).tolist()
    return bool(first) and isinstance(first[0], list | tuple | np.ndarray)


def _parse_attribute(
    table: str, column: str, prefix: str, raw: pd.Series, problems: list[Problem]
) -> pd.Series:
    """A free attribute (`attr.<name>`): numbers as float64, any other values as text; missing allowed.

    A text column (CSV) whose every present value is a number is numeric: "34", "51.5". Values are
    never quoted in messages: attributes may be personal.
    """
    if column == prefix:
        problems.append(Problem(table, column, None, f"attribute column without a name: use {prefix}<name>"))
    if pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("float64")
    if pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
        infinite = np.isinf(values)
        if infinite.any():
            _report_rows(problems, table, column, infinite, lambda row: "infinite value", "infinite values")
        return pd.Series(np.where(infinite, np.nan, values), index=raw.index, dtype="float64")
    if _is_text(raw) and not _holds_lists(raw):
        text = raw.astype(STRING_DTYPE).str.strip()
        text = text.mask(text == "")
        numbers = pd.to_numeric(text, errors="coerce")
        present = text.notna()
        if present.any() and numbers[present].notna().all() and np.isfinite(numbers[present]).all():
            return numbers.astype("float64")
        return text
    problems.append(
        Problem(
            table,
            column,
            None,
            f"wrong type: column has dtype {raw.dtype}; customer attributes must be {_KIND_NAMES[ATTRIBUTE]} "
            "(store a date as a number, e.g. an age or a year, or as text)",
        )
    )
    return pd.Series(np.nan, index=raw.index, dtype=STRING_DTYPE)


def _parse_number(raw: pd.Series, kind: str, report, wrong_type_column) -> pd.Series:
    """Numbers as float64 (INT: int64, or Int64 when values are missing)."""
    if pd.api.types.is_bool_dtype(raw.dtype) or not (
        _is_text(raw) or pd.api.types.is_numeric_dtype(raw.dtype)
    ):
        wrong_type_column()
        values = np.full(len(raw), np.nan)
    elif _is_text(raw):
        text = raw.astype(STRING_DTYPE)
        try:  # fast path: arrow's strict parser succeeds when every value is a plain number
            values = pc.cast(_arrow(text), pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        not_number = text.notna().to_numpy() & ~np.isfinite(values)
        report(
            not_number,
            lambda row: f"wrong type: {_show(raw.iloc[row])} is not a number",
            "values that are not numbers",
        )
        values = np.where(not_number, np.nan, values)
    else:
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
        infinite = np.isinf(values)
        report(infinite, lambda row: f"wrong type: {values[row]} is not a finite number", "infinite values")
        values = np.where(infinite, np.nan, values)

    if kind == INT:
        fractional = ~np.isnan(values) & (np.floor(values) != values)
        report(
            fractional,
            lambda row: f"wrong type: {_show(raw.iloc[row])} is not a whole number",
            "values that are not whole numbers",
        )
        values = np.where(fractional, np.nan, values)
        series = pd.Series(values, index=raw.index).astype("Int64")
        return series if series.isna().any() else series.astype("int64")
    return pd.Series(values, index=raw.index, dtype="float64")


def _parse_bool(raw: pd.Series, report, wrong_type_column) -> pd.Series:
    """Booleans as bool (or pandas 'boolean' when values are missing, which only nullable columns allow)."""
    if pd.api.types.is_bool_dtype(raw.dtype):
        parsed = raw.astype("boolean")
    elif _is_text(raw):
        text = raw.astype(STRING_DTYPE)
        mapped = text.str.strip().str.lower().map(BOOL_WORDS)
        not_bool = (text.notna() & mapped.isna()).to_numpy()
        report(
            not_bool,
            lambda row: (
                f"wrong type: {_show(raw.iloc[row])} is not a boolean (expected true/false, 1/0 or yes/no)"
            ),
            "values that are not booleans",
        )
        parsed = mapped.astype("boolean")
    elif pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.astype("float64")
        not_bool = (values.notna() & ~values.isin([0.0, 1.0])).to_numpy()
        report(
            not_bool,
            lambda row: f"wrong type: {_show(raw.iloc[row])} is not a boolean (expected 0 or 1)",
            "values that are not booleans",
        )
        parsed = values.where(~not_bool).astype("boolean")
    else:
        wrong_type_column()
        parsed = pd.Series(pd.NA, index=raw.index, dtype="boolean")
    return parsed if parsed.isna().any() else parsed.astype(bool)


def _parse_timestamp(table: str, column: str, raw: pd.Series, report, problems: list[Problem]) -> pd.Series:
    """Timestamps as datetime64[us, UTC]; any offset is converted to UTC, naive values are errors."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").dt.as_unit("us")
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        problems.append(
            Problem(
                table,
                column,
                None,
                f"naive timestamp column (dtype {raw.dtype}, no time zone); store timezone-aware "
                "timestamps, e.g. with Series.dt.tz_localize('UTC') before writing the parquet file",
            )
        )
        return raw.dt.tz_localize("UTC").dt.as_unit("us")
    if not _is_text(raw):
        problems.append(
            Problem(
                table,
                column,
                None,
                f"wrong type: column has dtype {raw.dtype}; expected {_KIND_NAMES[TIMESTAMP]}",
            )
        )
        return pd.Series(pd.NaT, index=raw.index, dtype=TIMESTAMP_DTYPE)

    text = raw.astype(STRING_DTYPE)
    try:  # fast path: arrow's ISO 8601 parser succeeds when every value carries an offset
        cast = pc.cast(_arrow(text), pa.timestamp("us", tz="UTC"))
        return pd.Series(cast.to_pandas().array, index=raw.index, dtype=TIMESTAMP_DTYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    stripped = text.str.strip()
    parsed = pd.to_datetime(stripped, format="ISO8601", utc=True, errors="coerce")
    has_offset = stripped.str.contains(_OFFSET_AT_END, regex=True, na=False).to_numpy(dtype=bool)
    unparseable = (text.notna() & parsed.isna()).to_numpy()
    naive = parsed.notna().to_numpy() & ~has_offset
    report(
        unparseable,
        lambda row: f"unparseable timestamp {_show(raw.iloc[row])}; {TIMESTAMP_HINT}",
        "unparseable timestamps",
    )
    report(
        naive,
        lambda row: f"naive timestamp {_show(raw.iloc[row])} (no time zone); {TIMESTAMP_HINT}",
        "naive timestamps",
    )
    parsed = parsed.mask(naive)  # never guess a time zone
    return pd.Series(parsed.dt.as_unit("us").array, index=raw.index, dtype=TIMESTAMP_DTYPE)


# --------------------------------------------------------------------------------------------
# Checks across columns and tables


def _check_enumerations(
    table: str, frame: pd.DataFrame, raw: pd.DataFrame, config: ContractConfig, problems: list[Problem]
) -> None:
    for (enum_table, column), (attribute, severity, label) in _ENUMERATED_COLUMNS.items():
        if enum_table != table or column not in raw.columns:
            continue
        allowed = tuple(getattr(config, attribute))
        values = frame[column]
        bad = _unknown_values(values, allowed)
        if not bad.any():
            continue
        if severity == ERROR:
            _report_rows(
                problems,
                table,
                column,
                bad,
                lambda row, values=values, label=label, allowed=allowed: (
                    f"unknown {label} {_show(values.iloc[row])}; expected one of {', '.join(allowed)}"
                ),
                f"unknown {label}",
            )
            continue
        # A warning per distinct value (first row and count) reads better than example rows.
        unknown = values[bad]
        counts = unknown.value_counts()
        first_rows = pd.Series(unknown.index, index=unknown.to_numpy()).groupby(level=0).min()
        for value, count in counts.head(MAX_EXAMPLE_ROWS).items():
            problems.append(
                Problem(
                    table,
                    column,
                    int(first_rows[value]),
                    f"unknown {label} {_show(value)} in {count:,} row(s); ignored downstream "
                    f"(known: {', '.join(allowed)})",
                    severity,
                )
            )
        if len(counts) > MAX_EXAMPLE_ROWS:
            problems.append(
                Problem(table, column, None, f"{len(counts):,} unknown {label}s in total", severity)
            )


def _check_primary_key(spec: TableSpec, frame: pd.DataFrame, problems: list[Problem]) -> None:
    key = list(spec.primary_key)
    if not key or len(frame) == 0:
        return
    complete = frame[key].notna().all(axis=1)  # missing key values are reported as nulls
    duplicated = frame.duplicated(subset=key, keep=False) & complete
    if not duplicated.any():
        return
    dups = frame.loc[duplicated, key]
    rows_of_key = dups.index.to_series().groupby([dups[col] for col in key], sort=False)
    first_row = rows_of_key.transform("min")
    group_size = rows_of_key.transform("size")

    def describe(row: int) -> str:
        values = ", ".join(f"{col}={_show(frame[col].iloc[row])}" for col in key)
        return (
            f"duplicate primary key {values}: {group_size.loc[row]} rows share it "
            f"(first in row {first_row.loc[row]})"
        )

    _report_rows(problems, spec.name, key[-1], duplicated.to_numpy(), describe, "duplicate primary keys")


def _check_event_quantities(events: pd.DataFrame, problems: list[Problem]) -> None:
    """Only returns may carry a negative quantity."""
    negative = (events[c.QUANTITY] < 0).to_numpy(dtype=bool, na_value=False) & (
        events[c.EVENT_TYPE] != "return"
    ).to_numpy(dtype=bool, na_value=True)
    _report_rows(
        problems,
        "events",
        c.QUANTITY,
        negative,
        lambda row: (
            f"negative quantity {_show(events[c.QUANTITY].iloc[row])} for event type "
            f"{_show(events[c.EVENT_TYPE].iloc[row])}; only 'return' events may have a negative quantity"
        ),
        "negative quantities",
    )


def _check_channel_flags(products: pd.DataFrame, problems: list[Problem]) -> None:
    """A product cannot be both store-only and online-only: it could be offered nowhere."""
    both = (products[c.STORE_ONLY] & products[c.ONLINE_ONLY]).to_numpy(dtype=bool, na_value=False)
    _report_rows(
        problems,
        "products",
        c.ONLINE_ONLY,
        both,
        lambda row: "store_only and online_only are both true; a product may be at most one of them",
        "products both store-only and online-only",
    )


def _check_message_order(messages: pd.DataFrame, problems: list[Problem]) -> None:
    """A message cannot be opened, clicked or converted before it was sent."""
    sent = messages[c.SENT_TS]
    for column in (c.OPENED_TS, c.CLICKED_TS, c.CONVERTED_TS):
        before = (messages[column] < sent).to_numpy(dtype=bool, na_value=False)
        _report_rows(
            problems,
            "messages",
            column,
            before,
            lambda row, column=column: (
                f"{column} {_show(messages[column].iloc[row])} is before sent_ts {_show(sent.iloc[row])}"
            ),
            f"{column} before sent_ts",
        )


def _check_references(parsed: dict[str, pd.DataFrame], problems: list[Problem]) -> None:
    identities = parsed.get("identities")
    for name, frame in parsed.items():
        spec = TABLES[name]
        for ref in spec.references + _IMPLICIT_REFERENCES.get(name, ()):
            target = parsed.get(ref.target_table)
            if target is None or ref.column not in frame.columns or ref.target_column not in target.columns:
                continue
            allowed = [target[ref.target_column]]
            described = f"{ref.target_table}.{ref.target_column}"
            # Source ids are stitched to customers, so they count as known customers.
            if (ref.target_table, ref.target_column) == ("customers", c.CUSTOMER_ID) and name != "identities":
                if identities is not None:
                    allowed.append(identities[c.SOURCE_ID])
                    described += " nor in identities.source_id"
            for other_table, other_column in ref.also_in:
                other = parsed.get(other_table)
                if other is not None and other_column in other.columns:
                    allowed.append(other[other_column])
                    described += f" nor in {other_table}.{other_column}"
            values = frame[ref.column]
            bad = values.notna().to_numpy() & ~_isin(values, pd.concat(allowed, ignore_index=True))
            if ref.severity == WARNING:
                _warn_unknown_references(problems, name, ref, values, bad, described)
                continue
            _report_rows(
                problems,
                name,
                ref.column,
                bad,
                lambda row, values=values, ref=ref, described=described: (
                    f"{ref.column} {_show(values.iloc[row])} references nothing: not in {described}"
                ),
                f"{ref.column} values that reference nothing",
            )


def _warn_unknown_references(
    problems: list[Problem], table: str, ref: Reference, values: pd.Series, bad: np.ndarray, described: str
) -> None:
    """One warning for values kept although found nowhere (customers missing from customers)."""
    if not bad.any():
        return
    unknown = pd.unique(values[bad])
    examples = ", ".join(_show(value) for value in unknown[:3])
    target = (ref.target_table, ref.target_column)
    if target == ("customers", c.CUSTOMER_ID):
        what = f"they are customers all the same, with the defaults ({CUSTOMER_DEFAULTS})"
    elif target == ("products", c.PRODUCT_ID):
        what = f"they are products all the same, with the defaults ({PRODUCT_DEFAULTS})"
    else:
        what = "they are kept"
    problems.append(
        Problem(
            table,
            ref.column,
            int(np.flatnonzero(bad)[0]),
            f"{len(unknown):,} {ref.column} value(s) in {int(bad.sum()):,} row(s) are not in {described} "
            f"(e.g. {examples}): {what}",
            WARNING,
        )
    )


def _check_identities(parsed: dict[str, pd.DataFrame], problems: list[Problem]) -> None:
    """Every source id must map to one customer, in the way identity stitching will join it."""
    identities = parsed["identities"]
    events = parsed.get("events")
    by_system = events is not None and c.SOURCE_SYSTEM in events.columns
    key = [c.SOURCE_SYSTEM, c.SOURCE_ID] if by_system else [c.SOURCE_ID]
    known = identities.dropna(subset=[*key, c.CUSTOMER_ID])
    customers_per_id = known.groupby(key, sort=False)[c.CUSTOMER_ID].transform("nunique")
    conflicting = customers_per_id[customers_per_id > 1].index
    if len(conflicting):
        rows = np.zeros(len(identities), dtype=bool)
        rows[identities.index.get_indexer(conflicting)] = True
        conflicts = known.loc[conflicting]
        customers_of = conflicts.groupby(key, sort=False)[c.CUSTOMER_ID].agg(lambda s: sorted(set(s)))
        hint = (
            ""
            if by_system
            else "; events carry no source_system column, so source ids are joined on their own"
        )

        def describe(row: int) -> str:
            source_id = identities[c.SOURCE_ID].iloc[row]
            lookup = tuple(identities[col].iloc[row] for col in key) if by_system else source_id
            names = ", ".join(_show(x) for x in customers_of.loc[lookup])
            return f"source id {_show(source_id)} maps to different customers ({names}){hint}"

        _report_rows(
            problems, "identities", c.SOURCE_ID, rows, describe, "source ids mapped to two customers"
        )

    # A source id that is some other customer's canonical id: stitching keeps canonical ids.
    canonical = parsed["customers"][c.CUSTOMER_ID] if "customers" in parsed else identities[c.CUSTOMER_ID]
    source_ids = identities[c.SOURCE_ID]
    shadowed = (
        _isin(source_ids, canonical)
        & source_ids.notna().to_numpy()
        & (source_ids != identities[c.CUSTOMER_ID]).to_numpy(dtype=bool, na_value=False)
    )
    _report_rows(
        problems,
        "identities",
        c.SOURCE_ID,
        shadowed,
        lambda row: (
            f"source id {_show(source_ids.iloc[row])} is also the canonical id of another customer; "
            "rows carrying it stay attributed to that customer"
        ),
        "source ids that are canonical ids",
        WARNING,
    )


# --------------------------------------------------------------------------------------------
# Helpers


def _report_rows(
    problems: list[Problem],
    table: str,
    column: str | None,
    bad: np.ndarray,
    describe: Callable[[int], str],
    summary: str,
    severity: str = ERROR,
) -> None:
    """One problem per example row (at most MAX_EXAMPLE_ROWS), then a count if there were more."""
    rows = np.flatnonzero(bad)
    for row in rows[:MAX_EXAMPLE_ROWS]:
        problems.append(Problem(table, column, int(row), describe(int(row)), severity))
    if len(rows) > MAX_EXAMPLE_ROWS:
        problems.append(
            Problem(
                table,
                column,
                None,
                f"{summary}: {len(rows):,} rows in total (the first {MAX_EXAMPLE_ROWS} are listed)",
                severity,
            )
        )


def _arrow(series: pd.Series) -> pa.Array | pa.ChunkedArray:
    """The series as an arrow string array (zero-copy for pyarrow-backed strings)."""
    return pa.array(series.astype(STRING_DTYPE), from_pandas=True)


def _isin(values: pd.Series, allowed: pd.Series | Iterable[str]) -> np.ndarray:
    """values.isin(allowed) as a numpy bool array, via arrow's hash join (much faster on strings)."""
    array = _arrow(values)
    value_set = _arrow(pd.Series(allowed, dtype=STRING_DTYPE).dropna())
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    value_set = value_set.cast(array.type)
    return pc.is_in(array, value_set=value_set).to_numpy(zero_copy_only=False).astype(bool)


def _unknown_values(values: pd.Series, allowed: Iterable[str]) -> np.ndarray:
    return values.notna().to_numpy() & ~_isin(values, list(allowed))


@lru_cache(maxsize=4096)
def _is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, or ValueError for names like "../etc"
        return False
    return True


def _show(value: object) -> str:
    """A value as it should appear in a message: strings quoted, numbers plain, timestamps in ISO."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return repr(value)
