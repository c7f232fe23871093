"""The live store in PostgreSQL: one database shared by every worker of every service host.

The same tables, bounds and rules as the SQLite backend (`_sqlite.py`). Each process opens its own
connection (re-opened after a fork or when it broke), in autocommit mode for reads; every write is
one transaction committed before the call returns, so what a caller was told was stored survives a
killed worker. Writes about one customer first take a transaction-scoped advisory lock on the
customer (`pg_advisory_xact_lock` on a hash of the id): per-customer trimming never races, and
`decide_and_record` holds the lock from the read to the insert, so no two hosts decide for the same
customer at once. Every write also holds one ledger-wide advisory lock in shared mode, which a
batch's checked write (`record_batch_contacts`) takes exclusively: a batch's check that nothing
changed since it read the ledger and its insert see no write in between. psycopg 3 prepares statements a connection repeats, so a request's few reads
cost a round trip each.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from features import columns as c
from features.live_store._base import Contact, LiveState, check_id, to_epoch
from features.live_store._sql import SQLLiveStore

_SCHEMA_LOCK = 0x6F6D6E69  # "omni": serialises schema creation by processes starting together

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY,
    {c.CUSTOMER_ID} TEXT NOT NULL,
    {c.TS} DOUBLE PRECISION NOT NULL,
    {c.EVENT_TYPE} TEXT NOT NULL,
    {c.CHANNEL} TEXT NOT NULL,
    {c.PRODUCT_ID} TEXT
);
CREATE INDEX IF NOT EXISTS events_customer_ts ON events ({c.CUSTOMER_ID}, {c.TS});
CREATE TABLE IF NOT EXISTS contacts (
    id BIGSERIAL PRIMARY KEY,
    {c.CUSTOMER_ID} TEXT NOT NULL,
    {c.CHANNEL} TEXT NOT NULL,
    {c.TS} DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    action TEXT,
    {c.CAMPAIGN_ID} TEXT,
    {c.OFFER_ID} TEXT
);
CREATE INDEX IF NOT EXISTS contacts_customer_ts ON contacts ({c.CUSTOMER_ID}, {c.TS});
CREATE TABLE IF NOT EXISTS consent (
    {c.CUSTOMER_ID} TEXT NOT NULL,
    {c.CHANNEL} TEXT NOT NULL,
    {c.OPTED_IN} BOOLEAN NOT NULL,
    {c.UPDATED_TS} DOUBLE PRECISION NOT NULL,
    PRIMARY KEY ({c.CUSTOMER_ID}, {c.CHANNEL})
);
CREATE TABLE IF NOT EXISTS inventory (
    {c.PRODUCT_ID} TEXT PRIMARY KEY,
    in_stock BOOLEAN NOT NULL,
    {c.UPDATED_TS} DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_links (
    {c.SOURCE_ID} TEXT PRIMARY KEY,
    {c.CUSTOMER_ID} TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('inventory_version', 0) ON CONFLICT (key) DO NOTHING
"""

_LEDGER_LOCK = 0x6C656467  # "ledg": every write holds it shared; a batch's checked write, exclusive
_LOCK_SHARED = f"SELECT pg_advisory_xact_lock_shared({_LEDGER_LOCK})"
_LOCK_CUSTOMER = (
    f"SELECT pg_advisory_xact_lock_shared({_LEDGER_LOCK}), pg_advisory_xact_lock(hashtextextended(%s, 0))"
)
_LOCK_EXCLUSIVE = f"SELECT pg_advisory_xact_lock({_LEDGER_LOCK})"


