"""Plots of the channel and send-time step: heat maps of send-time grids, and the held-out
engagement rate by the rank of the channel used beside the reliability diagram. They need
matplotlib; without it the artefacts carry the plotted numbers as JSON instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features import columns as c
from models.engagement.local_time import HOURS
from models.engagement.send_time import SendTimeModel
from training.config import ChannelTrainingConfig


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def heatmap_customers(model: SendTimeModel, n: int) -> list[str]:
    """A few customers worth looking at: the ones with most activity and messages, then thin ones."""
    volume = model.n_active_ + model.n_messages_
    order = np.argsort(-volume, kind="stable")
    rich = [str(model.customer_ids_[i]) for i in order[: max(1, n - n // 2)]]
    thin = np.flatnonzero(model.fallback(model.customer_ids_))
    return rich + [str(model.customer_ids_[i]) for i in thin[: n // 2]]


def send_time_plots(model: SendTimeModel, config: ChannelTrainingConfig) -> dict[str, Any]:
    """Heat maps of the weekly grid: the population's mean and a few customers'."""
    channel = str(model.channels_[0]) if len(model.channels_) else None
    ids = heatmap_customers(model, config.heatmap_customers)
    population = model.score_grid(model.customer_ids_, channel).mean(axis=0)
    grids = {"population (mean)": population} | {
        f"{cid}{' (fallback)' if fb else ''}": g
        for cid, g, fb in zip(ids, model.score_grid(ids, channel), model.fallback(ids), strict=True)
    }
    plt = _pyplot()
    if plt is None:
        return {
            "send_time/heatmaps.json": {
                "channel": channel,
                "grids": {k: v.tolist() for k, v in grids.items()},
            }
        }
    return {"send_time/heatmaps.png": plot_send_time_heatmaps(grids, channel)}


def plot_send_time_heatmaps(grids: dict[str, np.ndarray], channel: str | None):
    """One 7 × 24 heat map per grid (rows Monday..Sunday, columns local hour)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(grids), 1, figsize=(10, 1.9 * len(grids) + 0.6), squeeze=False)
    for ax, (title, grid) in zip(axes[:, 0], grids.items(), strict=True):
        image = ax.imshow(np.asarray(grid).reshape(7, HOURS), aspect="auto", cmap="viridis")
        ax.set_yticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], fontsize=7)
        ax.set_xticks(range(0, HOURS, 2), [f"{h:02d}" for h in range(0, HOURS, 2)], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    fig.suptitle(f"send-time grid, P(engagement) by local slot ({channel or 'any channel'})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_channel_lift(data: dict[str, Any]):
    """Held-out engagement rate by the rank of the channel used, and the reliability diagram."""
    plt = _pyplot()
    if plt is None:
        return {
            "channel_lift": data.get("channel_lift"),
            "reliability": data.get("channel_engagement_reliability"),
        }
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    lift = pd.DataFrame(data["channel_lift"])
    labels = ["not ranked" if r == 0 else f"rank {r}" for r in lift[c.RANK]]
    left.bar(labels, lift["rate"], color="tab:blue")
    for i, (rate, n) in enumerate(zip(lift["rate"], lift["n"], strict=True)):
        left.text(i, rate, f"n={n}", ha="center", va="bottom", fontsize=7)
    left.set_ylabel("held-out engagement rate")
    left.set_title("messages by our rank of the channel they went out on", fontsize=9)
    reliability = data.get("channel_engagement_reliability")
    if reliability:
        table = pd.DataFrame(reliability)
        top = float(max(table["predicted"].max(), table["observed"].max()))
        right.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
        right.plot(table["predicted"], table["observed"], marker="o")
        right.set_xlabel("predicted engagement probability")
        right.set_ylabel("observed rate")
        right.set_title("calibration on held-out messages (deciles)", fontsize=9)
    fig.tight_layout()
    return fig
