"""The report as one self-contained HTML page (`report.html`): the blocks of `training.report`
with their charts drawn into the page.

Every chart is drawn by matplotlib (its object API: no pyplot state, safe in any thread) as SVG and
embedded as a `data:` image, so the page needs no network, no file beside it and no script to show
its charts; text in the charts stays text (`svg.fonttype: none`). Heat maps use one colour scale
per map, with its colour bar; intervals are drawn as error bars. The page's one small script
checks, once the page has loaded, that every chart was decoded and laid out, and says so on the
page when one was not (and in `data-` attributes that the tests read).

No chart or table carries a customer id: only channels, months, segments, hours and model names.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from models.decisions.contact_policy import is_quiet_hour
from training.kpis import ALL_CHANNELS, ALL_MONTHS, WEEKDAYS
from training.lift import LiftResult
from training.report import Block, ReportContent, Segments, document, fmt_pct

MIN_CELL_MESSAGES = 20  # a send-time cell with fewer messages is left blank (its rate says nothing)
PALETTE = ("#1f5f8b", "#e07b39", "#3a9b5c", "#b8433f", "#7d5ba6", "#8c6d46", "#c9659c", "#6b6b6b")
SERVED_COLOUR, BASELINE_COLOUR = "#1f5f8b", "#b9c4cf"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    """The figure as SVG text (text kept as text, ids stable from one run to the next)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "omni-report"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _channel_colours(channels) -> dict[str, str]:
    return {ch: PALETTE[i % len(PALETTE)] for i, ch in enumerate(sorted(channels))}


# ------------------------------------------------------------------------------------------ charts
def chart_revenue_by_channel(content: ReportContent):
    table = content.kpis.get("revenue_by_channel")
    if table is None:
        return None
    per = table.loc[table["channel"] != ALL_CHANNELS].pivot(
        index="period", columns="channel", values="revenue"
    )
    per = per.fillna(0.0)
    colours = _channel_colours(per.columns)
    fig = _figure(9, 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(per))
    for channel in per.columns:
        ax.bar(per.index, per[channel], bottom=bottom, label=channel, color=colours[channel])
        bottom += per[channel].to_numpy()
    ax.set_ylabel("revenue")
    ax.set_title("Revenue by month and channel of purchase")
    ax.legend(ncols=min(len(per.columns), 6), fontsize=8, loc="upper left", frameon=False)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.margins(y=0.15)
    return fig


def chart_cohort_retention(content: ReportContent):
    table = content.kpis.get("cohort_retention")
    if table is None:
        return None
    months = [col for col in table.columns if col.startswith("month_")]
    values = table[months].to_numpy(dtype=float)
    fig = _figure(9, 0.8 + 0.32 * len(table))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(months)), [m.removeprefix("month_") for m in months], fontsize=8)
    ax.set_yticks(range(len(table)), table["cohort"], fontsize=8)
    ax.set_xlabel("months after the first order")
    ax.set_ylabel("cohort (month of first order)")
    ax.set_title("Share of each cohort ordering again, one colour scale (0-100%)")
    if values.size <= 400:
        for (row, col), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(
                    col,
                    row,
                    f"{value:.0%}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.6 else "#222222",
                )
    fig.colorbar(image, ax=ax, label="share of the cohort", format=lambda v, _: f"{v:.0%}")
    return fig


def chart_send_time(content: ReportContent):
    """Weekday × local hour on one colour scale: the open rate of messages sent then, or without
    messages the share of orders placed then; the contact policy's quiet hours hatched."""
    engagement = content.kpis.get("engagement_by_hour")
    if engagement is not None:
        values = engagement.pivot(index="weekday", columns="hour", values="open_rate")
        counts = engagement.pivot(index="weekday", columns="hour", values="messages")
        values = values.where(counts >= MIN_CELL_MESSAGES)
        label, title = "open rate", "Open rate by the customer's local hour and weekday of sending"
    else:
        activity = content.kpis.get("activity_by_hour")
        if activity is None:
            return None
        values = activity.pivot(index="weekday", columns="hour", values="order_share")
        label, title = "share of orders", "Orders by the customer's local hour and weekday"
    grid = values.reindex(index=range(7), columns=range(24)).to_numpy(dtype=float)
    fig = _figure(9, 3.4)
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = _cmap_with_blank("viridis")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(24), [f"{h:02d}" for h in range(24)], fontsize=8)
    ax.set_yticks(range(7), WEEKDAYS, fontsize=8)
    ax.set_xlabel("local hour")
    quiet = content.quiet_hours
    if quiet is not None:
        from matplotlib.patches import Rectangle

        hours = np.flatnonzero(is_quiet_hour(np.arange(24), quiet))
        for hour in hours:
            ax.add_patch(
                Rectangle((hour - 0.5, -0.5), 1, 7, fill=False, hatch="///", edgecolor="#d62728", linewidth=0)
            )
        if len(hours):
            ax.add_patch(
                Rectangle(
                    (0, 0),
                    0,
                    0,
                    fill=False,
                    hatch="///",
                    edgecolor="#d62728",
                    label=f"quiet hours {quiet[0]:02d}:00-{quiet[1]:02d}:00 (no sends)",
                )
            )
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, frameon=False)
    if engagement is not None:
        title += f" (blank: fewer than {MIN_CELL_MESSAGES} messages)"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label, format=lambda v, _: f"{v:.0%}" if high > 0.02 else f"{v:.1%}")
    return fig


