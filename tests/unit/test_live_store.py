"""The live store (SQLite backend): one SQLite file in WAL mode shared by worker processes, bounded, surviving restarts."""

import multiprocessing as mp
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from features.live_store import EVENT_TYPES, Contact, open_live_store

T0 = 1_750_000_000.0  # a fixed "now" in epoch seconds


@pytest.fixture
def live_url(tmp_path):
    """`live_url(name)`: the URL of a store of this test's own (the same name, the same store).
    tests/integration/test_live_store_postgres.py runs these tests again on PostgreSQL."""
    return lambda name="live": f"sqlite:///{tmp_path / name}.db"


@pytest.fixture
def store(live_url):
    s = open_live_store(live_url())
    yield s
    s.close()


def _writer(url: str, worker: int, n: int, start, out) -> None:
    start.wait(30)
    store = open_live_store(url, max_events_per_customer=1000)
    for i in range(n):
        # both workers write the shared customer and one of their own, interleaved
        store.add("shared", "view", "web", f"W{worker}-P{i}", ts=T0 + i)
        store.add(f"own-{worker}", "add_to_cart", "app", f"P{i}", ts=T0 + i)
    out.put((worker, store.count("shared"), store.session_items(f"own-{1 - worker}", now=T0 + n)))
    store.close()


def test_two_processes_write_and_read_the_same_store(live_url):
    path = live_url()
    open_live_store(path).close()  # created up front, as the service does at start-up
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    n = 200
    procs = [ctx.Process(target=_writer, args=(path, w, n, start, out)) for w in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    with open_live_store(path, max_events_per_customer=1000) as store:
        assert store.count("shared") == 2 * n  # no write lost to a lock
        assert len(store.session_items("own-0", now=T0 + n)) == n
        assert len(store.session_items("own-1", now=T0 + n)) == n
        assert store.session_items("own-1", now=T0 + n)[0] == f"P{n - 1}"  # most recent first
    # each process could read the other's writes while running (at least the ones committed by then)
    assert all(count >= n for _, count, _ in results)


def test_sqlite_store_is_one_file_in_wal_mode(tmp_path):
    with open_live_store(f"sqlite:///{tmp_path / 'live.db'}"):
        pass
    with sqlite3.connect(tmp_path / "live.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_survives_reopen(live_url):
    path = live_url()
    with open_live_store(path) as store:
        store.add("C1", "add_to_cart", "app", "P1", ts=T0)
        store.add("C1", "view", "web", "P2", ts=T0 + 1)
    with open_live_store(path) as again:
        assert again.session_items("C1", now=T0 + 2) == ["P2", "P1"]
        assert [e["product_id"] for e in again.recent("C1", 10)] == ["P2", "P1"]


def test_bound_per_customer_keeps_the_newest(live_url):
    with open_live_store(live_url(), max_events_per_customer=5) as store:
        for i in range(20):
            store.add("C1", "view", "web", f"P{i}", ts=T0 + i)
        store.add("C2", "view", "web", "Q", ts=T0)
        assert store.count("C1") == 5
        assert store.count("C2") == 1  # other customers untouched
        assert [e["product_id"] for e in store.recent("C1", 100)] == [f"P{i}" for i in range(19, 14, -1)]
        # an event arriving late (older than the 5 newest) is dropped, not the newest ones
        store.add("C1", "view", "web", "late", ts=T0 - 100)
        assert "late" not in [e["product_id"] for e in store.recent("C1", 100)]
        assert store.count("C1") == 5


def test_bound_by_age(live_url):
    with open_live_store(live_url(), max_age_days=30) as store:
        store.add("C1", "add_to_cart", "app", "old", ts=T0)
        store.add("C1", "add_to_cart", "app", "new", ts=T0 + 31 * 86400)
        assert [e["product_id"] for e in store.recent("C1", 10)] == ["new"]
        store.add("C2", "view", "web", "P", ts=T0)
        assert store.prune(now=T0 + 31 * 86400) == 1
        assert store.count() == 1


def test_carted_then_purchased_leaves_session_and_enters_purchased_since(store):
    cutoff = T0 - 10
    store.add("C1", "view", "web", "P-view", ts=T0)
    store.add("C1", "add_to_cart", "app", "P-cart", ts=T0 + 1)
    store.add("C1", "add_to_cart", "app", "P-bought", ts=T0 + 2)
    assert store.session_items("C1", now=T0 + 3) == ["P-bought", "P-cart", "P-view"]
    store.add("C1", "purchase", "store", "P-bought", ts=T0 + 3)
    assert store.session_items("C1", now=T0 + 4) == ["P-cart", "P-view"]
    assert store.purchased_since("C1", since=cutoff) == ["P-bought"]
    assert store.purchased_since("C1", since=T0 + 4) == []  # bought before the cut-off: the model knows it
    store.add("C1", "remove_from_cart", "web", "P-cart", ts=T0 + 5)
    assert store.session_items("C1", now=T0 + 6) == ["P-view"]
    # viewed again after the purchase: back in the session
    store.add("C1", "view", "web", "P-bought", ts=T0 + 7)
    assert store.session_items("C1", now=T0 + 8) == ["P-bought", "P-view"]


def test_views_expire_but_carts_stay(store):
    store.add("C1", "add_to_cart", "app", "P-cart", ts=T0)
    store.add("C1", "view", "web", "P-view", ts=T0)
    store.add("C1", "view", "web", "P-view", ts=T0 + 1)  # duplicates collapse
    assert store.session_items("C1", now=T0 + 3600) == ["P-view", "P-cart"]
    assert store.session_items("C1", now=T0 + 2 * 86400) == ["P-cart"]
    assert store.session_items("nobody", now=T0) == []


def test_timestamps_accept_datetimes_and_iso_strings(store):
    when = datetime(2025, 6, 1, 12, tzinfo=UTC)
    store.add("C1", "purchase", "store", "P1", ts=when)
    store.add("C1", "purchase", "store", "P2", ts=(when + timedelta(hours=1)).isoformat())
    assert store.purchased_since("C1", since="2025-06-01T12:30:00Z") == ["P2"]
    assert store.purchased_since("C1", since=when) == ["P2", "P1"]
    store.add("C2", "message_open", "email")  # no ts: now; no product needed
    assert store.recent("C2", 1)[0]["event_type"] == "message_open"
    assert abs(store.recent("C2", 1)[0]["ts"] - time.time()) < 60


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"event_type": "teleport"}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": None}, "customer_id"),
        ({"channel": ""}, "channel"),
        ({"product_id": None}, "product_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": datetime(2025, 1, 1)}, "ts"),  # naive
        ({"ts": float("nan")}, "ts"),
    ],
)
def test_invalid_events_raise_value_error_naming_the_field(store, kwargs, field):
    event = {
        "customer_id": "C1",
        "event_type": "view",
        "channel": "web",
        "product_id": "P1",
        "ts": T0,
    } | kwargs
    with pytest.raises(ValueError, match=field):
        store.add(**event)
    assert store.count() == 0


