"""The training run's engagement plots: one colour scale for every heat map, panels titled by what
they show and never by a customer id, rates drawn with their intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from models.engagement.send_time import SendTimeModel
from training.channel_plots import _wilson, plot_channel_lift, send_time_plots
from training.config import ChannelTrainingConfig


def _model() -> SendTimeModel:
    start = pd.Timestamp("2026-01-05", tz="UTC")
    rows = [
        (f"K{i:03d}", start + pd.Timedelta(days=2 * d, hours=6 + i % 14))
        for i in range(30)
        for d in range(i % 6 + 1)
    ]
    events = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.TS])
    events[c.TS] = events[c.TS].dt.as_unit("us")
    events[c.CHANNEL], events[c.EVENT_TYPE] = "web", "view"
    return SendTimeModel().fit(events, None, None)


def test_heat_maps_share_one_colour_scale_and_name_no_customer():
    model = _model()
    fig = send_time_plots(model, ChannelTrainingConfig())["send_time/heatmaps.png"]
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) >= 3 and len({im.get_clim() for im in images}) == 1
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert not any(cid in titles for cid in model.customer_ids_)
    assert "all customers (mean)" in titles and "active hours" in titles


def test_rates_carry_their_intervals():
    low, high = _wilson(np.array([0, 30, 10]), np.array([10, 100, 10]))
    assert abs(low[0]) < 1e-12 and low[1] < 0.3 < high[1] and abs(high[2] - 1.0) < 1e-12
    data = {
        "channel_lift": {"rank": [0, 1], "rate": [0.1, 0.3], "n": [50, 400]},
        "channel_engagement_reliability": {"predicted": [0.1, 0.4], "observed": [0.12, 0.45], "n": [90, 90]},
    }
    fig = plot_channel_lift(data)
    left, right = fig.axes
    assert any(len(col.get_segments()) == 2 for col in left.collections)  # the bars' error bars
    assert right.containers and right.containers[0].has_yerr  # the reliability points' intervals
