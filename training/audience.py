"""Campaign batches: who a batch command scores, with which product rules, and who it left out.

`omni recommend --all`, `omni channel --all`, `omni send-time --all` and `omni decide` take the same
audience options, with the same meaning:

- `--customers FILE`: only these customers. A Parquet or CSV file with a `customer_id` column, or
  plain text with one id per line. Ids may be source ids (a loyalty card, an app device id): the
  live store resolves them to their customer, as every route does.
- `--segment NAME` (repeatable): only customers whose profile segment (`CustomerProfiles`:
  new, active, loyal, champion, at_risk, dormant) is one of these.
- `--active-within-days N`: only customers who did something in the N days before the end of the
  training data (`omni decide`: before `--now`): any event of the events table (a purchase, a
  view, a cart, a return, whatever the retailer logs), a response to a message (an open, a click
  or a conversion in the messages table), or, since training, a purchase or a message open or
  click posted to the live store. A message sent to the customer is not their activity. The
  events and messages are read from `--data DIR` (default: the demo data folder).

Customers the audience leaves out are not scored at all, and each batch writes `customer_id,
reason` beside its `--out FILE` (`<stem>.left_out.csv`, or `--left-out FILE`), one row per
customer, with one of these reasons (the first that applies):

- `unknown_customer`: an id of the customers file that no model knows (written as given);
- `not_in_customers_file`: a known customer the customers file does not list;
- `not_in_segment`: the customer's segment is not one of `--segment` (or no profile gives one);
- `inactive`: nothing in the `--active-within-days` window;
- `no_items`: `omni recommend`: nothing is left to recommend under the filters;
- `no_channel`: `omni channel`: no consented channel among `--channel`;
- `no_consent`: `omni send-time`: consent to none of the `--channel` channels (the rows stay,
  flagged, without a send moment);
- `omni decide`: a customer whose decision is no action is listed with the decision's own first
  reason (`control_group`, `no_consent`, `cooldown_after_purchase`, `cooldown_after_message`,
  `frequency_cap`, `channel_capacity`, `no_positive_gain`, `no_allowed_action`,
  `guard_fallback_no_action`, `no_send_slot`, `ledger_changed_during_batch`); their rows stay in
  the decisions file.

The product rules (`--categories`, `--exclude-categories`, `--price-min`, `--price-max`,
`--max-per-category`, `--exclude FILE`) are the HTTP request's `filters` and `exclude`: the same
`models.recs.rules.Filters`, applied by the recommender itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import columns as c
from models.decisions.contact_policy import SEGMENTS
from models.recs.rules import Filters

UNKNOWN_CUSTOMER = "unknown_customer"
NOT_IN_CUSTOMERS_FILE = "not_in_customers_file"
NOT_IN_SEGMENT = "not_in_segment"
INACTIVE = "inactive"
NO_ITEMS = "no_items"
NO_CHANNEL = "no_channel"
NO_CONSENT = "no_consent"
LEFT_OUT_COLUMNS: tuple[str, ...] = (c.CUSTOMER_ID, c.REASON)
# message responses in the messages table: the customer did something
RESPONSE_COLUMNS: tuple[str, ...] = (c.OPENED_TS, c.CLICKED_TS, c.CONVERTED_TS)
# names in an error message: enough to see the form, not a catalogue of thousands
NAMED_AT_MOST = 20
_TABLE_SUFFIXES = (".parquet", ".csv.gz", ".csv")


# ------------------------------------------------------------------------------ option values
def split_names(values: Iterable[str] | None) -> tuple[str, ...]:
    """A repeatable option whose values may also be comma-separated, as distinct names in order."""
    out: dict[str, None] = {}
    for value in values or ():
        for part in str(value).split(","):
            if part.strip():
                out[part.strip()] = None
    return tuple(out)


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMED_AT_MOST])
    return shown + (f" and {len(names) - NAMED_AT_MOST} more" if len(names) > NAMED_AT_MOST else "")


def check_names(
    given: Sequence[str], known: Sequence[str], option: str, what: str, plural: str | None = None
) -> tuple[str, ...]:
    """`given` when every one is in `known`; else ValueError naming the option, the unknown ones
    and the known ones."""
    unknown = [x for x in given if x not in set(known)]
    if unknown:
        raise ValueError(
            f"{option}: unknown {what} {', '.join(repr(x) for x in unknown)}; known {plural or what + 's'}: "
            f"{_named(list(known))}"
        )
    return tuple(given)


def read_ids(path: str | Path, column: str, option: str) -> list[str]:
    """The ids of a file, as strings, in file order without repeats: a Parquet or CSV file with
    `column`, or plain text with one id per line (blank lines skipped). ValueError naming the
    option and the file when it cannot be read, has no such column or holds no id."""
    path = Path(path)
    try:
        if path.name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
            if column not in frame.columns:
                raise ValueError(f"no {column} column (columns: {', '.join(map(str, frame.columns))})")
            values = frame[column].dropna().astype(str)
        else:
            with path.open(encoding="utf-8-sig") as handle:
                header = handle.readline().strip()
            names = [name.strip().strip('"') for name in header.split(",")]
            if column in names:
                values = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column]
            elif "," in header:
                raise ValueError(
                    f"no {column} column (columns: {', '.join(names)}); give a {column} column or one id per line"
                )
            else:
                values = pd.Series(path.read_text(encoding="utf-8-sig").splitlines(), dtype=object)
            values = values.astype(str).str.strip()
            values = values[values != ""]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ValueError(f"{option} {path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{option} {path}: {exc}") from None
    ids = list(dict.fromkeys(values.tolist()))
    if not ids:
        raise ValueError(f"{option} {path}: holds no {column}")
    return ids


def left_out_path(out_file: Path | None, explicit: Path | None) -> Path | None:
    """`--left-out FILE`, else `<out stem>.left_out.csv` beside `--out FILE`, else None."""
    if explicit is not None:
        return Path(explicit)
    if out_file is None:
        return None
    out_file = Path(out_file)
    name = out_file.name
    for suffix in _TABLE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out_file.with_name(f"{name}.left_out.csv")


# ------------------------------------------------------------------------------ product rules
def recommend_filters(
    categories: Sequence[str] = (),
    exclude_categories: Sequence[str] = (),
    price_min: float | None = None,
    price_max: float | None = None,
    max_per_category: int | None = None,
    exclude_purchased: bool = False,
    known_categories: Sequence[str] | None = None,
) -> Filters | None:
    """The `Filters` of the recommend options (None when they restrict nothing): the rules the
    HTTP request's `filters` builds, checked the same way (price_min above price_max is refused),
    and an unknown category is refused here, naming the recommender's categories."""
    include = split_names(categories)
    exclude = split_names(exclude_categories)
    if known_categories is not None:
        check_names(include, known_categories, "--categories", "category", "categories")
        check_names(exclude, known_categories, "--exclude-categories", "category", "categories")
    filters = Filters.from_dict(
        {
            "categories": list(include) or None,
            "exclude_categories": list(exclude),
            "price_min": price_min,
            "price_max": price_max,
            "max_per_category": max_per_category,
            "exclude_purchased": exclude_purchased,
        }
    )
    return None if filters == Filters() else filters


