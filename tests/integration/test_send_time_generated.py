"""The send-time model on the session's generated data: plans inside the horizon, outside quiet
hours, and a learned link from activity to engagement that points the right way."""

import pandas as pd

from features import columns as c
from models.engagement.send_time import SendTimeModel


def test_generated_data_plan(generated_tables):
    tables = generated_tables
    model = SendTimeModel(n_iter=6).fit(tables.events, tables.messages, tables.customers)
    ids = model.customer_ids_[:200]
    after = pd.Timestamp("2026-07-01 09:30", tz="UTC")
    plan = model.send_plan(ids, "email", after)
    assert len(plan) == len(ids) and plan["best_hour_local"].between(8, 20).all()
    local_hours = [t.tz_convert(z).hour for t, z in zip(plan["next_send_utc"], plan[c.TIMEZONE], strict=True)]
    assert all(8 <= h < 21 for h in local_hours)
    assert (plan["next_send_utc"] >= after).all() and (
        plan["next_send_utc"] < after + pd.Timedelta(days=7)
    ).all()
    # the learned link from activity to engagement points the right way
    assert model.coef_[0] > 0