def _cmap_with_blank(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#eeeeee")


def chart_cross_channel_value(content: ReportContent):
    table = content.kpis.get("cross_channel_value")
    if table is None:
        return None
    fig = _figure(6, 3)
    ax = fig.add_subplot()
    colours = [BASELINE_COLOUR if g.startswith("cross") else SERVED_COLOUR for g in table["group"]]
    bars = ax.bar(table["group"], table["revenue_per_customer"], color=colours)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in table["revenue_per_customer"]], fontsize=8)
    ax.set_ylabel("revenue per customer")
    ax.set_title("Customers by the number of channels they buy in")
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(y=0.15)
    return fig


def chart_top_journeys(content: ReportContent):
    table = content.kpis.get("top_journeys")
    if table is None:
        return None
    labels = [f"{a} → {b}" for a, b in zip(table["first_touch"], table["purchase_channel"], strict=True)]
    fig = _figure(8, 0.7 + 0.34 * len(table))
    ax = fig.add_subplot()
    bars = ax.barh(labels[::-1], table["orders"].to_numpy()[::-1], color=SERVED_COLOUR)
    ax.bar_label(
        bars, labels=[fmt_pct(v) for v in table["order_share"].to_numpy()[::-1]], fontsize=8, padding=2
    )
    ax.set_xlabel("orders")
    ax.set_title("Top journeys: first touch within the window, then the channel of purchase")
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(x=0.12)
    return fig


def chart_message_conversion(content: ReportContent):
    table = content.kpis.get("message_conversion")
    if table is None:
        return None
    monthly = table.loc[(table["period"] != ALL_MONTHS) & (table["channel"] != ALL_CHANNELS)]
    colours = _channel_colours(monthly["channel"].unique())
    fig = _figure(9, 3.2)
    axes = fig.subplots(1, 2, sharex=True)
    for channel, rows in monthly.groupby("channel"):
        axes[0].plot(
            rows["period"], rows["conversion_rate"], marker="o", ms=3, label=channel, color=colours[channel]
        )
        axes[1].plot(
            rows["period"], rows["open_rate"], marker="o", ms=3, label=channel, color=colours[channel]
        )
    attribution = content.kpis.settings.get("attribution_days", 14)
    axes[0].set_title(f"Purchase within {attribution:g} days of the message", fontsize=10)
    axes[1].set_title("Open rate", fontsize=10)
    for ax in axes:
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0].legend(fontsize=8, frameon=False)
    return fig


def chart_lift(content: ReportContent):
    lift = content.lift
    if not isinstance(lift, LiftResult) or lift.table.empty:
        return None
    table = lift.table
    scopes = list(dict.fromkeys(table["scope"]))
    fig = _figure(9, 1.0 + 0.32 * len(scopes))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (metric, scale, unit) in zip(
        axes,
        (
            ("conversion", 100.0, "conversion, percentage points"),
            ("revenue per customer", 1.0, "revenue per customer"),
        ),
        strict=True,
    ):
        rows = table.loc[table["metric"] == metric].set_index("scope").reindex(scopes)
        y = np.arange(len(scopes))[::-1]
        diff = rows["difference"].to_numpy() * scale
        err = np.vstack([diff - rows["low"].to_numpy() * scale, rows["high"].to_numpy() * scale - diff])
        colours = [SERVED_COLOUR if s == "all messaging" else "#6b8fb0" for s in scopes]
        for yi, d, e0, e1, colour in zip(y, diff, err[0], err[1], colours, strict=True):
            ax.errorbar(d, yi, xerr=[[e0], [e1]], fmt="o", color=colour, capsize=3, ms=4)
        ax.axvline(0.0, color="#444444", linewidth=0.8)
        ax.set_xlabel(f"treated − control: {unit}")
        ax.set_yticks(y, scopes, fontsize=8)
    axes[0].set_title("Lift in conversion (95% interval)", fontsize=10)
    axes[1].set_title("Lift in revenue per customer (95% interval)", fontsize=10)
    return fig


