"""The live store in one SQLite file in WAL mode, shared by every worker of one host (the default).

Each process opens its own connection (re-opened after a fork), writes are one short
`BEGIN IMMEDIATE` transaction, readers never block writers (WAL), and `busy_timeout` absorbs the
brief write lock another worker may hold. WAL with `synchronous = NORMAL` keeps every committed
transaction across a killed process (not across a power cut of the host). Events are bounded per
customer (newest kept) and by age; contacts by age; the file survives restarts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import pandas as pd

from features import columns as c
from features.live_store._base import Contact, LiveState, check_id, to_epoch
from features.live_store._sql import SQLLiveStore

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
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY,
    {c.CUSTOMER_ID} TEXT NOT NULL,
    {c.CHANNEL} TEXT NOT NULL,
    {c.TS} REAL NOT NULL,
    source TEXT NOT NULL,
    action TEXT,
    {c.CAMPAIGN_ID} TEXT,
    {c.OFFER_ID} TEXT
);
CREATE INDEX IF NOT EXISTS contacts_customer_ts ON contacts ({c.CUSTOMER_ID}, {c.TS});
CREATE TABLE IF NOT EXISTS consent (
    {c.CUSTOMER_ID} TEXT NOT NULL,
    {c.CHANNEL} TEXT NOT NULL,
    {c.OPTED_IN} INTEGER NOT NULL,
    {c.UPDATED_TS} REAL NOT NULL,
    PRIMARY KEY ({c.CUSTOMER_ID}, {c.CHANNEL})
);
CREATE TABLE IF NOT EXISTS inventory (
    {c.PRODUCT_ID} TEXT PRIMARY KEY,
    in_stock INTEGER NOT NULL,
    {c.UPDATED_TS} REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_links (
    {c.SOURCE_ID} TEXT PRIMARY KEY,
    {c.CUSTOMER_ID} TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('inventory_version', 0)
"""