class PostgresLiveStore(SQLLiveStore):
    """The live store in one PostgreSQL database, safe for many processes on many hosts."""

    PARAM = "%s"

    def __init__(
        self,
        url: str,
        max_events_per_customer: int = 100,
        max_age_days: float = 30,
        view_window_hours: float = 24,
        channels: tuple[str, ...] | None = None,
        connect_timeout_s: int = 10,
    ) -> None:
        super().__init__(max_events_per_customer, max_age_days, view_window_hours, channels)
        self.url = url
        self.connect_timeout_s = int(connect_timeout_s)
        self._lock = threading.RLock()
        self._conn = None
        self._pid: int | None = None
        self._stock: tuple[int, frozenset[str]] | None = None
        self._connection()  # connect and create the schema now: a wrong URL fails at start-up

    # -- connection ---------------------------------------------------------------------------------
    def _connection(self):
        import psycopg

        conn = self._conn
        if conn is not None and self._pid == os.getpid() and not conn.closed and not conn.broken:
            return conn
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            # the URL may hold a password: name the host and database only
            raise ConnectionError(
                f"OMNI_STORE_URL: cannot connect to the PostgreSQL live store: {exc}"
            ) from None
        self._conn, self._pid = conn, os.getpid()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
        return conn

    def _write(self, body: Callable[[object], object], customer_id: str | None = None) -> object:
        """`body(conn)` in one transaction (under the customer's lock when one is named)."""
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                # shared: writers of different customers run side by side, but none while a batch
                # checks and writes its contacts (`record_batch_contacts`)
                if customer_id is not None:
                    conn.execute(_LOCK_CUSTOMER, (customer_id,))
                else:
                    conn.execute(_LOCK_SHARED)
                return body(conn)

    def _write_excluding_all(self, body):
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute(_LOCK_EXCLUSIVE)
                return body(conn)

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
        def insert(conn) -> None:
            conn.execute(
                f"INSERT INTO events ({c.CUSTOMER_ID}, {c.TS}, {c.EVENT_TYPE}, {c.CHANNEL}, {c.PRODUCT_ID}) "
                "VALUES (%s, %s, %s, %s, %s)",
                (customer_id, ts, event_type, channel, product_id),
            )
            # keep the newest N, then nothing older than the age bound from the newest event
            conn.execute(
                f"DELETE FROM events WHERE {c.CUSTOMER_ID} = %(c)s AND ({c.TS}, id) < ("
                f"SELECT {c.TS}, id FROM events WHERE {c.CUSTOMER_ID} = %(c)s "
                f"ORDER BY {c.TS} DESC, id DESC LIMIT 1 OFFSET %(n)s)",
                {"c": customer_id, "n": self.max_events_per_customer - 1},
            )
            conn.execute(
                f"DELETE FROM events WHERE {c.CUSTOMER_ID} = %(c)s AND {c.TS} < ("
                f"SELECT MAX({c.TS}) FROM events WHERE {c.CUSTOMER_ID} = %(c)s) - %(age)s",
                {"c": customer_id, "age": self.max_age_s},
            )

        self._write(insert, customer_id)

    @staticmethod
    def _insert_contacts(conn, contacts: list[Contact]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO contacts ({c.CUSTOMER_ID}, {c.CHANNEL}, {c.TS}, source, action, "
                f"{c.CAMPAIGN_ID}, {c.OFFER_ID}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (k.customer_id, k.channel, k.ts, k.source, k.action, k.campaign_id, k.offer_id)
                    for k in contacts
                ],
            )

    def record_contacts(self, contacts: Iterable[Contact]) -> int:
        rows = list(contacts)
        for row in rows:
            self._check_channel(row.channel)
        if not rows:
            return 0
        # one contact (a message a channel system sent) waits for a decision in progress for the
        # customer; a batch's many customers are not locked one by one (the lock table is bounded)
        single = rows[0].customer_id if len({r.customer_id for r in rows}) == 1 else None
        self._write(lambda conn: self._insert_contacts(conn, rows), single)
        return len(rows)

    def set_consent(self, customer_id: str, channel: str, opted_in: bool, ts: float) -> None:
        check_id(customer_id, c.CUSTOMER_ID)
        self._check_channel(channel)
        when = to_epoch(ts)
        self._write(
            lambda conn: conn.execute(
                f"INSERT INTO consent ({c.CUSTOMER_ID}, {c.CHANNEL}, {c.OPTED_IN}, {c.UPDATED_TS}) "
                f"VALUES (%s, %s, %s, %s) ON CONFLICT ({c.CUSTOMER_ID}, {c.CHANNEL}) DO UPDATE SET "
                f"{c.OPTED_IN} = excluded.{c.OPTED_IN}, {c.UPDATED_TS} = excluded.{c.UPDATED_TS} "
                f"WHERE excluded.{c.UPDATED_TS} >= consent.{c.UPDATED_TS}",
                (customer_id, channel, bool(opted_in), when),
            ),
            customer_id,
        )

    def decide_and_record(self, customer_id, decide):
        check_id(customer_id, c.CUSTOMER_ID)

        def body(conn) -> tuple[LiveState, Contact | None]:
            state = self._state(conn, customer_id)
            contact = decide(state)
            if contact is not None:
                self._check_channel(contact.channel)
                self._insert_contacts(conn, [contact])
            return state, contact

        return self._write(body, customer_id)  # type: ignore[return-value]

    def link_identities(self, pairs) -> int:
        rows = [(check_id(s, c.SOURCE_ID), check_id(cid, c.CUSTOMER_ID)) for s, cid in pairs]
        # the last link of a source wins; sorted, so concurrent writers lock rows in one order (no deadlock)
        rows = sorted(dict((s, cid) for s, cid in rows if s != cid).items())
        if not rows:
            return 0

        def upsert(conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO identity_links ({c.SOURCE_ID}, {c.CUSTOMER_ID}) VALUES (%s, %s) "
                    f"ON CONFLICT ({c.SOURCE_ID}) DO UPDATE SET {c.CUSTOMER_ID} = excluded.{c.CUSTOMER_ID}",
                    rows,
                )

        self._write(upsert)
        return len(rows)

    def resolve_many(self, customer_ids) -> list[str]:
        ids = [str(x) for x in customer_ids]
        rows = self._read(
            f"SELECT {c.SOURCE_ID}, {c.CUSTOMER_ID} FROM identity_links WHERE {c.SOURCE_ID} = ANY(%s)", (ids,)
        )
        links = dict(rows)
        return [links.get(x, x) for x in ids]

    def set_stock(self, items, ts=None) -> int:
        rows = [(check_id(p, c.PRODUCT_ID), bool(s)) for p, s in items]
        # rows locked in one order by every writer (no deadlock); a stable sort: the last of a product wins
        rows.sort(key=lambda row: row[0])
        when = to_epoch(ts)

        def upsert(conn) -> int:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO inventory ({c.PRODUCT_ID}, in_stock, {c.UPDATED_TS}) VALUES (%s, %s, %s) "
                    f"ON CONFLICT ({c.PRODUCT_ID}) DO UPDATE SET in_stock = excluded.in_stock, "
                    f"{c.UPDATED_TS} = excluded.{c.UPDATED_TS}",
                    [(p, s, when) for p, s in rows],
                )
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'inventory_version'")
            return len(rows)

        return self._write(upsert)  # type: ignore[return-value]

    def prune(self, now=None) -> int:
        cutoff = to_epoch(now, "now") - self.max_age_s

        def delete(conn) -> int:
            events = conn.execute(f"DELETE FROM events WHERE {c.TS} < %s", (cutoff,)).rowcount
            contacts = conn.execute(f"DELETE FROM contacts WHERE {c.TS} < %s", (cutoff,)).rowcount
            return events + contacts

        return self._write(delete)  # type: ignore[return-value]

    # -- reads --------------------------------------------------------------------------------------
    @staticmethod
    def _where_customers(customer_ids) -> tuple[str, list]:
        if customer_ids is None:
            return "", []
        return f" WHERE {c.CUSTOMER_ID} = ANY(%s)", [[str(x) for x in customer_ids]]
