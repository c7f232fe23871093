"""Customer profiles on the session's generated data: the churn and spend forecasts are fitted on a
time split, score above chance, and fit the same models on a thread pool as one at a time."""

import numpy as np
import pandas as pd

from models.decisions.profile import CustomerProfiles


def test_forecast_models_use_a_time_split(generated_tables):
    tables = generated_tables
    profiles = CustomerProfiles(n_estimators=50).fit(tables)
    metrics = profiles.forecast_metrics_
    assert pd.Timestamp(metrics["split_time"]) == profiles.as_of_ - pd.Timedelta(days=90)
    assert metrics["churn_auc"] > 0.6
    risk = profiles.frame_["churn_risk"]
    assert risk.between(0, 1).all() and profiles.frame_["predicted_spend_90d"].ge(0).all()
    # customers who bought recently are less likely to churn than the dormant
    by_segment = profiles.frame_.groupby("segment")["churn_risk"].mean()
    assert by_segment["dormant"] > by_segment["champion"]
    # the four forecast fits run on a thread pool by default: one at a time gives the same models
    serial = CustomerProfiles(n_estimators=50, fit_workers=1).fit(tables)
    assert serial.forecast_metrics_ == metrics
    for col in ("churn_risk", "predicted_spend_90d"):
        np.testing.assert_array_equal(serial.frame_[col].to_numpy(), profiles.frame_[col].to_numpy())