# ------------------------------------------------------------------------------ the audience
@dataclass(frozen=True)
class Audience:
    """Who a batch is for; each field left empty restricts nothing.

    `customers`: the ids of the customers file (canonical, or as given when no link is known);
    `segments`: profile segments; `active_since`: the start of the activity window.
    """

    customers: tuple[str, ...] | None = None
    segments: tuple[str, ...] = ()
    active_since: pd.Timestamp | None = None

    @property
    def restricts(self) -> bool:
        return self.customers is not None or bool(self.segments) or self.active_since is not None


@dataclass
class Selection:
    """The customers a batch scores (in the order they were given) and who was left out, why."""

    customer_ids: list[str]
    left_out: pd.DataFrame = field(default_factory=lambda: empty_left_out())


def empty_left_out() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=object) for name in LEFT_OUT_COLUMNS})


def left_out_frame(customer_ids: Iterable[str], reasons: Iterable[str] | str) -> pd.DataFrame:
    ids = [str(x) for x in customer_ids]
    why = [reasons] * len(ids) if isinstance(reasons, str) else [str(r) for r in reasons]
    return pd.DataFrame({c.CUSTOMER_ID: pd.Series(ids, dtype=object), c.REASON: pd.Series(why, dtype=object)})


def select(
    universe: Sequence[str],
    audience: Audience,
    segment_of: Mapping[str, str] | pd.Series | None = None,
    last_active: pd.Series | None = None,
) -> Selection:
    """The customers of `universe` (a batch's known customers) in the audience.

    `segment_of`: customer → segment (needed with `audience.segments`); `last_active`: customer →
    the time of their latest activity, UTC (needed with `audience.active_since`; a customer
    missing from it did nothing). Every customer of `universe` left out gets the first reason that
    applies; ids of the customers file that `universe` does not hold are `unknown_customer`.
    """
    ids = pd.Index(pd.unique(np.asarray([str(x) for x in universe], dtype=object)))
    reason = pd.Series(None, index=ids, dtype=object)
    parts = []
    if audience.customers is not None:
        listed = pd.Index(pd.unique(np.asarray(audience.customers, dtype=object)))
        parts.append(left_out_frame(listed[~listed.isin(ids)], UNKNOWN_CUSTOMER))
        reason[~ids.isin(listed)] = NOT_IN_CUSTOMERS_FILE
    if audience.segments:
        if segment_of is None:
            raise ValueError("segments are needed to select by segment")
        segment = pd.Series(segment_of).reindex(ids)
        reason[reason.isna() & ~segment.isin(list(audience.segments)).to_numpy()] = NOT_IN_SEGMENT
    if audience.active_since is not None:
        last = pd.Series(dtype="datetime64[us, UTC]") if last_active is None else last_active
        when = pd.to_datetime(last.reindex(ids), utc=True)
        reason[reason.isna() & ~(when >= audience.active_since).to_numpy()] = INACTIVE
    left = reason.dropna()
    parts.insert(0, left_out_frame(left.index, left.to_numpy()))
    kept = ids[reason.isna().to_numpy()].tolist()
    return Selection(kept, pd.concat(parts, ignore_index=True))