def test_known_channels_can_be_enforced(live_url):
    with open_live_store(live_url(), channels=("web", "app")) as store:
        store.add("C1", "view", "web", "P1")
        with pytest.raises(ValueError, match="channel"):
            store.add("C1", "view", "fax", "P1")


def test_every_event_type_is_accepted(store):
    for i, event_type in enumerate(EVENT_TYPES):
        store.add("C1", event_type, "web", "P1", ts=T0 + i)
    assert store.count("C1") == len(EVENT_TYPES)


def test_add_and_session_items_are_fast_with_thousands_of_customers(store):
    for i in range(20_000):
        store.add(f"C{i % 4000}", "view", "web", f"P{i % 997}", ts=T0 + i)
    start = time.perf_counter()
    n = 500
    for i in range(n):
        store.add(f"C{i * 7 % 4000}", "add_to_cart", "app", "P-new", ts=T0 + 20_000 + i)
        store.session_items(f"C{i * 7 % 4000}", now=T0 + 20_000 + i)
    per_call_ms = (time.perf_counter() - start) / n * 1000
    assert per_call_ms < 1.0, per_call_ms


# -- the contact ledger, consent changes and stock ----------------------------------------------------
def test_message_sent_and_consent_events_go_to_the_ledger_and_consent(store):
    from features.live_store import Contact

    store.add("C1", "message_sent", "email", ts=T0, campaign_id="spring", offer_id="O1")
    store.record_contacts([Contact("C1", "sms", T0 + 60, source="batch", action="offer", offer_id="O2")])
    ledger = store.contacts(["C1"])
    assert ledger["channel"].tolist() == ["email", "sms"]
    assert ledger["source"].tolist() == ["event", "batch"] and ledger["campaign_id"].iloc[0] == "spring"
    assert store.count("C1") == 0  # not behaviour: no session context
    store.add("C1", "consent", "email", ts=T0, opted_in=False)
    store.add("C1", "consent", "email", ts=T0 - 10, opted_in=True)  # older: the latest change wins
    state = store.state("C1")
    assert state.consent == {"email": False} and len(state.contacts) == 2 and state.last_purchase is None
    store.add("C1", "purchase", "store", "P1", ts=T0 + 5)
    assert store.state("C1").last_purchase == T0 + 5
    assert store.contacts(["nobody"]).empty and len(store.contacts()) == 2
    with pytest.raises(ValueError, match="opted_in"):
        store.add("C1", "consent", "sms")


def test_stock_changes_are_seen_by_another_connection_at_once(live_url):
    path = live_url()
    with open_live_store(path) as writer, open_live_store(path) as reader:
        assert reader.out_of_stock() == frozenset()
        assert writer.set_stock([("P1", False), ("P2", False)]) == 2
        assert reader.out_of_stock() == {"P1", "P2"}
        writer.set_stock([("P1", True)])
        assert reader.out_of_stock() == {"P2"}
        with pytest.raises(ValueError, match="product_id"):
            writer.set_stock([("", False)])
        assert reader.out_of_stock() == {"P2"}  # nothing half-written