def chart_segments(content: ReportContent):
    seg = content.segments
    if not isinstance(seg, Segments):
        return None
    table = seg.table
    fig = _figure(9, 3)
    axes = fig.subplots(1, 2)
    bars = axes[0].bar(table["segment"], table["customers"], color=SERVED_COLOUR)
    axes[0].bar_label(bars, labels=[fmt_pct(v, 0) for v in table["share"]], fontsize=8)
    axes[0].set_title("Customers per segment", fontsize=10)
    axes[0].margins(y=0.15)
    if "mean churn risk" in table:
        bars = axes[1].bar(table["segment"], table["mean churn risk"], color="#b8433f")
        axes[1].bar_label(bars, labels=[fmt_pct(v, 0) for v in table["mean churn risk"]], fontsize=8)
        axes[1].set_ylim(0, 1.1)
        axes[1].yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        axes[1].set_title("Mean churn risk (no purchase in the next 90 days)", fontsize=10)
    else:
        axes[1].set_axis_off()
        axes[1].text(0.5, 0.5, "no churn model", ha="center", va="center")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, labelrotation=20)
    return fig


def chart_clv(content: ReportContent):
    seg = content.segments
    if not isinstance(seg, Segments) or seg.clv is None:
        return None
    values = seg.clv
    cap = float(np.quantile(values, 0.99))
    fig = _figure(8, 3)
    ax = fig.add_subplot()
    ax.hist(np.clip(values, None, cap), bins=40, color=SERVED_COLOUR)
    ax.axvline(float(np.median(values)), color="#e07b39", label=f"median {np.median(values):,.2f}")
    ax.set_xlabel("lifetime value over 365 days (the top 1% drawn at the 99th percentile)")
    ax.set_ylabel("customers")
    ax.set_title("Lifetime value")
    ax.legend(frameon=False, fontsize=8)
    return fig


