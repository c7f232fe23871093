"""`omni import`: bring a retailer's own files into the data contract without writing code.

A column mapping (`customer_id=CustomerID,ts=InvoiceDate,...`) renames the user's columns;
constants fill what the file does not carry (`--channel web`, `--event-type purchase`); naive
timestamps are read in a stated time zone. The result is validated exactly like any data folder
and written atomically; unmapped columns are dropped, so free-text or personal columns of an
export never reach features, models or logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features import columns as c
from features.contract import TABLES, ContractConfig
from features.io import read_raw_table, write_dir_atomic
from features.validation import Problem, validate_tables

# Extra targets a mapping may name that are not contract columns but derive one.
UNIT_PRICE = "unit_price"  # events: amount = quantity × unit_price when no amount is mapped


@dataclass
class ImportSpec:
    """What to import: source file per table, the mapping, constants and how to read times."""

    sources: dict[str, Path]
    mapping: dict[str, dict[str, str]] = field(default_factory=dict)  # table → {contract col: source col}
    constants: dict[str, dict[str, str]] = field(default_factory=dict)  # table → {contract col: value}
    assume_timezone: str | None = None  # zone for timestamps written without an offset
    timestamp_format: str | None = None  # strftime format of the source timestamps (default: inferred)
    returns_from_negative_quantity: bool = True


def parse_mapping(specs: list[str] | tuple[str, ...], tables: list[str]) -> dict[str, dict[str, str]]:
    """`a=B,c=D` applies to every given table; `events.a=B` to one. Raises ValueError on bad syntax."""
    out: dict[str, dict[str, str]] = {t: {} for t in tables}
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            if "=" not in item:
                raise ValueError(f"--map: '{item}' is not target=source_column")
            target, source = (x.strip() for x in item.split("=", 1))
            if not target or not source:
                raise ValueError(f"--map: '{item}' is not target=source_column")
            table, _, column = target.rpartition(".")
            targets = [table] if table else tables
            if table and table not in TABLES:
                raise ValueError(f"--map: unknown table '{table}' in '{item}'")
            for t in targets:
                if t in out:
                    out[t][column] = source
    return out


def _localise_timestamps(raw: pd.Series, tz: str | None, fmt: str | None) -> pd.Series:
    """Naive timestamps → ISO 8601 with offset in `tz`; values already with an offset are kept.

    Values that do not parse are left as they are, so validation reports them by row.
    """
    text = raw.astype("string")
    parsed = pd.to_datetime(text, format=fmt or "mixed", errors="coerce", utc=False)
    if not isinstance(parsed.dtype, pd.DatetimeTZDtype):
        # a column of naive (or mixed) values: localise the naive ones when a zone is given
        if tz is None:
            return raw
        parsed = pd.to_datetime(text, format=fmt or "mixed", errors="coerce")
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            return raw
        localised = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
        out = localised.dt.strftime("%Y-%m-%dT%H:%M:%S%z").astype(object)
        keep = localised.isna().to_numpy()
        out[keep] = raw[keep]
        return pd.Series(out, index=raw.index)
    return raw


def import_tables(
    spec: ImportSpec, config: ContractConfig | None = None
) -> tuple[list[Problem], dict[str, pd.DataFrame]]:
    """Map, convert and validate; returns (problems, normalised frames)."""
    config = config or ContractConfig()
    problems: list[Problem] = []
    mapped: dict[str, pd.DataFrame] = {}
    for table, path in spec.sources.items():
        if table not in TABLES:
            problems.append(Problem(table, None, None, f"unknown table; expected one of {', '.join(TABLES)}"))
            continue
        path = Path(path)
        if not path.is_file():
            problems.append(Problem(table, None, None, f"source file not found: {path}"))
            continue
        raw = read_raw_table(path)
        table_spec = TABLES[table]
        mapping = dict(spec.mapping.get(table, {}))
        constants = dict(spec.constants.get(table, {}))
        known = {col.name for col in table_spec.columns} | ({UNIT_PRICE} if table == "events" else set())
        for target, source in mapping.items():
            if target not in known:
                problems.append(
                    Problem(table, target, None, f"--map names '{target}', which is not a column of {table}")
                )
            elif source not in raw.columns:
                problems.append(
                    Problem(
                        table,
                        target,
                        None,
                        f"mapped source column '{source}' is not in {path.name} "
                        f"(columns present: {', '.join(map(str, raw.columns))})",
                    )
                )
        frame = pd.DataFrame(index=raw.index)
        for col in table_spec.columns:
            if col.name in mapping and mapping[col.name] in raw.columns:
                frame[col.name] = raw[mapping[col.name]]
            elif col.name in constants:
                frame[col.name] = constants[col.name]
            elif col.name in raw.columns:  # already named as the contract says
                frame[col.name] = raw[col.name]
        if table == "events":
            frame = _derive_event_columns(frame, raw, mapping, spec)
        for col in table_spec.columns:
            if col.kind == "timestamp" and col.name in frame:
                frame[col.name] = _localise_timestamps(
                    frame[col.name], spec.assume_timezone, spec.timestamp_format
                )
        mapped[table] = frame
    if problems:
        return problems, {}
    more, parsed = validate_tables(mapped, config)
    return problems + more, parsed


def _derive_event_columns(
    frame: pd.DataFrame, raw: pd.DataFrame, mapping: dict, spec: ImportSpec
) -> pd.DataFrame:
    """amount from quantity × unit price; negative quantities of a purchase log are returns."""
    qty = pd.to_numeric(frame[c.QUANTITY], errors="coerce") if c.QUANTITY in frame else None
    if c.AMOUNT not in frame and UNIT_PRICE in mapping and mapping[UNIT_PRICE] in raw.columns:
        unit = pd.to_numeric(raw[mapping[UNIT_PRICE]], errors="coerce")
        amount = unit * (qty if qty is not None else 1.0)
        frame[c.AMOUNT] = amount
    if spec.returns_from_negative_quantity and qty is not None and c.EVENT_TYPE in frame:
        is_return = (qty < 0).to_numpy(dtype=bool, na_value=False) & (
            frame[c.EVENT_TYPE].astype(str).to_numpy() == "purchase"
        )
        if is_return.any():
            frame.loc[is_return, c.EVENT_TYPE] = "return"
            frame[c.EVENT_TYPE] = frame[c.EVENT_TYPE].astype(object)
    return frame


def write_imported(frames: dict[str, pd.DataFrame], out_dir: str | Path) -> Path:
    return write_dir_atomic(frames, out_dir)
