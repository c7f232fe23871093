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


def _wilson(successes: np.ndarray, n: np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson interval of binomial rates (well behaved at 0 and 1 and for small n)."""
    n = np.maximum(np.asarray(n, dtype=float), 1.0)
    rate = np.asarray(successes, dtype=float) / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def send_time_plots(model: SendTimeModel, config: ChannelTrainingConfig) -> dict[str, Any]:
    """Heat maps of the weekly grid: the population's mean and a few customers', titled by what
    they show (how much history), never by a customer id."""
    channel = str(model.channels_[0]) if len(model.channels_) else None
    ids = heatmap_customers(model, config.heatmap_customers)
    population = model.score_grid(model.customer_ids_, channel).mean(axis=0)
    rows = model.customer_index_
    grids = {"all customers (mean)": population}
    for i, (cid, grid, thin) in enumerate(
        zip(ids, model.score_grid(ids, channel), model.fallback(ids), strict=True), start=1
    ):
        row = rows[cid]
        history = f"{int(model.n_active_[row])} active hours, {int(model.n_messages_[row])} messages"
        kind = "thin history, falls back to its segment" if thin else "long history"
        grids[f"customer {i}: {kind} ({history})"] = grid
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
    """One 7 × 24 heat map per grid (rows Monday..Sunday, columns local hour), all on one colour
    scale with one colour bar, so that panels compare."""
    plt = _pyplot()
    values = np.concatenate([np.asarray(g, dtype=float).ravel() for g in grids.values()])
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    fig, axes = plt.subplots(len(grids), 1, figsize=(10, 1.9 * len(grids) + 0.6), squeeze=False)
    image = None
    for ax, (title, grid) in zip(axes[:, 0], grids.items(), strict=True):
        image = ax.imshow(
            np.asarray(grid).reshape(7, HOURS), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax
        )
        ax.set_yticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], fontsize=7)
        ax.set_xticks(range(0, HOURS, 2), [f"{h:02d}" for h in range(0, HOURS, 2)], fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"send-time grid, P(engagement) by local slot ({channel or 'any channel'})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    bar_axes = fig.add_axes((0.93, 0.1, 0.015, 0.8))
    fig.colorbar(image, cax=bar_axes, label="P(engagement), one scale for every panel")
    return fig


def plot_channel_lift(data: dict[str, Any]):
    """Held-out engagement rate by the rank of the channel used, and the reliability diagram, each
    rate with its 95 % (Wilson) interval."""
    plt = _pyplot()
    if plt is None:
        return {
            "channel_lift": data.get("channel_lift"),
            "reliability": data.get("channel_engagement_reliability"),
        }
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    lift = pd.DataFrame(data["channel_lift"])
    labels = ["not ranked" if r == 0 else f"rank {r}" for r in lift[c.RANK]]
    rate, n = lift["rate"].to_numpy(float), lift["n"].to_numpy(float)
    low, high = _wilson(rate * n, n)
    left.bar(labels, rate, color="tab:blue", yerr=[rate - low, high - rate], capsize=4, ecolor="black")
    for i, (value, count) in enumerate(zip(high, lift["n"], strict=True)):
        left.text(i, value, f"n={count}", ha="center", va="bottom", fontsize=7)
    left.set_ylabel("held-out engagement rate (95 % interval)")
    left.set_title("messages by our rank of the channel they went out on", fontsize=9)
    reliability = data.get("channel_engagement_reliability")
    if reliability:
        table = pd.DataFrame(reliability)
        observed = table["observed"].to_numpy(float)
        top = float(max(table["predicted"].max(), table["observed"].max()))
        right.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
        if "n" in table:
            low, high = _wilson(observed * table["n"].to_numpy(float), table["n"].to_numpy(float))
            right.errorbar(
                table["predicted"], observed, yerr=[observed - low, high - observed], marker="o", capsize=3
            )
        else:
            right.plot(table["predicted"], observed, marker="o")
        right.set_xlabel("predicted engagement probability")
        right.set_ylabel("observed rate (95 % interval)")
        right.set_title("calibration on held-out messages (deciles)", fontsize=9)
    fig.tight_layout()
    return fig
