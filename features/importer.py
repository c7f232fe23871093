"""`omni import`: bring a retailer's own files into the data contract without writing code.

A column mapping (`customer_id=CustomerID,ts=InvoiceDate,...`) renames the user's columns;
constants fill what the file does not carry (`--channel web`, `--event-type purchase`); naive
timestamps are read in a stated time zone. The result is validated exactly like any data folder
and written atomically; unmapped columns are dropped, so free-text or personal columns of an
export never reach features, models or logs. Customer attributes are kept only when mapped by
name (`customers.attr.age=Age`) or already named `attr.<name>`.

Timestamps are never guessed:
- numeric day/month dates (`01/07/2025`, `1.7.25 10:00`) are read one way for the whole column:
  the way `--dayfirst` or `--ts-format` says, else the one reading every value admits (a value with
  a first field above 12 only reads day-first, one with a second field above 12 only month-first).
  When every value reads both ways, or values contradict each other, the import stops.
- naive wall-clock times in `--timezone` that fall in the hour repeated when daylight saving time
  ends are read as the first occurrence (daylight time); times in the hour skipped when it starts
  are read with the offset in force before the change (02:30 becomes 03:30 daylight time). Both
  are counted in a warning.

`--timezone` is also where the customers are: the models read local hours (send time, profiles)
in each customer's `customers.timezone`, UTC when unknown. So with `--timezone`, every customer
whose zone is not otherwise known takes it: a customers table is written when none is imported
(every customer seen), an imported one has its missing or empty zones filled and the customers it
lacks added. Zones the imported table gives are kept. One warning gives the count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import columns as c
from features.contract import ATTRIBUTE_PREFIX, TABLES, TIMESTAMP, ContractConfig
from features.identity import STITCHED_TABLES, canonical_customer_ids
from features.io import write_dir_atomic
from features.problems import ERROR, WARNING, Problem
from features.table_files import read_raw_table
from features.validation import MAX_EXAMPLE_ROWS, STRING_DTYPE, validate_tables

# Extra targets a mapping may name that are not contract columns but derive one.
UNIT_PRICE = "unit_price"  # events: amount = quantity × unit_price when no amount is mapped
# `--ts-format unix`: numbers, seconds since 1970-01-01T00:00:00Z (MovieLens, many APIs).
UNIX_FORMAT = "unix"
# Seconds since the epoch beyond this (year 5138) are milliseconds or nanoseconds, not seconds.
MAX_UNIX_SECONDS = 1e11

# A numeric day/month date at the start of a cell: "01/07/2025", "1.7.25", "01-07-2025 10:00".
# The same separator twice; the year (2 or 4 digits) last; anything after a space or T is the time.
_DAY_MONTH = re.compile(r"^(\d{1,2})([/.\-])(\d{1,2})\2(\d{4}|\d{2})(?=$|[ T])(.*)$")
# A zone designator at the end of a cell (same rule as features.validation).
_OFFSET_AT_END = re.compile(r":\d{2}(?:[.,]\d+)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")
# Cells pandas' per-value parser may read: year first ("2025/07/01 1:05 PM", numeric day/month
# dates are rewritten so) or with a month or day name ("1 Jul 2025"). Others ("01 07 2025",
# "1/7") would be guesses, so they are left unread and reported.
_SAFE_TO_INFER = re.compile(r"^(?:\d{4}\D|.*[A-Za-z]{3})")
# Cells that are whole numbers of 9-11 digits look like seconds since the epoch.
_EPOCH_LIKE = re.compile(r"^-?\d{9,11}(?:\.\d+)?$")

DAY_FIRST = "day-first"
MONTH_FIRST = "month-first"


@dataclass
class ImportSpec:
    """What to import: source file per table, the mapping, constants and how to read times."""

    sources: dict[str, Path]
    mapping: dict[str, dict[str, str]] = field(default_factory=dict)  # table → {contract col: source col}
    constants: dict[str, dict[str, str]] = field(default_factory=dict)  # table → {contract col: value}
    assume_timezone: str | None = None  # zone for timestamps written without an offset
    # strftime format of the source timestamps, or "unix" (seconds since the epoch); default: inferred
    timestamp_format: str | None = None
    returns_from_negative_quantity: bool = True
    dayfirst: bool = False  # numeric dates are day/month/year (else: decided per column, never guessed)


def mapping_targets(table: str) -> set[str]:
    """Names a mapping may give a column of `table` (attributes are `attr.<name>` in customers)."""
    return {col.name for col in TABLES[table].columns} | ({UNIT_PRICE} if table == "events" else set())


def _is_target(table: str, target: str) -> bool:
    prefix = TABLES[table].attribute_prefix
    return target in mapping_targets(table) or bool(prefix and target.startswith(prefix) and target != prefix)


def parse_mapping(specs: list[str] | tuple[str, ...], tables: list[str]) -> dict[str, dict[str, str]]:
    """`a=B,c=D` applies to every given table that has a column `a`; `events.a=B` to one table.

    Table-specific pairs win over global ones. Raises ValueError on bad syntax, an unknown table or
    a global target that is a column of none of the given tables.
    """
    global_pairs: dict[str, str] = {}
    out: dict[str, dict[str, str]] = {t: {} for t in tables}
    explicit: dict[str, dict[str, str]] = {t: {} for t in tables}
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            if "=" not in item:
                raise ValueError(f"--map: '{item}' is not target=source_column")
            target, source = (x.strip() for x in item.split("=", 1))
            if not target or not source:
                raise ValueError(f"--map: '{item}' is not target=source_column")
            table, dot, column = target.partition(".")
            if dot and table in TABLES:
                if not column:
                    raise ValueError(f"--map: '{item}' names no column")
                if table in explicit:
                    explicit[table][column] = source
                continue
            if dot and not target.startswith(ATTRIBUTE_PREFIX):
                raise ValueError(f"--map: unknown table '{table}' in '{item}'; tables: {', '.join(TABLES)}")
            global_pairs[target] = source
    for target, source in global_pairs.items():
        applies = [t for t in tables if _is_target(t, target)]
        if not applies:
            raise ValueError(
                f"--map: '{target}' is not a column of {' or '.join(tables)}"
                + (
                    " (customer attributes need a customers table: --customers FILE)"
                    if "attr." in target
                    else ""
                )
            )
        for t in applies:
            out[t][target] = source
    for t in tables:
        out[t].update(explicit[t])
    return out


# --------------------------------------------------------------------------------------------
# Timestamps


def convert_timestamps(
    table: str,
    column: str,
    raw: pd.Series,
    tz: str | None,
    fmt: str | None = None,
    dayfirst: bool = False,
) -> tuple[pd.Series | None, list[Problem]]:
    """A source timestamp column as UTC timestamps, with the problems met on the way.

    Returns a `datetime64[us, UTC]` series when every present value was read; otherwise an object
    series of ISO 8601 strings (read values) and the raw cells (values left for validation to
    report by row: unparseable, or naive when no `--timezone` was given). None when the column's
    day/month order cannot be decided (an error says so; no value is read).
    """
    problems: list[Problem] = []
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw, problems
    if fmt == UNIX_FORMAT:
        return _from_unix(table, column, raw, problems), problems
    if pd.api.types.is_datetime64_dtype(raw.dtype):  # a naive parquet column: wall times in `tz`
        if tz is None:
            return raw, problems  # validation reports the naive column
        utc = _localise(table, column, raw, pd.Series(True, index=raw.index), tz, problems)
        return _assemble(raw, utc, raw.notna()), problems
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        _hint_epoch(table, column, raw.astype(STRING_DTYPE).str.replace(r"\.0$", "", regex=True), problems)
        return raw, problems  # validation reports the wrong type
    if not (raw.dtype == object or isinstance(raw.dtype, pd.StringDtype | pd.CategoricalDtype)):
        return raw, problems

    text = raw.astype(STRING_DTYPE).str.strip()
    text = text.mask(text == "")
    present = text.notna()
    utc = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    naive = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us]")

    if fmt:
        with_offset = "%z" in fmt or "%Z" in fmt  # values carry their offsets (they may differ)
        try:
            parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=with_offset)
        except (ValueError, TypeError) as exc:
            problems.append(Problem(table, column, None, f"--ts-format {fmt!r} cannot be used: {exc}"))
            return raw, problems
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            utc = parsed.dt.tz_convert("UTC").dt.as_unit("us")
        else:
            naive = parsed.astype("datetime64[us]")
        failed = present & utc.isna() & naive.isna()
        if failed.any():
            problems.append(
                Problem(
                    table,
                    column,
                    None,
                    f"{int(failed.sum()):,} value(s) do not match --ts-format {fmt!r} "
                    f"(e.g. {_example(text, failed)}); they are listed by row below",
                )
            )
    else:
        day_month = present & text.str.match(_DAY_MONTH).fillna(False).astype(bool)
        readable = present
        if day_month.any():
            iso = _day_month_as_iso(table, column, text, day_month, dayfirst, problems)
            if iso is None:  # undecided: reported once for the column, nothing read
                return None, problems
            # dates impossible in the column's reading are never handed to a parser that guesses
            readable = present & ~(day_month & iso.isna())
            text = text.where(~day_month, iso)
        utc, naive = _parse_iso_or_mixed(text, readable)
        unread = present & utc.isna() & naive.isna() & readable
        if unread.any() and not _hint_epoch(table, column, text[unread], problems):
            problems.append(
                Problem(
                    table,
                    column,
                    None,
                    f"{int(unread.sum()):,} value(s) could not be read as dates (e.g. {_example(text, unread)}); "
                    "if they are dates, give --ts-format with their exact format",
                    WARNING,
                )
            )

    has_naive = naive.notna()
    if has_naive.any() and tz is not None:
        localised = _localise(table, column, naive, has_naive, tz, problems)
        utc = utc.where(~has_naive, localised)
    return _assemble(raw, utc, present), problems


def _assemble(raw: pd.Series, utc: pd.Series, present: pd.Series) -> pd.Series:
    """UTC timestamps when every present value was read, else ISO strings and raw cells mixed."""
    read = utc.notna()
    if not (present & ~read).any():
        return utc.dt.as_unit("us")
    out = raw.astype(object).copy()
    out[read] = utc[read].dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    return out


def _example(text: pd.Series, mask: pd.Series, n: int = 2) -> str:
    return ", ".join(repr(str(v)) for v in pd.unique(text[mask])[:n])


def _parse_iso_or_mixed(text: pd.Series, present: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(aware values in UTC, naive values): ISO 8601 first (fast, strict), then pandas' per-value
    parser for the rest (month names, AM/PM). Numeric day/month dates are already ISO here."""
    has_offset = present & text.str.contains(_OFFSET_AT_END, regex=True).fillna(False).astype(bool)
    aware = pd.to_datetime(text.where(has_offset), format="ISO8601", utc=True, errors="coerce")
    naive_text = text.where(present & ~has_offset)
    naive = pd.to_datetime(naive_text, format="ISO8601", errors="coerce")
    rest = naive_text.notna() & naive.isna() & naive_text.str.match(_SAFE_TO_INFER).fillna(False).astype(bool)
    if rest.any():
        naive = naive.astype("datetime64[us]")
        try:
            naive[rest] = pd.to_datetime(naive_text[rest], format="mixed", errors="coerce").astype(
                "datetime64[us]"
            )
        except (ValueError, TypeError):
            pass  # left unread: validation reports the cells by row
    rest_aware = has_offset & aware.isna() & text.str.match(_SAFE_TO_INFER).fillna(False).astype(bool)
    if rest_aware.any():
        try:
            aware = aware.astype("datetime64[us, UTC]")
            aware[rest_aware] = pd.to_datetime(
                text[rest_aware], format="mixed", utc=True, errors="coerce"
            ).astype("datetime64[us, UTC]")
        except (ValueError, TypeError):
            pass
    return aware.astype("datetime64[us, UTC]"), naive.astype("datetime64[us]")


