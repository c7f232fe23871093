"""What every live store offers, whatever holds it: the interface, the event vocabulary, validation.

The live store keeps everything that changes between two trainings and must be seen at once by every
worker, host, batch and channel system: the session context (views, carts, purchases, opens,
clicks), the contact ledger (every message sent or committed, wherever it was decided), consent
changes, stock, and identity links learned from events. A backend (`_sqlite.py`; a server database
for several hosts) implements the abstract methods; the rules that do not depend on the backend (what
an event must carry, which products are still in play) live here, once.

Timestamps are UTC epoch seconds (float). `ts`, `since` and `now` accept epoch seconds, an aware
`datetime` or an ISO-8601 string with an offset; naive times are refused, as in the data contract.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from features import columns as c

# behaviour on a channel, kept per customer (bounded) as session context and engagement recency
EVENT_TYPES: tuple[str, ...] = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "return",
    "message_open",
    "message_click",
)
# a message a channel system sent on its own: a contact, counted by caps and cooldowns at once
MESSAGE_SENT = "message_sent"
# an opt-in or opt-out on one channel: the latest one wins from the next decision on
CONSENT = "consent"
# everything `/v1/events` takes
POSTED_EVENT_TYPES: tuple[str, ...] = (*EVENT_TYPES, MESSAGE_SENT, CONSENT)
# event types that are about one product and must name it
PRODUCT_EVENTS: frozenset[str] = frozenset({"view", "add_to_cart", "remove_from_cart", "purchase", "return"})
MAX_ID_LENGTH = 128
DAY = 86_400.0
# where a contact in the ledger was decided
CONTACT_SOURCES: tuple[str, ...] = ("event", "decision", "batch")
# opens and clicks: the engagement that channel and send time read from the live store
ENGAGEMENT_EVENTS: tuple[str, ...] = ("message_open", "message_click")
# `message_activity`'s rows: a message sent (any contact in the ledger) or engaged with
SENT, ENGAGED = "sent", "engaged"
MESSAGE_ACTIVITY_COLUMNS: tuple[str, ...] = (c.CUSTOMER_ID, c.CHANNEL, "kind", c.TS)
CONTACT_COLUMNS: tuple[str, ...] = (
    c.CUSTOMER_ID,
    c.CHANNEL,
    c.TS,
    "source",
    "action",
    c.CAMPAIGN_ID,
    c.OFFER_ID,
)


def to_epoch(value: float | int | str | datetime | None, field: str = c.TS) -> float:
    """Epoch seconds (UTC) from a number, an aware datetime or an ISO-8601 string with an offset."""
    if value is None:
        return time.time()
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a timestamp, got a boolean")
    if isinstance(value, int | float):
        out = float(value)
        if not math.isfinite(out):
            raise ValueError(f"{field}: timestamp must be finite, got {value!r}")
        return out
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{field}: not an ISO-8601 timestamp: {value!r}") from exc
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{field}: timestamp must carry a time zone (e.g. 2025-01-31T12:00:00+00:00)")
        return value.timestamp()
    raise ValueError(
        f"{field}: expected epoch seconds, a datetime or an ISO-8601 string, got {type(value).__name__}"
    )


def check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(
            f"{field}: expected a non-empty string of at most {MAX_ID_LENGTH} characters, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Contact:
    """One contact for the ledger: a message sent, or a decision committed to be sent at `ts`."""

    customer_id: str
    channel: str
    ts: float
    source: str = "event"
    action: str | None = None
    campaign_id: str | None = None
    offer_id: str | None = None

    def __post_init__(self) -> None:
        check_id(self.customer_id, c.CUSTOMER_ID)
        check_id(self.channel, c.CHANNEL)
        if self.source not in CONTACT_SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {', '.join(CONTACT_SOURCES)}")
        for name in (c.CAMPAIGN_ID, c.OFFER_ID):
            value = getattr(self, name)
            if value is not None:
                check_id(value, name)
        object.__setattr__(self, "ts", to_epoch(self.ts))


@dataclass
class LiveState:
    """What the live store knows of one customer that a decision must respect."""

    customer_id: str
    contacts: list[tuple[str, float]] = field(default_factory=list)  # (channel, ts), any order
    last_purchase: float | None = None  # the newest purchase event's ts
    consent: dict[str, bool] = field(default_factory=dict)  # channel -> the latest opted_in
    purchased: list[str] = field(default_factory=list)  # products bought, newest first


def session_from_rows(rows: Iterable[tuple], at: float, view_window_s: float) -> list[str]:
    """Products still in play from (ts, event_type, channel, product_id) rows, newest first: carted
    and not since removed or bought, and viewed within the view window and not bought since."""
    view_since = at - view_window_s
    out: list[str] = []
    closed: set[str] = set()  # a later removal or purchase settles every earlier event of the product
    seen: set[str] = set()
    for ts, event_type, _channel, product_id in rows:  # newest first
        if product_id is None or product_id in seen:
            continue
        if event_type in ("remove_from_cart", "purchase", "return"):
            closed.add(product_id)
        elif product_id in closed:
            continue
        elif event_type == "add_to_cart" or (event_type == "view" and ts >= view_since):
            out.append(product_id)
            seen.add(product_id)
    return out


class LiveStore(abc.ABC):
    """The live state shared by every worker and host: one interface, one module per backend.

    Writes are acknowledged only once durable (a committed transaction): what a caller was told was
    stored survives a killed worker.
    """

    def __init__(
        self,
        max_events_per_customer: int = 100,
        max_age_days: float = 30,
        view_window_hours: float = 24,
        channels: tuple[str, ...] | None = None,
    ) -> None:
        if max_events_per_customer < 1:
            raise ValueError("max_events_per_customer: must be at least 1")
        if max_age_days <= 0:
            raise ValueError("max_age_days: must be positive")
        self.max_events_per_customer = int(max_events_per_customer)
        self.max_age_s = float(max_age_days) * DAY
        self.view_window_s = float(view_window_hours) * 3600.0
        self.channels = frozenset(channels) if channels else None

    # -- validation shared by every backend ---------------------------------------------------------
    def _check_channel(self, channel: object) -> str:
        check_id(channel, c.CHANNEL)
        if self.channels is not None and channel not in self.channels:
            raise ValueError(
                f"{c.CHANNEL}: unknown channel {channel!r}; expected one of {', '.join(sorted(self.channels))}"
            )
        return channel  # type: ignore[return-value]

    def _check_event(self, customer_id, event_type, channel, product_id) -> None:
        check_id(customer_id, c.CUSTOMER_ID)
        if event_type not in POSTED_EVENT_TYPES:
            raise ValueError(
                f"{c.EVENT_TYPE}: unknown event type {event_type!r}; expected one of "
                f"{', '.join(POSTED_EVENT_TYPES)}"
            )
        self._check_channel(channel)
        if product_id is not None:
            check_id(product_id, c.PRODUCT_ID)
        elif event_type in PRODUCT_EVENTS:
            raise ValueError(f"{c.PRODUCT_ID}: a {event_type} event must name the product")

    # -- writes -------------------------------------------------------------------------------------
    def add(
        self,
        customer_id: str,
        event_type: str,
        channel: str,
        product_id: str | None = None,
        ts: float | int | str | datetime | None = None,
        *,
        campaign_id: str | None = None,
        offer_id: str | None = None,
        opted_in: bool | None = None,
        source_id: str | None = None,
    ) -> None:
        """Record one posted event where it belongs: behaviour in the customer's (bounded) event
        history, `message_sent` in the contact ledger, `consent` among the consent changes.
        `customer_id` must be canonical (see `resolve`); `source_id`, another id of the same
        customer the event carried, is linked to it first."""
        self._check_event(customer_id, event_type, channel, product_id)
        if source_id is not None and source_id != customer_id:
            self.link_identities([(check_id(source_id, "source_id"), customer_id)])
        when = to_epoch(ts)
        if event_type == MESSAGE_SENT:
            self.record_contacts([Contact(customer_id, channel, when, "event", None, campaign_id, offer_id)])
        elif event_type == CONSENT:
            if not isinstance(opted_in, bool):
                raise ValueError(f"{c.OPTED_IN}: a consent event must say opted_in true or false")
            self.set_consent(customer_id, channel, opted_in, when)
        else:
            self._add_event(customer_id, event_type, channel, product_id, when)

    @abc.abstractmethod
    def _add_event(self, customer_id: str, event_type: str, channel: str, product_id, ts: float) -> None:
        """Store one behavioural event and trim the customer's history to the bounds."""

    @abc.abstractmethod
    def record_contacts(self, contacts: Iterable[Contact]) -> int:
        """Add contacts to the ledger in one transaction; returns how many."""

    @abc.abstractmethod
    def set_consent(self, customer_id: str, channel: str, opted_in: bool, ts: float) -> None:
        """Record an opt-in or opt-out; the latest by ts wins."""

    @abc.abstractmethod
    def decide_and_record(
        self, customer_id: str, decide: Callable[[LiveState], Contact | None]
    ) -> tuple[LiveState, Contact | None]:
        """Read the customer's state, call `decide` on it and record the contact it returns, with no
        other decision for this customer in between (on any worker or host): two concurrent commits
        cannot both pass a cap only one of them may use."""

    @abc.abstractmethod
    def ledger_fingerprints(self, customer_ids: Iterable[str]) -> dict[str, tuple]:
        """What a decision about each customer read (contacts, consent, purchases), as a value that
        changes when any of it changes; customers without rows are absent. Read it before the state
        a batch decides on, and hand it to `record_batch_contacts`."""

    @abc.abstractmethod
    def record_batch_contacts(
        self, contacts: Iterable[Contact], seen: dict[str, tuple]
    ) -> tuple[int, list[str]]:
        """A batch's contacts, written in one transaction with no contact, consent change or purchase
        of any customer written in between (on any worker or host), except for customers whose
        `ledger_fingerprints` are no longer `seen`: their contacts are not written (something
        changed since the batch read them: decide them again). Returns (contacts written, those
        customers, sorted)."""

    @abc.abstractmethod
    def link_identities(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Record (source_id, canonical customer_id) pairs (a loyalty card, an app device id, ...) in
        one transaction; a source id linked again follows its latest link. Returns how many."""

    @abc.abstractmethod
    def resolve(self, customer_id: str) -> str:
        """The canonical customer id of a canonical or source id (an unknown id is its own)."""

    def resolve_many(self, customer_ids: Iterable[str]) -> list[str]:
        """`resolve` of each id, in order."""
        return [self.resolve(x) for x in customer_ids]

    @abc.abstractmethod
    def set_stock(self, items: Iterable[tuple[str, bool]], ts: float | None = None) -> int:
        """Mark products in or out of stock (one transaction); returns how many rows changed."""

    @abc.abstractmethod
    def prune(self, now: float | int | str | datetime | None = None) -> int:
        """Delete events and contacts older than the age bound; returns rows deleted."""

    # -- reads --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def state(self, customer_id: str) -> LiveState:
        """What a decision about this customer must respect (contacts, last purchase, consent)."""

    @abc.abstractmethod
    def contacts(self, customer_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Ledger rows (CONTACT_COLUMNS; ts as UTC datetimes) of these customers, or of all."""

    @abc.abstractmethod
    def consent_changes(self, customer_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The latest consent change per (customer, channel): customer_id, channel, opted_in, updated_ts."""

    @abc.abstractmethod
    def last_purchases(self) -> pd.DataFrame:
        """customer_id, ts (UTC datetime) of each customer's newest purchase event."""

    @abc.abstractmethod
    def out_of_stock(self) -> frozenset[str]:
        """Products marked out of stock now (cheap to call per request: cached until stock changes)."""

    @abc.abstractmethod
    def _event_rows(self, customer_id: str, since: float, until: float | None, limit: int) -> list[tuple]:
        """(ts, event_type, channel, product_id) of a customer's events, newest first."""

    @abc.abstractmethod
    def _activity_rows(self, customer_ids: Iterable[str] | None, since: float, until: float) -> list[tuple]:
        """(customer_id, channel, kind, ts) of contacts (kind `SENT`) and opens or clicks (kind
        `ENGAGED`) with since <= ts <= until, of these customers or of all."""

    def message_activity(
        self,
        customer_ids: Iterable[str] | None = None,
        since: float | int | str | datetime | None = None,
        until: float | int | str | datetime | None = None,
    ) -> pd.DataFrame:
        """Messages sent (every contact in the ledger, wherever decided) and opens or clicks posted,
        from `since` (default: the start) to `until` (default: now): MESSAGE_ACTIVITY_COLUMNS, ts as
        UTC datetimes, oldest first. What channel and send time lay over what they were trained on."""
        start = -1e300 if since is None else to_epoch(since, "since")
        end = to_epoch(until, "until")
        ids = None if customer_ids is None else list(customer_ids)
        rows = [] if ids == [] else self._activity_rows(ids, start, end)
        frame = pd.DataFrame(rows, columns=list(MESSAGE_ACTIVITY_COLUMNS))
        frame[c.TS] = pd.to_datetime(frame[c.TS].astype("float64"), unit="s", utc=True)
        return frame.sort_values(c.TS, kind="stable").reset_index(drop=True)

    @abc.abstractmethod
    def purchased_since(self, customer_id: str, since: float | int | str | datetime) -> list[str]:
        """Products this customer bought at or after `since`, most recent first."""

    @abc.abstractmethod
    def count(self, customer_id: str | None = None) -> int:
        """Events held, for one customer or in all."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> LiveStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session_items(self, customer_id: str, now: float | int | str | datetime | None = None) -> list[str]:
        """Products still in play, most recent first (`session_from_rows`), deduplicated."""
        explicit = now is not None
        at = to_epoch(now, "now")
        rows = self._event_rows(
            customer_id, at - self.max_age_s, at if explicit else None, self.max_events_per_customer
        )
        return session_from_rows(rows, at, self.view_window_s)

    def recent(self, customer_id: str, limit: int = 20) -> list[dict]:
        """The newest events of a customer, newest first, as dicts (ts in epoch seconds)."""
        rows = self._event_rows(customer_id, -math.inf, None, max(0, int(limit)))
        return [{c.TS: ts, c.EVENT_TYPE: e, c.CHANNEL: ch, c.PRODUCT_ID: p} for ts, e, ch, p in rows]


def contacts_frame(rows: list[tuple]) -> pd.DataFrame:
    """CONTACT_COLUMNS from (customer_id, channel, ts epoch, source, action, campaign_id, offer_id) rows."""
    frame = pd.DataFrame(rows, columns=list(CONTACT_COLUMNS))
    frame[c.TS] = pd.to_datetime(frame[c.TS].astype("float64"), unit="s", utc=True)
    return frame
