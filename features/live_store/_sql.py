"""The reads both SQL backends answer with the same statements: only the parameter marker (`?` in
SQLite, `%s` in psycopg) and the way a list of customers is passed differ, and a backend says
those (`PARAM`, `_where_customers`) beside its connection (`_connection`, `_read`, `_lock`)."""

from __future__ import annotations

import abc
from collections.abc import Iterable

import pandas as pd

from features import columns as c
from features.live_store._base import (
    ENGAGED,
    ENGAGEMENT_EVENTS,
    SENT,
    LiveState,
    LiveStore,
    contacts_frame,
    to_epoch,
)


class SQLLiveStore(LiveStore):
    """A live store in a SQL database with the tables of `_sqlite.py` / `_postgres.py`."""

    PARAM = "?"  # the driver's parameter marker
    _stock: tuple[int, frozenset[str]] | None = None  # (inventory_version, out of stock)

    @abc.abstractmethod
    def _connection(self): ...

    @abc.abstractmethod
    def _read(self, sql: str, args: Iterable[object] = ()) -> list[tuple]: ...

    @abc.abstractmethod
    def _where_customers(self, customer_ids: Iterable[str] | None) -> tuple[str, list]:
        """(" WHERE customer_id in those", its arguments), or ("", []) for every customer."""

    def _sql(self, text: str) -> str:
        """`text` written with `?` markers, in this driver's marker."""
        return text if self.PARAM == "?" else text.replace("?", self.PARAM)

    def _state(self, conn, customer_id: str) -> LiveState:
        contacts = conn.execute(
            self._sql(f"SELECT {c.CHANNEL}, {c.TS} FROM contacts WHERE {c.CUSTOMER_ID} = ?"), (customer_id,)
        ).fetchall()
        bought = conn.execute(
            self._sql(
                f"SELECT {c.PRODUCT_ID}, {c.TS} FROM events WHERE {c.CUSTOMER_ID} = ? "
                f"AND {c.EVENT_TYPE} = 'purchase' ORDER BY {c.TS} DESC, id DESC"
            ),
            (customer_id,),
        ).fetchall()
        consent = conn.execute(
            self._sql(f"SELECT {c.CHANNEL}, {c.OPTED_IN} FROM consent WHERE {c.CUSTOMER_ID} = ?"),
            (customer_id,),
        ).fetchall()
        return LiveState(
            customer_id,
            contacts=[(ch, float(ts)) for ch, ts in contacts],
            last_purchase=float(bought[0][1]) if bought else None,
            consent={ch: bool(v) for ch, v in consent},
            purchased=list(dict.fromkeys(p for p, _ in bought)),
        )

    def _fingerprints(self, conn, customer_ids: Iterable[str]) -> dict[str, tuple]:
        """`ledger_fingerprints` read on `conn` (inside a transaction when writing)."""
        where, args = self._where_customers(customer_ids)
        purchases = " AND " if where else " WHERE "
        out: dict[str, list] = {}
        for cid, n in conn.execute(
            f"SELECT {c.CUSTOMER_ID}, COUNT(*) FROM contacts{where} GROUP BY {c.CUSTOMER_ID}", args
        ).fetchall():
            out.setdefault(cid, [0, (), 0])[0] = int(n)
        consent: dict[str, list] = {}
        for cid, channel, opted_in, ts in conn.execute(
            f"SELECT {c.CUSTOMER_ID}, {c.CHANNEL}, {c.OPTED_IN}, {c.UPDATED_TS} FROM consent{where}", args
        ).fetchall():
            consent.setdefault(cid, []).append((channel, bool(opted_in), float(ts)))
        for cid, rows in consent.items():
            out.setdefault(cid, [0, (), 0])[1] = tuple(sorted(rows))
        # trimming may lower the count: a false alarm at worst (the customer is decided again)
        for cid, n in conn.execute(
            f"SELECT {c.CUSTOMER_ID}, COUNT(*) FROM events{where}{purchases}{c.EVENT_TYPE} = 'purchase' "
            f"GROUP BY {c.CUSTOMER_ID}",
            args,
        ).fetchall():
            out.setdefault(cid, [0, (), 0])[2] = int(n)
        return {cid: tuple(v) for cid, v in out.items()}

    def ledger_fingerprints(self, customer_ids) -> dict[str, tuple]:
        with self._lock:
            return self._fingerprints(self._connection(), [str(x) for x in customer_ids])

    @abc.abstractmethod
    def _write_excluding_all(self, body):
        """`body(conn)` in one transaction that no other write of any customer interleaves with."""

    def record_batch_contacts(self, contacts, seen) -> tuple[int, list[str]]:
        rows = list(contacts)
        for row in rows:
            self._check_channel(row.channel)
        if not rows:
            return 0, []
        ids = sorted({r.customer_id for r in rows})

        def body(conn) -> tuple[int, list[str]]:
            now = self._fingerprints(conn, ids)
            changed = [cid for cid in ids if now.get(cid) != seen.get(cid)]
            gone = set(changed)
            keep = [r for r in rows if r.customer_id not in gone]
            if keep:
                self._insert_contacts(conn, keep)
            return len(keep), changed

        return self._write_excluding_all(body)

    def state(self, customer_id: str) -> LiveState:
        with self._lock:
            return self._state(self._connection(), customer_id)

    def resolve(self, customer_id: str) -> str:
        rows = self._read(
            self._sql(f"SELECT {c.CUSTOMER_ID} FROM identity_links WHERE {c.SOURCE_ID} = ?"), (customer_id,)
        )
        return rows[0][0] if rows else customer_id

    def contacts(self, customer_ids=None) -> pd.DataFrame:
        where, args = self._where_customers(customer_ids)
        rows = self._read(
            f"SELECT {c.CUSTOMER_ID}, {c.CHANNEL}, {c.TS}, source, action, {c.CAMPAIGN_ID}, {c.OFFER_ID} "
            f"FROM contacts{where} ORDER BY {c.TS}, id",
            args,
        )
        return contacts_frame(rows)

    def consent_changes(self, customer_ids=None) -> pd.DataFrame:
        where, args = self._where_customers(customer_ids)
        rows = self._read(
            f"SELECT {c.CUSTOMER_ID}, {c.CHANNEL}, {c.OPTED_IN}, {c.UPDATED_TS} FROM consent{where}", args
        )
        frame = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.CHANNEL, c.OPTED_IN, c.UPDATED_TS])
        frame[c.OPTED_IN] = frame[c.OPTED_IN].astype(bool)
        frame[c.UPDATED_TS] = pd.to_datetime(frame[c.UPDATED_TS].astype("float64"), unit="s", utc=True)
        return frame

    def last_purchases(self) -> pd.DataFrame:
        rows = self._read(
            f"SELECT {c.CUSTOMER_ID}, MAX({c.TS}) FROM events WHERE {c.EVENT_TYPE} = 'purchase' "
            f"GROUP BY {c.CUSTOMER_ID}"
        )
        frame = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.TS])
        frame[c.TS] = pd.to_datetime(frame[c.TS].astype("float64"), unit="s", utc=True)
        return frame

    def out_of_stock(self) -> frozenset[str]:
        with self._lock:
            conn = self._connection()
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'inventory_version'").fetchone()
            if self._stock is None or self._stock[0] != version:
                rows = conn.execute(f"SELECT {c.PRODUCT_ID} FROM inventory WHERE NOT in_stock").fetchall()
                self._stock = (version, frozenset(r[0] for r in rows))
            return self._stock[1]

    def _event_rows(self, customer_id, since, until, limit) -> list[tuple]:
        sql = (
            f"SELECT {c.TS}, {c.EVENT_TYPE}, {c.CHANNEL}, {c.PRODUCT_ID} FROM events "
            f"WHERE {c.CUSTOMER_ID} = ? AND {c.TS} >= ?"
        )
        # -inf ("from the start") as the lowest finite number: PostgreSQL binds no infinite float
        args: list[object] = [customer_id, max(since, -1e300)]
        if until is not None:
            sql += f" AND {c.TS} <= ?"
            args.append(until)
        sql += f" ORDER BY {c.TS} DESC, id DESC LIMIT ?"
        args.append(limit)
        return self._read(self._sql(sql), args)

    def _activity_rows(self, customer_ids, since, until) -> list[tuple]:
        where, args = self._where_customers(customer_ids)
        window = f"{c.TS} >= {self.PARAM} AND {c.TS} <= {self.PARAM}"
        joiner = " AND " if where else " WHERE "
        kinds = ", ".join(f"'{e}'" for e in ENGAGEMENT_EVENTS)
        return self._read(
            f"SELECT {c.CUSTOMER_ID}, {c.CHANNEL}, '{SENT}', {c.TS} FROM contacts{where}{joiner}{window} "
            f"UNION ALL SELECT {c.CUSTOMER_ID}, {c.CHANNEL}, '{ENGAGED}', {c.TS} FROM events{where}"
            f"{joiner}{window} AND {c.EVENT_TYPE} IN ({kinds})",
            [*args, since, until, *args, since, until],
        )

    def purchased_since(self, customer_id, since) -> list[str]:
        start = to_epoch(since, "since")
        rows = self._read(
            self._sql(
                f"SELECT {c.PRODUCT_ID} FROM events WHERE {c.CUSTOMER_ID} = ? AND {c.TS} >= ? "
                f"AND {c.EVENT_TYPE} = 'purchase' ORDER BY {c.TS} DESC, id DESC"
            ),
            (customer_id, start),
        )
        return list(dict.fromkeys(r[0] for r in rows))

    def count(self, customer_id: str | None = None) -> int:
        if customer_id is None:
            return self._read("SELECT COUNT(*) FROM events")[0][0]
        return self._read(
            self._sql(f"SELECT COUNT(*) FROM events WHERE {c.CUSTOMER_ID} = ?"), (customer_id,)
        )[0][0]
