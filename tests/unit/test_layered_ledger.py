"""The fitted contact ledger with the live store's rows laid over it: the same answers as one ledger
holding both, without copying the fitted one."""

import numpy as np
import pandas as pd

from models.decisions.contact_policy import ContactLedger, LayeredLedger
from models.timestamps import to_us

T = pd.Timestamp("2026-07-01 09:00", tz="UTC")


def _ledger(rows):
    ledger = ContactLedger()
    ledger.record([r[0] for r in rows], [r[1] for r in rows], pd.to_datetime([r[2] for r in rows], utc=True))
    return ledger


def test_layered_answers_equal_one_ledger_holding_both():
    base_rows = [("A", "email", T - pd.Timedelta(hours=30)), ("B", "sms", T - pd.Timedelta(hours=2))]
    live_rows = [("A", "sms", T - pd.Timedelta(hours=3)), ("C", "email", T + pd.Timedelta(hours=5))]
    base = _ledger(base_rows)
    base.last_purchase_ = pd.Series(to_us(pd.Series([T - pd.Timedelta(days=3)])), index=["A"])
    live = pd.DataFrame(live_rows, columns=["customer_id", "channel", "ts"])
    purchases = pd.DataFrame({"customer_id": ["A", "C"], "ts": [T - pd.Timedelta(hours=1), T]})
    layered = LayeredLedger(base, contacts=live, last_purchases=purchases)
    both = _ledger(base_rows + live_rows)
    ids = np.array(["A", "B", "C", "D"], dtype=object)
    now = np.full(4, int(to_us(pd.Series([T]))[0]))
    for hours in (24, 168):
        for channel in (None, "email", "sms"):
            np.testing.assert_array_equal(
                layered.count_near(ids, now, hours, channel), both.count_near(ids, now, hours, channel)
            )
    np.testing.assert_array_equal(layered.last_contact_before(ids, now), both.last_contact_before(ids, now))
    last = layered.last_purchase(ids)
    assert last[0] == to_us(pd.Series([T - pd.Timedelta(hours=1)]))[0]  # the live purchase is newer
    assert last[2] == to_us(pd.Series([T]))[0] and last[3] == np.iinfo(np.int64).min
    assert len(layered.contacts()) == 4
    layered.record(["D"], ["push"], pd.to_datetime([T], utc=True))
    assert layered.count_near(ids, now, 24)[3] == 1 and len(base.contacts()) == 2  # the base is untouched


def test_consent_changes_override_the_trained_consent():
    consent = pd.DataFrame(
        {"customer_id": ["A", "B"], "channel": ["email", "sms"], "opted_in": [False, True]}
    )
    layered = LayeredLedger(ContactLedger(), consent=consent)
    trained = np.array([[True, False], [False, False], [True, True]])
    out = layered.consent_matrix(np.array(["A", "B", "C"], dtype=object), ("email", "sms"), trained)
    np.testing.assert_array_equal(out, [[False, False], [False, True], [True, True]])
    assert ContactLedger().consent_matrix(["A"], ("email",), trained[:1, :1]) is not None


def test_of_customer_is_the_base_itself_when_nothing_happened():
    base = ContactLedger()
    assert LayeredLedger.of_customer(base, "A", [], None, {}) is base
    layered = LayeredLedger.of_customer(base, "A", [("email", T.timestamp())], None, {"sms": False})
    assert isinstance(layered, LayeredLedger) and len(layered.contacts()) == 1
