"""`omni decide`'s batch against a live store that changes while it decides: a customer contacted,
opted out or buying between the batch's read and its write is decided again, never sent what the
policy forbids."""

from __future__ import annotations

import pandas as pd
import pytest

from features.live_store import Contact, open_live_store
from training.live import LEDGER_CHANGED, MAX_DECIDE_ROUNDS, decide_batch

COOLDOWN = pd.Timedelta(hours=24)  # configs/contact_policy.toml: [cooldown] after_message_hours


@pytest.fixture(scope="module")
def engine(trained, tracking_uri):
    from training.scoring import load_champion_engine

    return load_champion_engine(tracking_uri, warn=lambda m: None)[0]


def _sends(decisions: pd.DataFrame) -> pd.DataFrame:
    return decisions.loc[decisions["action"] != "no_action"]


def _interfering(engine, store, when, rounds: int):
    """engine.decide that, in its first `rounds` calls, has a channel system contact the first
    customer it sends to just after the batch read the ledger (as a live commit would)."""
    decide, calls, hit = engine.decide, [0], []

    def interfering(ids, now, **kwargs):
        out = decide(ids, now, **kwargs)
        calls[0] += 1
        sends = _sends(out)
        if calls[0] <= rounds and len(sends):
            cid = hit[0] if hit else sends["customer_id"].iloc[0]
            hit[:1] = [cid]
            store.record_contacts([Contact(cid, "email", pd.Timestamp(now).timestamp(), "event")])
        return out

    return interfering, hit, calls


def test_a_customer_contacted_while_the_batch_decides_is_decided_again(engine, tmp_path, monkeypatch):
    when = pd.Timestamp("2026-08-03T09:00:00+00:00")
    with open_live_store(f"sqlite:///{tmp_path / 'live.db'}") as store:
        ids = engine.profiles_.frame_["customer_id"].astype(str).tolist()[:300]
        plain, _, _ = decide_batch(engine, store, ids, when, record=False)
        assert len(_sends(plain)) > 0
        fake, hit, calls = _interfering(engine, store, when, rounds=1)
        monkeypatch.setattr(engine, "decide", fake)
        decisions, recorded, redecided = decide_batch(engine, store, ids, when)
        assert calls[0] == 2 and redecided == 1  # one customer, decided once more
        assert decisions["customer_id"].tolist() == ids  # every customer once, in order
        again = decisions.set_index("customer_id").loc[hit[0]]
        # the second decision saw the live contact: no send inside its cooldown
        assert again["action"] == "no_action" or abs(again["send_at"] - when) >= COOLDOWN
        ledger = store.contacts(ids)
        batch = ledger.loc[ledger["source"] == "batch"]
        assert len(batch) == recorded == len(_sends(decisions))
        mine = ledger.loc[ledger["customer_id"] == hit[0]].sort_values("ts")
        assert (mine["ts"].diff().dropna() >= COOLDOWN).all()


def test_a_customer_whose_state_keeps_changing_gets_no_action_and_the_reason(engine, tmp_path, monkeypatch):
    """The customer's channel system re-confirms the opt-in to the channel the batch sends on
    (a consent change that changes no decision) in every round: after MAX_DECIDE_ROUNDS the batch
    gives up on them, writes nothing for them and says why."""
    when = pd.Timestamp("2026-08-03T09:00:00+00:00")
    with open_live_store(f"sqlite:///{tmp_path / 'live.db'}") as store:
        ids = engine.profiles_.frame_["customer_id"].astype(str).tolist()[:300]
        decide, calls, hit = engine.decide, [0], []

        def reconfirming(pending, now, **kwargs):
            out = decide(pending, now, **kwargs)
            calls[0] += 1
            sends = _sends(out)
            if not hit:
                hit.append(sends.iloc[0])
            store.set_consent(hit[0]["customer_id"], hit[0]["channel"], True, when.timestamp() + calls[0])
            return out

        monkeypatch.setattr(engine, "decide", reconfirming)
        decisions, recorded, redecided = decide_batch(engine, store, ids, when)
        cid = hit[0]["customer_id"]
        assert calls[0] == MAX_DECIDE_ROUNDS and redecided == MAX_DECIDE_ROUNDS - 1
        row = decisions.set_index("customer_id").loc[cid]
        assert row["action"] == "no_action" and list(row["reasons"]) == [LEDGER_CHANGED]
        assert pd.isna(row["send_at"]) and row["channel"] is None and list(row["product_ids"]) == []
        assert (store.contacts([cid])["source"] != "batch").all()  # nothing written for them
        assert recorded == len(_sends(decisions)) == len(store.contacts(ids))
