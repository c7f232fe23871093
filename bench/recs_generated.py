"""Product recommendations on generated omnichannel data: what is served beside every baseline.

    python bench/recs_generated.py --out FILE [--data DIR | --customers N --seed S] [--test-days D]

Without --data, `features.synthetic.generate(N, S)` (default 20,000 customers, seed 42) writes the
data into work/bench-data (reused when it already holds that N and seed). The data is loaded and
validated like `omni train` does (`load_tables`, `stitch_identities`), then
`training.recs_training.train_two_stage` splits it in time (the last D days, default 28, are the
test window), fits the two-stage model on the history before the split (which chooses what it
serves on its own validation window) and scores, on the same customers with
`training.evaluation.ranking_metrics` at k = 10: `served`, `ranker`, and the baselines
`popularity`, `repeat`, `als`, `ease` (one candidate source each, under the same rules).

Protocol `new_products`: relevant = what a customer bought in the test window and had not bought
before; every list leaves bought products out (`exclude_purchased`). `all_purchases` (in the JSON
too): every test purchase is relevant and every list may hold products bought before (how many the
served list holds was learned). Customers without history before the split are evaluated too,
with cold-start lists (`cold_start_share`).

Output: JSON on stdout and in FILE: {"dataset", "split", "protocol", "models": {"served",
"popularity", "repeat", "als", "ease", "ranker"} (map, ndcg@10, precision@10, recall@10, coverage,
cold_start_share), "all_purchases", "served" (the orders chosen), "two_stage" (candidate recall,
ranker training summary), "machine", "seconds"}.
"""

from __future__ import annotations

import os

# implicit runs its own threads; OpenBLAS threads on top only contend.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from features.identity import stitch_identities  # noqa: E402
from features.io import load_tables  # noqa: E402
from training.config import RecsConfig  # noqa: E402
from training.recs_training import train_two_stage  # noqa: E402

DEFAULT_DATA = REPO / "work" / "bench-data"
METRICS = ("map", "ndcg@10", "precision@10", "recall@10", "coverage", "cold_start_share")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    """Cores, memory and GPU of this machine, in the words the other benchmarks use."""
    cores = os.cpu_count() or 0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{round(pages / 1024**3)} GB"
    except (ValueError, OSError):
        memory = "unknown memory"
    return f"{cores} cores, {memory}, no GPU"


def ensure_generated(folder: Path, n_customers: int, seed: int, n_products: int | None = None) -> Path:
    """Generated data in `folder`, reused when its truth/meta.json says the same size and seed."""
    from features.synthetic import generate

    meta_path = folder / "truth" / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        same = meta.get("n_customers") == n_customers and meta.get("seed") == seed
        if same and (n_products is None or meta.get("n_products") == n_products):
            log(f"reusing {folder} ({n_customers:,} customers, seed {seed})")
            return folder
    log(f"generating {n_customers:,} customers, seed {seed} into {folder}")
    generate(n_customers, seed, folder, n_products=n_products)
    return folder


def rounded(values: dict) -> dict:
    return {name: round(float(values[name]), 6) for name in METRICS if name in values}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--data", type=Path, default=None, help="a data folder (default: generate)")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-days", type=int, default=28)
    parser.add_argument("--max-eval-customers", type=int, default=20_000)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.data is not None:
        data_dir, dataset = args.data, f"folder {args.data}"
    else:
        data_dir = ensure_generated(DEFAULT_DATA, args.customers, args.seed)
        dataset = f"generated: features.synthetic.generate({args.customers}, seed={args.seed})"
    tables = stitch_identities(load_tables(data_dir))
    log("training the two-stage model and evaluating it beside its baselines")
    config = RecsConfig(
        test_days=args.test_days,
        max_eval_customers=args.max_eval_customers,
        refit=False,
        random_state=args.seed,
    )
    model, metrics, info = train_two_stage(tables, config, show_progress=False)
    training = info["two_stage_training"]
    result = {
        "dataset": dataset,
        "rows": {name: int(len(frame)) for name, frame in tables.as_dict().items()},
        "split": f"time split: the last {args.test_days} days held out (split at {info['split_time']}); "
        f"ranker trained on candidates as of {training['label_start']} and purchases up to the split",
        "protocol": "new_products: relevant = test-window purchases of products the customer had not "
        "bought before the split; top-10 with bought products removed for every model; customers "
        "without history included (cold start); coverage over "
        f"{info['catalogue_size']} products",
        "models": {name: rounded(values) for name, values in metrics.items()},
        "all_purchases": {
            "protocol": "every test-window purchase relevant; every list may hold products bought before",
            "models": {name: rounded(values) for name, values in info["all_purchases"].items()},
        },
        "customers_evaluated": int(metrics["served"]["customers_evaluated"]),
        "reasons": metrics["served"]["reasons"],
        "served": info["served"],
        "served_rebuy_share": info.get("served_rebuy_share"),
        "two_stage": {
            key: training[key]
            for key in (
                "candidate_recall",
                "mean_candidates",
                "train_groups",
                "train_rows",
                "ranker_best_iteration",
                "ranker_validation_ndcg@10",
            )
            if key in training
        }
        | {"top_features": dict(list(training.get("feature_gain", {}).items())[:10])},
        "timings_seconds": info["seconds"],
        "machine": machine(),
        "load_average_at_start": round(load_average, 2) if load_average is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    del model
    from training.tracking import save_benchmark

    print(save_benchmark("recs_generated", result, args.out))
    return result


if __name__ == "__main__":
    main()
