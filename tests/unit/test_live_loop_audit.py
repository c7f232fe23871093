"""bench/live_loop.py's audit finds what it is there to find: a committed decision too close to
another or to a message acknowledged before it, one on a channel opted out of before it was asked,
an acknowledged event or a committed answer missing from the store."""

import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from live_loop import Record, audit  # noqa: E402

from features.live_store import Contact, open_live_store  # noqa: E402

T = datetime(2026, 9, 2, 10, tzinfo=UTC).timestamp()
HOUR = 3600.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _store_with(url: str, decisions: list[tuple[str, str, float]]) -> None:
    with open_live_store(url) as store:
        store.record_contacts(
            Contact(c, ch, ts, source="decision", action="offer") for c, ch, ts in decisions
        )
        store.add("E1", "view", "web", "P-kept", ts=T)


def test_a_clean_run_has_nothing_to_report(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    _store_with(url, [("A", "email", T), ("A", "sms", T + 30 * HOUR)])
    record = Record(
        events=[("E1", "P-kept")],
        decisions=[("A", "email", _iso(T), 10.0), ("A", "sms", _iso(T + 30 * HOUR), 11.0)],
        messages=[("A", "push", T + 2 * HOUR, 12.0)],  # acknowledged after both decisions were asked
        opt_outs=[("A", "email", 20.0)],  # after the e-mail decision was asked
    )
    found = audit(record, url, urls=[])
    assert found == {
        "events_lost_after_kill": 0,
        "decisions_committed": 2,
        "committed_answers_missing_from_store": 0,
        "cap_or_cooldown_violations": 0,
        "consent_violations": 0,
    }


def test_every_kind_of_breach_is_counted(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    _store_with(url, [("A", "email", T), ("A", "sms", T + 2 * HOUR), ("B", "email", T)])
    record = Record(
        events=[("E1", "P-kept"), ("E1", "P-lost")],
        decisions=[
            ("A", "email", _iso(T), 10.0),
            ("A", "sms", _iso(T + 2 * HOUR), 11.0),  # 2 h after another decision: both break it
            ("B", "email", _iso(T), 30.0),  # a message acknowledged at 20 lies 1 h away
            ("C", "push", _iso(T), 40.0),  # answered as committed, not in the store
        ],
        messages=[("B", "sms", T + HOUR, 20.0)],
        opt_outs=[("B", "email", 25.0)],  # acknowledged before B's decision was asked
    )
    found = audit(record, url, urls=[])
    assert found["events_lost_after_kill"] == 1
    assert found["committed_answers_missing_from_store"] == 1
    assert found["cap_or_cooldown_violations"] == 3
    assert found["consent_violations"] == 1