def _committer(url: str, n: int, start, out) -> None:
    from features.live_store import Contact

    start.wait(30)
    store = open_live_store(url)
    made = 0
    for _ in range(n):
        # the rule: at most one contact in all; without the lock two processes would both see none
        _, contact = store.decide_and_record(
            "shared", lambda state: None if state.contacts else Contact("shared", "email", T0, "decision")
        )
        made += contact is not None
    out.put(made)
    store.close()


def test_decide_and_record_lets_no_two_processes_use_the_same_room(live_url):
    path = live_url()
    open_live_store(path).close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_committer, args=(path, 50, start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    made = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(made) == 1
    with open_live_store(path) as store:
        assert len(store.contacts(["shared"])) == 1


def test_store_urls(tmp_path, monkeypatch):
    from features.live_store import open_live_store, store_url

    monkeypatch.delenv("OMNI_STORE_URL", raising=False)
    monkeypatch.delenv("OMNI_CONTEXT_DB", raising=False)
    assert store_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'context.db'}"
    with open_live_store(store_url(tmp_path)) as live:
        assert live.path == tmp_path.resolve() / "context.db"
    monkeypatch.setenv("OMNI_STORE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert store_url(tmp_path).endswith("other.db")
    for bad in ("just-a-path", "sqlite://", "mysql://host/db"):
        with pytest.raises(ValueError, match="OMNI_STORE_URL"):
            open_live_store(bad)


def test_identity_links_resolve_source_ids_and_follow_the_latest_link(store):
    assert store.link_identities([("L1", "C1"), ("D1", "C1"), ("C2", "C2")]) == 2  # an id is not its own link
    assert (
        store.resolve("L1") == "C1" and store.resolve("C1") == "C1" and store.resolve("unknown") == "unknown"
    )
    store.link_identities([("D1", "C3")])  # the device changed hands
    assert store.resolve_many(["D1", "L1", "x"]) == ["C3", "C1", "x"]
    store.add("C4", "view", "app", "P1", ts=T0, source_id="D9")  # an event carrying both ids
    assert store.resolve("D9") == "C4"
    with pytest.raises(ValueError, match="source_id"):
        store.link_identities([("", "C1")])


def test_message_activity_is_every_send_and_every_open_or_click(store):
    store.add("C1", "message_sent", "email", ts=T0, campaign_id="K1")
    store.add("C1", "message_open", "email", ts=T0 + 60)
    store.add("C1", "message_click", "email", ts=T0 + 90)
    store.add("C1", "view", "web", "P1", ts=T0 + 100)  # behaviour, not message activity
    store.add("C2", "message_open", "push", ts=T0 + 5)
    store.record_contacts([Contact("C1", "sms", T0 + 200, "decision", "offer")])
    every = store.message_activity()
    assert list(every.columns) == ["customer_id", "channel", "kind", "ts"]
    assert every[["customer_id", "channel", "kind"]].values.tolist() == [
        ["C1", "email", "sent"],
        ["C2", "push", "engaged"],
        ["C1", "email", "engaged"],
        ["C1", "email", "engaged"],
        ["C1", "sms", "sent"],
    ]
    assert str(every["ts"].dt.tz) == "UTC"
    one = store.message_activity(["C1"], since=T0 + 50, until=T0 + 100)
    assert one["kind"].tolist() == ["engaged", "engaged"]
    assert store.message_activity([]).empty
    assert store.message_activity(["nobody"]).empty


def test_a_batch_never_writes_over_what_changed_since_it_read_the_ledger(store):
    """A batch reads the ledger, decides, then writes: a customer contacted, opted out or buying in
    between gets no batch contact (decide again); the others' are written in one transaction."""
    store.add("C1", "message_sent", "email", ts=T0)
    store.set_consent("C2", "sms", True, T0)
    ids = ["C1", "C2", "C3", "C4", "C5"]
    seen = store.ledger_fingerprints(ids)
    assert set(seen) == {"C1", "C2"}  # customers without rows are absent
    assert store.ledger_fingerprints(ids) == seen  # reading changes nothing
    # meanwhile: a live contact for C1, an opt-out for C2, a purchase by C3; C4 only viewed
    store.record_contacts([Contact("C1", "push", T0 + 10, "decision", "reminder")])
    store.set_consent("C2", "sms", False, T0 + 11)
    store.add("C3", "purchase", "web", "P1", ts=T0 + 12)
    store.add("C4", "view", "web", "P2", ts=T0 + 13)
    batch = [Contact(cid, "sms", T0 + 3600, "batch", "offer") for cid in ids]
    written, changed = store.record_batch_contacts(batch, seen)
    assert (written, changed) == (2, ["C1", "C2", "C3"])
    ledger = store.contacts(ids)
    assert sorted(ledger.loc[ledger["source"] == "batch", "customer_id"]) == ["C4", "C5"]
    # decided again on what is there now: written
    again = store.ledger_fingerprints(changed)
    retry = [Contact(cid, "email", T0 + 7200, "batch", "offer") for cid in changed]
    assert store.record_batch_contacts(retry, again) == (3, [])
    assert store.record_batch_contacts([], {}) == (0, [])