def _day_month_as_iso(
    table: str,
    column: str,
    text: pd.Series,
    day_month: pd.Series,
    dayfirst: bool,
    problems: list[Problem],
) -> pd.Series | None:
    """Numeric day/month dates rewritten as ISO dates (time part kept), read one way per column.

    None when the column's reading cannot be decided (an error is added). Values impossible in the
    chosen reading (a month above 12) become unparseable, so validation reports them by row.
    """
    parts = text[day_month].str.extract(_DAY_MONTH)
    first = parts[0].astype(int)
    second = parts[2].astype(int)
    year = parts[3].astype(int)
    # two-digit years as strptime's %y reads them: 00-68 → 2000s, 69-99 → 1900s
    year = year.where(parts[3].str.len() == 4, np.where(year < 69, 2000 + year, 1900 + year))
    reads_day_first = (second <= 12) & (first <= 31) & (first >= 1) & (second >= 1)
    reads_month_first = (first <= 12) & (second <= 31) & (first >= 1) & (second >= 1)
    only_day_first = reads_day_first & ~reads_month_first
    only_month_first = reads_month_first & ~reads_day_first
    raw_cells = text[day_month]
    hint = "give --dayfirst, or --ts-format with the exact format (e.g. --ts-format '%d/%m/%Y %H:%M')"
    if dayfirst:
        reading = DAY_FIRST
    elif only_day_first.any() and only_month_first.any():
        problems.append(
            Problem(
                table,
                column,
                None,
                f"dates contradict each other: {_example(raw_cells, only_day_first, 1)} reads only "
                f"day/month/year and {_example(raw_cells, only_month_first, 1)} only month/day/year; "
                f"the column has to be read one way: {hint}",
            )
        )
        return None
    elif only_day_first.any():
        reading = DAY_FIRST
    elif only_month_first.any():
        reading = MONTH_FIRST
    else:
        differs = reads_day_first & reads_month_first & (first != second)
        if differs.any():
            problems.append(
                Problem(
                    table,
                    column,
                    None,
                    f"ambiguous dates: every value reads both as day/month/year and as month/day/year, "
                    f"e.g. {_example(raw_cells, differs)}; nothing says which: {hint}",
                )
            )
            return None
        reading = DAY_FIRST  # every date has day == month: both readings give the same date
    if reading == DAY_FIRST:
        day, month = first, second
    else:
        day, month = second, first
    if not dayfirst and (only_day_first.any() or only_month_first.any()):
        evidence = only_day_first if reading == DAY_FIRST else only_month_first
        layout = "day/month/year" if reading == DAY_FIRST else "month/day/year"
        problems.append(
            Problem(
                table,
                column,
                None,
                f"dates read as {layout}: {int(evidence.sum()):,} value(s) such as "
                f"{_example(raw_cells, evidence, 1)} read no other way and no value contradicts it",
                WARNING,
            )
        )
    valid = (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
    if not valid.all():
        layout = "day/month/year" if reading == DAY_FIRST else "month/day/year"
        problems.append(
            Problem(
                table,
                column,
                None,
                f"{int((~valid).sum()):,} value(s) are not dates when read as {layout}, the reading "
                f"of this column (e.g. {_example(raw_cells, ~valid)}); they are listed by row below",
            )
        )
    iso = (
        year.astype(str).str.zfill(4)
        + "-"
        + month.astype(str).str.zfill(2)
        + "-"
        + day.astype(str).str.zfill(2)
        + parts[4].fillna("")
    )
    # an impossible date is missing here: the caller leaves the cell as written for validation
    return iso.where(valid).reindex(text.index)


def _localise(
    table: str, column: str, naive: pd.Series, mask: pd.Series, tz: str, problems: list[Problem]
) -> pd.Series:
    """Naive wall times in `tz` → UTC. Repeated hour: first occurrence (daylight time); skipped
    hour: the offset in force before the change. Both counted in a warning, never silent."""
    values = naive.where(mask).astype("datetime64[us]")
    dst_first = np.ones(len(values), dtype=bool)
    as_daylight = values.dt.tz_localize(tz, ambiguous=dst_first, nonexistent="NaT")
    as_standard = values.dt.tz_localize(tz, ambiguous=~dst_first, nonexistent="NaT")
    skipped = (values.notna() & as_daylight.isna()).to_numpy()
    repeated = (as_daylight.notna() & as_standard.notna() & (as_daylight != as_standard)).to_numpy()
    utc = as_daylight.dt.tz_convert("UTC")
    if skipped.any():
        # the offset a day earlier is the one in force before the change (changes are months apart)
        before = (values[skipped] - pd.Timedelta(days=1)).dt.tz_localize(
            tz, ambiguous=np.ones(int(skipped.sum()), dtype=bool), nonexistent="shift_forward"
        )
        offset = before.dt.tz_localize(None) - before.dt.tz_convert("UTC").dt.tz_localize(None)
        utc = utc.astype("datetime64[us, UTC]")
        utc[skipped] = (values[skipped] - offset).dt.tz_localize("UTC")
        problems.append(
            Problem(
                table,
                column,
                int(np.flatnonzero(skipped)[0]),
                f"{int(skipped.sum()):,} wall-clock time(s) fall in the hour skipped when daylight "
                f"saving time starts in {tz} (e.g. {naive[skipped].iloc[0]}); read with the offset in "
                "force before the change (02:30 becomes 03:30 daylight time)",
                WARNING,
            )
        )
    if repeated.any():
        problems.append(
            Problem(
                table,
                column,
                int(np.flatnonzero(repeated)[0]),
                f"{int(repeated.sum()):,} wall-clock time(s) fall in the hour repeated when daylight "
                f"saving time ends in {tz} (e.g. {naive[repeated].iloc[0]}); read as the first "
                "occurrence (daylight time)",
                WARNING,
            )
        )
    return utc.astype("datetime64[us, UTC]")


def _from_unix(table: str, column: str, raw: pd.Series, problems: list[Problem]) -> pd.Series:
    """Seconds since the epoch (numbers, or text holding numbers) → UTC timestamps."""
    if pd.api.types.is_bool_dtype(raw.dtype):
        problems.append(
            Problem(table, column, None, "--ts-format unix: the column holds booleans, not numbers")
        )
        return raw
    if pd.api.types.is_numeric_dtype(raw.dtype):
        seconds = raw.astype("float64")
        present = raw.notna()
    else:
        text = raw.astype(STRING_DTYPE).str.strip()
        text = text.mask(text == "")
        present = text.notna()
        seconds = pd.to_numeric(text, errors="coerce").astype("float64")
    too_large = (seconds.abs() >= MAX_UNIX_SECONDS).fillna(False)
    if too_large.any():
        problems.append(
            Problem(
                table,
                column,
                int(np.flatnonzero(too_large.to_numpy())[0]),
                f"--ts-format unix: {int(too_large.sum()):,} value(s) such as {_show_number(seconds[too_large].iloc[0])} "
                "are not seconds since the epoch (after the year 5000: milliseconds?); "
                "divide them by 1000 first",
            )
        )
    seconds = seconds.where(~too_large)
    utc = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce").astype("datetime64[us, UTC]")
    unread = present & utc.isna() & ~too_large
    if unread.any():
        problems.append(
            Problem(
                table,
                column,
                None,
                f"--ts-format unix: {int(unread.sum()):,} value(s) are not numbers "
                f"(e.g. {_example(raw.astype('string'), unread)}); they are listed by row below",
            )
        )
    return _assemble(raw, utc, present)


def _show_number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _hint_epoch(table: str, column: str, text: pd.Series, problems: list[Problem]) -> bool:
    """Say so when timestamps look like seconds since the epoch (validation's error would not)."""
    present = text.dropna()
    if not (len(present) and present.str.match(_EPOCH_LIKE).fillna(False).all()):
        return False
    problems.append(
        Problem(
            table,
            column,
            None,
            "the values look like seconds since the epoch: give --ts-format unix",
            WARNING,
        )
    )
    return True


# --------------------------------------------------------------------------------------------
# Tables


def import_tables(
    spec: ImportSpec, config: ContractConfig | None = None
) -> tuple[list[Problem], dict[str, pd.DataFrame]]:
    """Map, convert and validate; returns (problems, normalised frames). Never raises on bad input:
    every problem names the table, the column and, where there is one, the row."""
    config = config or ContractConfig()
    problems: list[Problem] = []
    mapped: dict[str, pd.DataFrame] = {}
    undecided: set[tuple[str, str]] = set()
    for table, path in spec.sources.items():
        if table not in TABLES:
            problems.append(Problem(table, None, None, f"unknown table; expected one of {', '.join(TABLES)}"))
            continue
        path = Path(path)
        if not path.is_file():
            problems.append(Problem(table, None, None, f"source file not found: {path}"))
            continue
        try:
            raw = read_raw_table(path)
        except UnicodeDecodeError as exc:
            problems.append(
                Problem(
                    table,
                    None,
                    None,
                    f"cannot read {path.name}: not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r} "
                    f"at position {exc.start:,}); save it as UTF-8 CSV or as Parquet",
                )
            )
            continue
        except Exception as exc:  # any reader failure is a problem to report, not a crash
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(Problem(table, None, None, f"cannot read {path.name}: {reason}"))
            continue
        frame = _map_table(table, path, raw, spec, problems, undecided)
        if frame is not None:
            mapped[table] = frame
    if len(mapped) < len(spec.sources):  # a table could not be read or mapped: reported above
        return problems, {}
    zone_filled = 0
    if spec.assume_timezone and "customers" in mapped:
        mapped["customers"], zone_filled = _fill_customer_timezones(mapped["customers"], spec.assume_timezone)
    more, parsed = validate_tables(mapped, config)
    # a column whose dates could not be read one way has its one error; no row-by-row echo
    problems += [p for p in more if (p.table, p.column) not in undecided]
    if any(p.severity == ERROR for p in problems):
        return problems, {}
    if spec.assume_timezone:
        problems = _complete_customers(parsed, spec.assume_timezone, zone_filled, problems, config)
        if any(p.severity == ERROR for p in problems):
            return problems, {}
    if not any(p.severity == ERROR for p in problems) and "products" in parsed:
        missing = int(parsed["products"][c.PRICE].isna().sum())
        if missing:
            problems.append(
                Problem(
                    "products",
                    c.PRICE,
                    None,
                    f"{missing:,} product(s) have no price: on load they take the median "
                    "amount/quantity of their purchases in events (the median over all purchases "
                    "for products never bought)",
                    WARNING,
                )
            )
    return problems, parsed


def _map_table(
    table: str,
    path: Path,
    raw: pd.DataFrame,
    spec: ImportSpec,
    problems: list[Problem],
    undecided: set[tuple[str, str]],
) -> pd.DataFrame | None:
    """The source frame renamed and cut to the contract (plus attributes), timestamps converted."""
    table_spec = TABLES[table]
    mapping = dict(spec.mapping.get(table, {}))
    constants = dict(spec.constants.get(table, {}))
    columns = [str(col) for col in raw.columns]
    raw.columns = columns
    ok = True
    for target, source in mapping.items():
        if not _is_target(table, target):
            problems.append(
                Problem(table, target, None, f"--map names '{target}', which is not a column of {table}")
            )
            ok = False
        elif source not in raw.columns:
            problems.append(
                Problem(
                    table,
                    target,
                    None,
                    f"mapped source column '{source}' is not in {path.name} "
                    f"(columns present: {', '.join(columns) or 'none'})",
                )
            )
            ok = False
    if not ok:
        return None
    prefix = table_spec.attribute_prefix
    used = set(mapping.values()) | {col.name for col in table_spec.columns}
    used |= {col for col in columns if prefix and col.startswith(prefix)}
    repeated = sorted({col for col in raw.columns[raw.columns.duplicated()] if col in used})
    for col in repeated:
        problems.append(
            Problem(
                table,
                col,
                None,
                f"column '{col}' appears {columns.count(col)} times in the header of {path.name}; "
                "the column to read must be named once",
            )
        )
    if repeated:
        return None
    frame = pd.DataFrame(index=raw.index)
    for col in table_spec.columns:
        if col.name in mapping:
            frame[col.name] = raw[mapping[col.name]]
        elif col.name in constants:
            frame[col.name] = constants[col.name]
        elif col.name in raw.columns:  # already named as the contract says
            frame[col.name] = raw[col.name]
    if prefix:
        attributes = {t: s for t, s in mapping.items() if t.startswith(prefix)}
        attributes.update({col: col for col in columns if col.startswith(prefix) and col not in attributes})
        for target, source in attributes.items():
            frame[target] = raw[source]
    if table == "events":
        frame = _derive_event_columns(frame, raw, mapping, spec, problems)
    for col in table_spec.columns:
        if col.kind == TIMESTAMP and col.name in frame:
            converted, found = convert_timestamps(
                table,
                col.name,
                frame[col.name],
                spec.assume_timezone,
                spec.timestamp_format,
                spec.dayfirst,
            )
            problems += found
            if converted is None:
                undecided.add((table, col.name))
            else:
                frame[col.name] = converted
    return frame


def _derive_event_columns(
    frame: pd.DataFrame, raw: pd.DataFrame, mapping: dict, spec: ImportSpec, problems: list[Problem]
) -> pd.DataFrame:
    """amount from quantity × unit price; negative quantities of a purchase log are returns."""
    qty = pd.to_numeric(frame[c.QUANTITY], errors="coerce") if c.QUANTITY in frame else None
    if c.AMOUNT not in frame and UNIT_PRICE in mapping and mapping[UNIT_PRICE] in raw.columns:
        source = raw[mapping[UNIT_PRICE]]
        unit = pd.to_numeric(source, errors="coerce")
        not_number = (source.notna() & unit.isna()).to_numpy()
        for row in np.flatnonzero(not_number)[:MAX_EXAMPLE_ROWS]:
            problems.append(
                Problem("events", UNIT_PRICE, int(row), f"wrong type: {source.iloc[row]!r} is not a number")
            )
        if not_number.sum() > MAX_EXAMPLE_ROWS:
            problems.append(
                Problem(
                    "events",
                    UNIT_PRICE,
                    None,
                    f"values that are not numbers: {int(not_number.sum()):,} rows in total",
                )
            )
        amount = unit * (qty if qty is not None else 1.0)
        frame[c.AMOUNT] = amount
    if spec.returns_from_negative_quantity and qty is not None and c.EVENT_TYPE in frame:
        is_return = (qty < 0).to_numpy(dtype=bool, na_value=False) & (
            frame[c.EVENT_TYPE].astype(str).to_numpy() == "purchase"
        )
        if is_return.any():
            frame[c.EVENT_TYPE] = frame[c.EVENT_TYPE].astype(object)
            frame.loc[is_return, c.EVENT_TYPE] = "return"
    return frame


# --------------------------------------------------------------------------------------------
# Customers' time zone


def _fill_customer_timezones(customers: pd.DataFrame, zone: str) -> tuple[pd.DataFrame, int]:
    """The imported customers table with `zone` where it gives none (no column, or empty cells);
    the number of rows filled. Zones it gives are kept (validation checks them)."""
    customers = customers.copy()
    if c.TIMEZONE not in customers.columns:
        customers[c.TIMEZONE] = zone
        return customers, len(customers)
    text = customers[c.TIMEZONE].astype(STRING_DTYPE).str.strip()
    empty = (text.isna() | (text == "")).to_numpy(dtype=bool, na_value=True)
    if empty.any():
        customers[c.TIMEZONE] = customers[c.TIMEZONE].astype(object).where(~empty, zone)
    return customers, int(empty.sum())


def customers_seen(parsed: dict[str, pd.DataFrame]) -> pd.Index:
    """The canonical id of every customer of validated tables, as loading will see them: the ids of
    events, messages and consent after identity stitching (features.identity), the canonical ids of
    identities and the customers table's own ids."""
    identities = parsed.get("identities")
    customers = parsed.get("customers")
    ids: list[pd.Series] = []
    if identities is not None:
        identities = identities.dropna(subset=[c.SOURCE_ID, c.CUSTOMER_ID])
        ids.append(identities[c.CUSTOMER_ID])
    canonical = customers[c.CUSTOMER_ID] if customers is not None else None
    if canonical is None and identities is not None:
        canonical = identities[c.CUSTOMER_ID]
    for name in STITCHED_TABLES:
        frame = parsed.get(name)
        if frame is None or c.CUSTOMER_ID not in frame.columns:
            continue
        if identities is not None and len(identities):
            ids.append(canonical_customer_ids(frame, identities, canonical)[0])
        else:
            ids.append(frame[c.CUSTOMER_ID])
    if customers is not None:
        ids.append(customers[c.CUSTOMER_ID])
    if not ids:
        return pd.Index([], dtype=STRING_DTYPE)
    return pd.Index(pd.unique(pd.concat(ids, ignore_index=True).astype(STRING_DTYPE).dropna()))


def _complete_customers(
    parsed: dict[str, pd.DataFrame], zone: str, filled: int, problems: list[Problem], config: ContractConfig
) -> list[Problem]:
    """Every customer of the import gets `zone` unless the customers table gives one: a customers
    table is written when none was imported, and customers it lacks are added (no signup date, no
    segment, attributes missing: the defaults a customer missing from it has anyway). One warning
    gives the count; the warnings about customers missing from the table no longer apply."""
    customers = parsed.get("customers")
    listed = customers[c.CUSTOMER_ID] if customers is not None else pd.Series([], dtype=STRING_DTYPE)
    new_ids = customers_seen(parsed).difference(pd.Index(listed.astype(STRING_DTYPE)))
    identities = parsed.get("identities")
    if identities is not None:
        # An id left unstitched that is some source id (a source system the identities do not map)
        # would become a canonical id and change how other rows stitch: it keeps the default zone.
        canonical = pd.Index(pd.concat([listed, identities[c.CUSTOMER_ID]]).astype(STRING_DTYPE).dropna())
        source_only = pd.Index(identities[c.SOURCE_ID].astype(STRING_DTYPE).dropna()).difference(canonical)
        new_ids = new_ids.difference(source_only)
    if customers is not None and not len(new_ids):
        if filled:
            problems.append(_zone_warning(zone, filled, 0, imported=True))
        return problems
    added = pd.DataFrame({c.CUSTOMER_ID: pd.Series(new_ids, dtype=STRING_DTYPE), c.TIMEZONE: zone})
    combined = added if customers is None else pd.concat([customers, added], ignore_index=True)
    more, checked = validate_tables({"customers": combined}, config)  # alone: no events, said below
    errors = [p for p in more if p.severity == ERROR and p.table == "customers"]
    if errors:  # the imported rows passed already: a reason here is worth reporting as it is
        return problems + errors
    parsed["customers"] = checked["customers"]
    kept = [
        p
        for p in problems
        if not (
            p.severity == WARNING
            and p.table in STITCHED_TABLES
            and p.column == c.CUSTOMER_ID
            and "not in customers.customer_id" in p.reason
        )
    ]
    kept.append(_zone_warning(zone, filled, len(new_ids), imported=customers is not None))
    return kept


def _zone_warning(zone: str, filled: int, added: int, imported: bool) -> Problem:
    if imported:
        parts = []
        if filled:
            parts.append(f"{filled:,} of the customers table had none")
        if added:
            parts.append(
                f"{added:,} seen in the other tables but not in it were added to it, "
                "with no signup date, no segment and attributes missing"
            )
        how = "; ".join(parts)
    else:
        how = "no customers table was given: one is written with every customer seen in the other tables"
    return Problem(
        "customers",
        c.TIMEZONE,
        None,
        f"{filled + added:,} customer(s) take the time zone {zone} of --timezone ({how}); "
        "customers living in other zones need a customers table with a timezone column",
        WARNING,
    )


def write_imported(frames: dict[str, pd.DataFrame], out_dir: str | Path) -> Path:
    return write_dir_atomic(frames, out_dir)
