"""The live event context of each customer: one SQLite file in WAL mode, shared by every worker.

Channel systems post engagement events (a view on the web, a cart in the app, a purchase in the store,
an e-mail click) and the very next recommendation on any channel reads them back: carted and recently
viewed products become session context, products bought since the model's training cut-off are
excluded. Each process opens its own connection (re-opened after a fork), writes are one short
`BEGIN IMMEDIATE` transaction, readers never block writers (WAL), and `busy_timeout` absorbs the
brief write lock another worker may hold. The store is bounded per customer (newest events kept) and
by age; it survives restarts because it is an ordinary file.

Timestamps are stored as UTC epoch seconds (REAL). `ts` and `since` accept epoch seconds, an aware
`datetime` or an ISO-8601 string with an offset; naive times are refused, as in the data contract.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

from features import columns as c
from training.settings import work_dir

EVENT_TYPES: tuple[str, ...] = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "return",
    "message_open",
    "message_click",
)
# event types that are about one product and must name it
PRODUCT_EVENTS: frozenset[str] = frozenset({"view", "add_to_cart", "remove_from_cart", "purchase", "return"})
MAX_ID_LENGTH = 128
DAY = 86_400.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    {c.CUSTOMER_ID} TEXT NOT NULL,
    {c.TS} REAL NOT NULL,
    {c.EVENT_TYPE} TEXT NOT NULL,
    {c.CHANNEL} TEXT NOT NULL,
    {c.PRODUCT_ID} TEXT
);
CREATE INDEX IF NOT EXISTS events_customer_ts ON events ({c.CUSTOMER_ID}, {c.TS});
"""


def default_context_path() -> Path:
    """`<work dir>/context.db`: where the service keeps the event context unless told otherwise."""
    return work_dir() / "context.db"


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


def _check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(
            f"{field}: expected a non-empty string of at most {MAX_ID_LENGTH} characters, got {value!r}"
        )
    return value