def check_segments(segments: Sequence[str], present: Iterable[str] = ()) -> tuple[str, ...]:
    """`--segment` values, checked against the profile segments (the rules' names, and any other
    the fitted profiles hold)."""
    known = list(SEGMENTS) + sorted(set(map(str, present)) - set(SEGMENTS))
    return check_names(split_names(segments), known, "--segment", "segment")


def segments_of(profiles) -> pd.Series:
    """customer → segment of fitted `CustomerProfiles`."""
    frame = profiles.frame_
    return pd.Series(
        frame["segment"].astype(str).to_numpy(), index=frame[c.CUSTOMER_ID].astype(str).to_numpy()
    )


def last_activity(tables) -> pd.Series:
    """customer → time of their latest activity in loaded (and stitched) `Tables`: any event, and
    any open, click or conversion of a message they were sent (sending is not their activity)."""
    times = [tables.events[[c.CUSTOMER_ID, c.TS]]]
    messages = tables.messages
    if messages is not None:
        for column in RESPONSE_COLUMNS:
            if column in messages.columns:
                answered = messages.loc[messages[column].notna(), [c.CUSTOMER_ID, column]]
                times.append(answered.rename(columns={column: c.TS}))
    return latest_per_customer(times)


def live_activity(store, since: pd.Timestamp) -> pd.Series:
    """customer → time of their latest purchase or message open or click posted to the live store
    (what channel systems sent since training), from `since` on."""
    from features.live_store import ENGAGED

    bought = store.last_purchases()
    engaged = store.message_activity(since=since)
    engaged = engaged.loc[engaged["kind"] == ENGAGED, [c.CUSTOMER_ID, c.TS]]
    return latest_per_customer([bought[[c.CUSTOMER_ID, c.TS]], engaged])


def latest_per_customer(frames: Sequence[pd.DataFrame]) -> pd.Series:
    """customer → the latest `ts` over frames of (customer_id, ts)."""
    rows = [f.astype({c.CUSTOMER_ID: str}) for f in frames if len(f)]
    if not rows:
        return pd.Series(dtype="datetime64[us, UTC]")
    both = pd.concat(rows, ignore_index=True)
    both[c.TS] = pd.to_datetime(both[c.TS], utc=True)
    return both.groupby(c.CUSTOMER_ID)[c.TS].max()


# ------------------------------------------------------------------------------ left out
class LeftOut:
    """Who a batch left out, and why, gathered stage by stage."""

    def __init__(self) -> None:
        self._parts: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self._parts.append(frame[list(LEFT_OUT_COLUMNS)])

    def add_ids(self, customer_ids: Iterable[str], reason: str) -> None:
        self.add(left_out_frame(customer_ids, reason))

    def frame(self) -> pd.DataFrame:
        if not self._parts:
            return empty_left_out()
        return pd.concat(self._parts, ignore_index=True).drop_duplicates(c.CUSTOMER_ID, keep="first")

    def counts(self) -> dict[str, int]:
        """reason → customers, most first."""
        return self.frame()[c.REASON].value_counts().to_dict()

    def summary_lines(self) -> list[str]:
        """One line per reason, for stderr."""
        return [f"left out {n} customer(s): {reason}" for reason, n in self.counts().items()]

    def write(self, path: Path) -> Path:
        from features.io import write_table_atomic

        return write_table_atomic(self.frame(), path)
