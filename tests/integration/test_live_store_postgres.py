"""The live store's behaviour tests (tests/unit/test_live_store.py) again on PostgreSQL, on a real
server the session starts: each test on a database of its own."""

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_live_store import *  # noqa: E402, F403 (the same tests, collected here with this live_url)
from test_live_store import T0  # noqa: E402

# SQLite's own (one file, WAL) or about URLs of the working folder; and one timing assertion a
# server round trip is not held to (timing belongs in benchmarks)
del test_sqlite_store_is_one_file_in_wal_mode  # noqa: F821
del test_store_urls  # noqa: F821
del test_add_and_session_items_are_fast_with_thousands_of_customers  # noqa: F821


@pytest.fixture
def live_url(postgres_url):
    """`live_url(name)`: a fresh database on the session's server for this test (the same name,
    the same database)."""
    import psycopg

    made: dict[str, str] = {}

    def url(name: str = "live") -> str:
        if name not in made:
            database = f"t_{uuid.uuid4().hex[:16]}"
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {database}")
            made[name] = postgres_url.rsplit("/", 1)[0] + f"/{database}"
        return made[name]

    yield url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for database_url in made.values():
            conn.execute(f"DROP DATABASE IF EXISTS {database_url.rsplit('/', 1)[1]} WITH (FORCE)")


def test_a_wrong_address_is_a_clear_error_naming_the_setting(postgres_url):
    from features.live_store import open_live_store

    with pytest.raises(ConnectionError, match="OMNI_STORE_URL"):
        open_live_store(postgres_url.rsplit(":", 1)[0] + ":1/omni")


def test_two_hosts_see_one_ledger(live_url):
    """Two stores on one database (two hosts): a contact, a consent change, stock and a link
    written through one are read through the other at once."""
    from features.live_store import Contact, open_live_store

    url = live_url()
    with open_live_store(url) as a, open_live_store(url) as b:
        a.record_contacts([Contact("C1", "email", T0, source="decision", action="offer")])
        a.set_consent("C1", "sms", False, T0)
        a.set_stock([("P1", False)])
        a.link_identities([("L1", "C1")])
        state = b.state("C1")
        assert state.contacts == [("email", T0)] and state.consent == {"sms": False}
        assert b.out_of_stock() == {"P1"} and b.resolve("L1") == "C1"
        assert b.resolve_many(["L1", "x"]) == ["C1", "x"]


def test_postgres_scheme_is_accepted_too(live_url):
    from features.live_store import PostgresLiveStore, open_live_store

    with open_live_store(
        live_url().replace("postgresql://", "postgres://", 1), max_events_per_customer=3
    ) as store:
        assert isinstance(store, PostgresLiveStore) and store.max_events_per_customer == 3


def test_stock_written_in_opposite_orders_at_once_does_not_deadlock(live_url):
    """Two writers upserting the same products in opposite orders: rows are locked in one order."""
    from concurrent.futures import ThreadPoolExecutor

    from features.live_store import open_live_store

    url = live_url()
    items = [(f"P{i}", i % 2 == 0) for i in range(200)]

    def write(reverse: bool) -> None:
        with open_live_store(url) as store:
            for k in range(15):
                batch = [(p, s ^ bool(k % 2)) for p, s in items]
                store.set_stock(batch[::-1] if reverse else batch)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(write, r) for r in (False, True)]:
            done.result()  # re-raises a DeadlockDetected
    with open_live_store(url) as store:
        assert store.out_of_stock() == {p for p, s in items if not s}