class ContextStore:
    """Per-customer event context in one SQLite file, safe for several processes and threads."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        max_events_per_customer: int = 100,
        max_age_days: float = 30,
        view_window_hours: float = 24,
        busy_timeout_ms: int = 5_000,
        channels: tuple[str, ...] | None = None,
    ) -> None:
        if max_events_per_customer < 1:
            raise ValueError("max_events_per_customer: must be at least 1")
        if max_age_days <= 0:
            raise ValueError("max_age_days: must be positive")
        self.path = Path(path) if path is not None else default_context_path()
        self.max_events_per_customer = int(max_events_per_customer)
        self.max_age_s = float(max_age_days) * DAY
        self.view_window_s = float(view_window_hours) * 3600.0
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.channels = frozenset(channels) if channels else None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection()  # create the file and schema now, so a bad path fails at start-up

    # -- connection ---------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection; a connection inherited through fork() is never reused."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = self._pid = None

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------------

    def add(
        self,
        customer_id: str,
        event_type: str,
        channel: str,
        product_id: str | None = None,
        ts: float | int | str | datetime | None = None,
    ) -> None:
        """Record one event and trim this customer's history to the newest events within the age bound."""
        _check_id(customer_id, c.CUSTOMER_ID)
        if event_type not in EVENT_TYPES:
            raise ValueError(
                f"{c.EVENT_TYPE}: unknown event type {event_type!r}; expected one of {', '.join(EVENT_TYPES)}"
            )
        _check_id(channel, c.CHANNEL)
        if self.channels is not None and channel not in self.channels:
            raise ValueError(
                f"{c.CHANNEL}: unknown channel {channel!r}; expected one of {', '.join(sorted(self.channels))}"
            )
        if product_id is not None:
            _check_id(product_id, c.PRODUCT_ID)
        elif event_type in PRODUCT_EVENTS:
            raise ValueError(f"{c.PRODUCT_ID}: a {event_type} event must name the product")
        when = to_epoch(ts)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    f"INSERT INTO events ({c.CUSTOMER_ID}, {c.TS}, {c.EVENT_TYPE}, {c.CHANNEL}, {c.PRODUCT_ID}) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (customer_id, when, event_type, channel, product_id),
                )
                # keep the newest N: delete everything older than the N-th newest (ts, id)
                conn.execute(
                    f"DELETE FROM events WHERE {c.CUSTOMER_ID} = ?1 AND ({c.TS}, id) < ("
                    f"SELECT {c.TS}, id FROM events WHERE {c.CUSTOMER_ID} = ?1 "
                    f"ORDER BY {c.TS} DESC, id DESC LIMIT 1 OFFSET ?2)",
                    (customer_id, self.max_events_per_customer - 1),
                )
                # and nothing older than the age bound, measured from this customer's newest event
                conn.execute(
                    f"DELETE FROM events WHERE {c.CUSTOMER_ID} = ?1 AND {c.TS} < ("
                    f"SELECT MAX({c.TS}) FROM events WHERE {c.CUSTOMER_ID} = ?1) - ?2",
                    (customer_id, self.max_age_s),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def prune(self, now: float | int | str | datetime | None = None) -> int:
        """Delete every event older than the age bound (maintenance: customers who went quiet). Returns rows deleted."""
        cutoff = to_epoch(now, "now") - self.max_age_s
        with self._lock:
            cur = self._connection().execute(f"DELETE FROM events WHERE {c.TS} < ?", (cutoff,))
            return cur.rowcount

    # -- reads --------------------------------------------------------------------------------------

    def _rows(self, customer_id: str, since: float, until: float | None, limit: int) -> list[tuple]:
        sql = f"SELECT {c.TS}, {c.EVENT_TYPE}, {c.CHANNEL}, {c.PRODUCT_ID} FROM events WHERE {c.CUSTOMER_ID} = ? AND {c.TS} >= ?"
        args: list[object] = [customer_id, since]
        if until is not None:
            sql += f" AND {c.TS} <= ?"
            args.append(until)
        sql += f" ORDER BY {c.TS} DESC, id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def session_items(self, customer_id: str, now: float | int | str | datetime | None = None) -> list[str]:
        """Products still in play, most recent first: carted and not since removed or bought (within the age
        bound), and viewed within the view window and not bought since. Deduplicated."""
        explicit = now is not None
        at = to_epoch(now, "now")
        rows = self._rows(
            customer_id, at - self.max_age_s, at if explicit else None, self.max_events_per_customer
        )
        view_since = at - self.view_window_s
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

    def purchased_since(self, customer_id: str, since: float | int | str | datetime) -> list[str]:
        """Products this customer bought at or after `since` (e.g. the model's training cut-off), most recent first."""
        start = to_epoch(since, "since")
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {c.PRODUCT_ID} FROM events WHERE {c.CUSTOMER_ID} = ? AND {c.TS} >= ? "
                    f"AND {c.EVENT_TYPE} = 'purchase' ORDER BY {c.TS} DESC, id DESC",
                    (customer_id, start),
                )
                .fetchall()
            )
        return list(dict.fromkeys(r[0] for r in rows))

    def recent(self, customer_id: str, limit: int = 20) -> list[dict]:
        """The newest events of a customer, newest first, as dicts (ts in epoch seconds)."""
        rows = self._rows(customer_id, -math.inf, None, max(0, int(limit)))
        return [{c.TS: ts, c.EVENT_TYPE: e, c.CHANNEL: ch, c.PRODUCT_ID: p} for ts, e, ch, p in rows]

    def count(self, customer_id: str | None = None) -> int:
        """Events held, for one customer or in all."""
        with self._lock:
            conn = self._connection()
            if customer_id is None:
                return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return conn.execute(
                f"SELECT COUNT(*) FROM events WHERE {c.CUSTOMER_ID} = ?", (customer_id,)
            ).fetchone()[0]