class SQLiteLiveStore(SQLLiveStore):
    """The live store in one SQLite file, safe for several processes and threads of one host."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_events_per_customer: int = 100,
        max_age_days: float = 30,
        view_window_hours: float = 24,
        busy_timeout_ms: int = 5_000,
        channels: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(max_events_per_customer, max_age_days, view_window_hours, channels)
        self.path = Path(path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._stock: tuple[int, frozenset[str]] | None = None  # (inventory_version, out of stock)
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
        self._conn, self._pid = conn, os.getpid()
        self._write(lambda db: [db.execute(s) for s in filter(str.strip, _SCHEMA.split(";"))])
        return conn

    def _write(self, body: Callable[[sqlite3.Connection], object]) -> object:
        """`body(conn)` in one `BEGIN IMMEDIATE` transaction: all of it is committed, or none."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return out

    def _write_excluding_all(self, body):
        return self._write(body)  # BEGIN IMMEDIATE: SQLite's one write lock already excludes every writer

    def _read(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = self._pid = None

    # -- writes -------------------------------------------------------------------------------------
    def _add_event(self, customer_id, event_type, channel, product_id, ts) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO events ({c.CUSTOMER_ID}, {c.TS}, {c.EVENT_TYPE}, {c.CHANNEL}, {c.PRODUCT_ID}) "
                "VALUES (?, ?, ?, ?, ?)",
                (customer_id, ts, event_type, channel, product_id),
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

        self._write(insert)

    @staticmethod
    def _insert_contacts(conn: sqlite3.Connection, contacts: list[Contact]) -> None:
        conn.executemany(
            f"INSERT INTO contacts ({c.CUSTOMER_ID}, {c.CHANNEL}, {c.TS}, source, action, "
            f"{c.CAMPAIGN_ID}, {c.OFFER_ID}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (k.customer_id, k.channel, k.ts, k.source, k.action, k.campaign_id, k.offer_id)
                for k in contacts
            ],
        )

    def record_contacts(self, contacts: Iterable[Contact]) -> int:
        rows = list(contacts)
        for row in rows:
            self._check_channel(row.channel)
        if rows:
            self._write(lambda conn: self._insert_contacts(conn, rows))
        return len(rows)

    def set_consent(self, customer_id: str, channel: str, opted_in: bool, ts: float) -> None:
        check_id(customer_id, c.CUSTOMER_ID)
        self._check_channel(channel)
        when = to_epoch(ts)
        # the latest change wins, whatever order the channel systems post them in
        self._write(
            lambda conn: conn.execute(
                f"INSERT INTO consent ({c.CUSTOMER_ID}, {c.CHANNEL}, {c.OPTED_IN}, {c.UPDATED_TS}) "
                f"VALUES (?, ?, ?, ?) ON CONFLICT ({c.CUSTOMER_ID}, {c.CHANNEL}) DO UPDATE SET "
                f"{c.OPTED_IN} = excluded.{c.OPTED_IN}, {c.UPDATED_TS} = excluded.{c.UPDATED_TS} "
                f"WHERE excluded.{c.UPDATED_TS} >= consent.{c.UPDATED_TS}",
                (customer_id, channel, int(bool(opted_in)), when),
            )
        )

    def decide_and_record(self, customer_id, decide):
        check_id(customer_id, c.CUSTOMER_ID)

        def body(conn: sqlite3.Connection) -> tuple[LiveState, Contact | None]:
            # the write lock is held from the read to the insert: no other worker decides in between
            state = self._state(conn, customer_id)
            contact = decide(state)
            if contact is not None:
                self._check_channel(contact.channel)
                self._insert_contacts(conn, [contact])
            return state, contact

        return self._write(body)  # type: ignore[return-value]

    def link_identities(self, pairs) -> int:
        rows = [(check_id(s, c.SOURCE_ID), check_id(cid, c.CUSTOMER_ID)) for s, cid in pairs]
        rows = [(s, cid) for s, cid in rows if s != cid]
        if rows:
            self._write(
                lambda conn: conn.executemany(
                    f"INSERT INTO identity_links ({c.SOURCE_ID}, {c.CUSTOMER_ID}) VALUES (?, ?) "
                    f"ON CONFLICT ({c.SOURCE_ID}) DO UPDATE SET {c.CUSTOMER_ID} = excluded.{c.CUSTOMER_ID}",
                    rows,
                )
            )
        return len(rows)

    def set_stock(self, items, ts=None) -> int:
        rows = [(check_id(p, c.PRODUCT_ID), int(bool(s))) for p, s in items]
        when = to_epoch(ts)

        def upsert(conn: sqlite3.Connection) -> int:
            conn.executemany(
                f"INSERT INTO inventory ({c.PRODUCT_ID}, in_stock, {c.UPDATED_TS}) VALUES (?, ?, ?) "
                f"ON CONFLICT ({c.PRODUCT_ID}) DO UPDATE SET in_stock = excluded.in_stock, "
                f"{c.UPDATED_TS} = excluded.{c.UPDATED_TS}",
                [(p, s, when) for p, s in rows],
            )
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'inventory_version'")
            return len(rows)

        return self._write(upsert)  # type: ignore[return-value]

    def prune(self, now: float | int | str | datetime | None = None) -> int:
        cutoff = to_epoch(now, "now") - self.max_age_s

        def delete(conn: sqlite3.Connection) -> int:
            events = conn.execute(f"DELETE FROM events WHERE {c.TS} < ?", (cutoff,)).rowcount
            contacts = conn.execute(f"DELETE FROM contacts WHERE {c.TS} < ?", (cutoff,)).rowcount
            return events + contacts

        return self._write(delete)  # type: ignore[return-value]

    # -- reads --------------------------------------------------------------------------------------
    def _where_customers(self, customer_ids: Iterable[str] | None) -> tuple[str, list[str]]:
        if customer_ids is None:
            return "", []
        ids = [str(x) for x in customer_ids]
        # a temporary list would be faster for huge audiences; batches pass at most a few 100k ids
        return f" WHERE {c.CUSTOMER_ID} IN (SELECT value FROM json_each(?))", [
            pd.Series(ids).to_json(orient="values")
        ]
