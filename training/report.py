"""The run report: a Markdown page a marketer can read, logged with every training run.

It says what data went in (tables, rows, date range, a hash of the input files), how each model
scored beside its baseline on the held-out window, whether the new models replaced the champions
and why, and what the data lacked. Only aggregates and customer counts appear: no personal data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from features.contract import FILE_SUFFIXES, TABLES


def hash_inputs(data_dir: str | Path) -> str:
    """sha256 over the contract tables' files (name + bytes), streamed: the identity of a data set."""
    digest = hashlib.sha256()
    folder = Path(data_dir)
    for name in sorted(TABLES):
        for suffix in FILE_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file():
                digest.update(path.name.encode())
                with path.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(metrics: dict[str, float], models: list[str], baseline: str) -> str:
    """A Markdown table, one row per metric, one column per model, plus the lift over the baseline."""
    names = sorted({key.split(".", 1)[1] for key in metrics if key.split(".", 1)[0] in models})
    head = "| metric | " + " | ".join(models) + f" | best vs {baseline} |"
    lines = [head, "|" + "---|" * (len(models) + 2)]
    for name in names:
        values = [metrics.get(f"{m}.{name}") for m in models]
        base = metrics.get(f"{baseline}.{name}")
        others = [v for m, v in zip(models, values, strict=True) if m != baseline and v is not None]
        lift = ""
        if base and others and name not in ("customers_evaluated",):
            lift = f"{(max(others) / base - 1) * 100:+.1f}%"
        lines.append(
            f"| {name} | " + " | ".join("" if v is None else _fmt(v) for v in values) + f" | {lift} |"
        )
    return "\n".join(lines)


def build_report(
    summary: dict,
    sections: list[tuple[str, str]],
    decisions: list[dict],
    notes: list[str],
) -> str:
    """The whole page: data, one section per model family, promotion decisions, notes."""
    out = ["# Training run report", "", "## Data", ""]
    out.append(f"- input hash (sha256): `{summary.get('input_hash', 'n/a')}`")
    out.append(f"- events from {summary['events_from']} to {summary['events_to']}")
    out.append(
        f"- {summary['customers_with_events']:,} customers and {summary['products_with_events']:,} products with events"
    )
    out.append(
        "- tables: " + ", ".join(f"{name} ({rows:,} rows)" for name, rows in summary["tables"].items())
    )
    for title, body in sections:
        out += ["", f"## {title}", "", body]
    out += ["", "## Champion decisions", ""]
    if decisions:
        out.append("| model | new version | promoted | reason |")
        out.append("|---|---|---|---|")
        for d in decisions:
            out.append(f"| {d['model_name']} | {d['challenger_version']} | {d['promoted']} | {d['reason']} |")
    else:
        out.append("No model was registered.")
    out += ["", "## Notes on the data", ""]
    out += [f"- {n}" for n in notes] or ["- none"]
    return "\n".join(out) + "\n"