def chart_models(content: ReportContent):
    charted = [q for q in content.models if q.bars]
    if not charted:
        return None
    columns = 2 if len(charted) > 1 else 1
    rows = -(-len(charted) // columns)
    fig = _figure(9, 2.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, q in zip(axes, charted, strict=False):
        names = list(q.bars)
        values = np.array([q.bars[n] for n in names], dtype=float)
        colours = [SERVED_COLOUR if n == q.served_bar else BASELINE_COLOUR for n in names]
        labels = [n.removeprefix("served: ") for n in names]
        bars = ax.barh(labels[::-1], values[::-1], color=colours[::-1])
        percent = q.bar_metric.startswith("engagement near")
        ax.bar_label(
            bars,
            labels=[
                "–" if not np.isfinite(v) else (f"{v:.1%}" if percent else f"{v:.3f}") for v in values[::-1]
            ],
            fontsize=7,
            padding=2,
        )
        ax.set_title(f"{q.title.removeprefix('Recommendations: ')}\n{q.bar_metric}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.2)
    for ax in axes[len(charted) :]:
        ax.set_axis_off()
    fig.suptitle("What is served (dark) beside its baselines (light)", fontsize=10)
    return fig


CHARTS: dict[str, Callable[[ReportContent], object]] = {
    "revenue_by_channel": chart_revenue_by_channel,
    "cohort_retention": chart_cohort_retention,
    "cross_channel_value": chart_cross_channel_value,
    "top_journeys": chart_top_journeys,
    "message_conversion": chart_message_conversion,
    "send_time": chart_send_time,
    "lift": chart_lift,
    "segments": chart_segments,
    "clv": chart_clv,
    "models": chart_models,
}
CHART_TITLES = {
    "revenue_by_channel": "Revenue by month and channel",
    "cohort_retention": "Retention by monthly cohort",
    "cross_channel_value": "Revenue per customer by number of channels",
    "top_journeys": "Top journeys",
    "message_conversion": "Message conversion and open rate by month and channel",
    "send_time": "Send-time heat map with the quiet hours",
    "lift": "Measured lift with 95% intervals",
    "segments": "Segments and churn risk",
    "clv": "Lifetime value distribution",
    "models": "Models beside their baselines",
}


def draw_charts(content: ReportContent) -> dict[str, str]:
    """Every chart the content supports, as SVG text, by name."""
    charts = {}
    for name, draw in CHARTS.items():
        fig = draw(content)
        if fig is not None:
            charts[name] = _svg(fig)
    return charts


# -------------------------------------------------------------------------------------------- HTML
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2733;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 32px 64px; background: #ffffff; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #1f5f8b; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; color: #1f5f8b; }
p, li { max-width: 70em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; }
th, td { border: 1px solid #d5dbe1; padding: 3px 8px; vertical-align: top; }
th { background: #eef2f6; text-align: left; }
td.n { text-align: right; white-space: nowrap; }
td.t { text-align: left; min-width: 6em; max-width: 40em; }
.table-wrap { overflow-x: auto; }
figure { margin: 0.8em 0 1em; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8em; color: #5b6673; }
nav { font-size: 0.85em; margin: 0.5em 0 1em; }
nav a { margin-right: 1em; color: #1f5f8b; }
.warning { display: none; background: #fff3cd; border: 1px solid #e0b100; padding: 8px 12px; }
code { background: #eef2f6; padding: 0 3px; }
"""

# Once the page (and so every image) has loaded: each chart decoded and laid out, or a visible
# warning (a viewer that blocks data: images, say). The counts go to data- attributes as well.
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var charts = document.querySelectorAll("img.chart");
  var drawn = 0;
  charts.forEach(function (img) {
    var box = img.getBoundingClientRect();
    var ok = img.complete && img.naturalWidth > 0 && box.width > 0 && box.height > 0;
    img.setAttribute("data-rendered", ok ? "yes" : "no");
    img.setAttribute("data-width", String(Math.round(box.width)));
    img.setAttribute("data-height", String(Math.round(box.height)));
    if (ok) { drawn += 1; }
  });
  document.body.setAttribute("data-charts", String(charts.length));
  document.body.setAttribute("data-charts-rendered", String(drawn));
  if (drawn < charts.length) {
    var warning = document.getElementById("chart-warning");
    warning.textContent = (charts.length - drawn) + " of " + charts.length + " charts could not be shown by this viewer.";
    warning.style.display = "block";
  }
});
"""


def _inline(text: str) -> str:
    """Escaped text, with `code` spans kept as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


# a cell that reads as a figure (a count, an amount, a rate, points, a ratio, an interval): set right
NUMERIC_CELL = re.compile(r"[-+–−]?[\d.,]+(%| pts|×)?( \([-+\d.,% pts]+ to [-+\d.,% pts]+\))?|–")


def _table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(col))}</th>" for col in frame.columns)

    def cell(value) -> str:
        text = str(value)
        kind = "n" if NUMERIC_CELL.fullmatch(text) else "t"
        return f'<td class="{kind}">{html.escape(text)}</td>'

    rows = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _anchor(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def render_html(content: ReportContent, charts: dict[str, str] | None = None) -> str:
    """The whole report as one HTML page (`report.html`), charts drawn into it."""
    charts = draw_charts(content) if charts is None else charts
    blocks: list[Block] = document(content)
    body, nav = [], []
    for block in blocks:
        if block.kind == "h1":
            body.append(f"<h1>{_inline(block.value)}</h1>")
        elif block.kind == "h2":
            anchor = _anchor(block.value)
            nav.append(f'<a href="#{anchor}">{html.escape(block.value)}</a>')
            body.append(f'<h2 id="{anchor}">{_inline(block.value)}</h2>')
        elif block.kind == "h3":
            body.append(f"<h3>{_inline(block.value)}</h3>")
        elif block.kind == "p":
            body.append(f"<p>{_inline(block.value)}</p>")
        elif block.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in block.value) + "</ul>")
        elif block.kind == "table":
            body.append(_table_html(block.value))
        elif block.kind == "chart" and block.value in charts:
            data = base64.b64encode(charts[block.value].encode()).decode()
            title = CHART_TITLES.get(block.value, block.value)
            body.append(
                f'<figure><img class="chart" id="chart-{block.value}" alt="{html.escape(title)}" '
                f'src="data:image/svg+xml;base64,{data}"><figcaption>{html.escape(title)}</figcaption></figure>'
            )
    if body and body[0].startswith("<h1>"):
        body.insert(1, "<nav>" + "".join(nav) + "</nav>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(content.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        '<div id="chart-warning" class="warning" role="alert"></div>\n'
        + "\n".join(body)
        + f"\n</main>\n<script>{CHECK_SCRIPT}</script>\n</body>\n</html>\n"
    )
