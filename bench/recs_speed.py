"""Speed of the two-stage recommender: training time and peak memory at 200,000 customers, and the
latency of one customer's recommendation in-process at 20,000 products.

    python bench/recs_speed.py --out FILE [--customers 200000] [--products 20000] [--seed 42]
                               [--data DIR] [--model DIR] [--requests 1000]

1. `features.synthetic.generate(customers, seed, n_products=products)` into work/bench-data-200k
   (reused when it already holds that size and seed; about a minute for 200,000 customers).
2. Training in a child process, so its peak resident memory is its own: load and validate the
   tables, stitch identities, `TwoStageRecommender().fit(tables)` (the sources twice: as of the
   label window for the ranker's training set and on all history; the LambdaRank ranker), save.
   Reported: seconds per stage and the child's peak RSS (`getrusage` ru_maxrss).
3. Latency in this process, after loading the saved model: `recommend(customer, k=10,
   channel="web")` one request at a time for sampled known customers, for the same customers with
   two session items (ALS fold-in), and for unknown customers (cold start); median and p99 in ms,
   wall clock and CPU time of this thread. `recommend` takes the single-request path; the same
   requests through the batch path (`recommend_many([customer], ...)`, the path a request took
   before the single-request path) are timed beside it ("..._batch_path"). Plus batch throughput (`recommendations_frame`,
   256 customers per chunk).
4. Lists computed ahead (`models.recs.precomputed`, what `omni build` stores for the HTTP service): the
   sampled known customers' lists are computed ("stored_list_build_ms_per_customer"), saved and read
   back memory-mapped; the same plain requests are answered from them ("known_customer_stored_list")
   and by the live path ("..._live_path"), alternating; "stored_list_mismatches" counts answers
   that differ (0 expected).

`--data DIR` uses an existing data folder instead of generating one (e.g. the 20,000-customer demo
data); `--model DIR` times a saved model folder and skips training ("training": null).

The machine is shared (see "load_average"): timings are wall-clock and include what other work
ran at the same time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.recs_generated import ensure_generated, log, machine  # noqa: E402

DEFAULT_DATA = REPO / "work" / "bench-data-200k"


def _train(data_dir: str, model_dir: str, params: dict, queue) -> None:
    """Child process: load, stitch, fit, save; reports timings and its own peak memory."""
    from features.identity import stitch_identities
    from features.io import load_tables
    from models.recs.two_stage import TwoStageRecommender

    seconds = {}
    tick = time.perf_counter()
    tables = stitch_identities(load_tables(data_dir))
    seconds["load_validate_stitch"] = time.perf_counter() - tick
    tick = time.perf_counter()
    model = TwoStageRecommender(**params).fit(tables)
    seconds["fit"] = time.perf_counter() - tick
    tick = time.perf_counter()
    model.save(model_dir)
    seconds["save"] = time.perf_counter() - tick
    queue.put(
        {
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "fit_steps_info": {
                k: model.training_info_.get(k)
                for k in ("train_customers", "train_rows", "candidate_recall", "ranker_best_iteration")
            },
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "events": int(len(tables.events)),
            "customers": int(len(model.customer_ids_)),
            "products": int(len(model.product_ids_)),
            "ease_items": int(len(model.ease_.items_)),
        }
    )


def _percentiles(seconds: list[float], cpu_seconds: list[float]) -> dict:
    ms, cpu_ms = np.asarray(seconds) * 1000.0, np.asarray(cpu_seconds) * 1000.0
    return {
        "median_ms": round(float(np.median(ms)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "cpu_median_ms": round(float(np.median(cpu_ms)), 2),
        "n": len(ms),
    }


def latency(model, n_requests: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    known = model.customer_ids_[model.customer_has_history_]
    customers = rng.choice(known, min(n_requests, len(known)), replace=False).tolist()
    sold = np.flatnonzero(~model.item_is_new_ & model.item_active_)
    contexts = [model.product_ids_[rng.choice(sold, 2, replace=False)].tolist() for _ in customers]
    for cid in customers[:20]:  # warm up caches and lazy imports
        model.recommend(cid, k=10, channel="web")
        model.recommend_many([cid], k=10, channel="web")

    def batch_path(customer_id, context_items=()):
        return model.recommend_many([customer_id], 10, context_items=[list(context_items)], channel="web")

    out = {}
    for name, calls in (
        ("known_customer", [dict(customer_id=cid) for cid in customers]),
        ("known_customer_with_2_session_items", [dict(customer_id=cid, context_items=ctx) for cid, ctx in zip(customers, contexts, strict=True)]),
        ("unknown_customer_cold_start", [dict(customer_id=f"new-{i}") for i in range(len(customers))]),
    ):  # fmt: skip
        times = {"single": ([], []), "batch": ([], [])}
        for kwargs in calls:  # the two paths alternate, so both see the same machine
            for path in ("single", "batch"):
                tick, cpu = time.perf_counter(), time.thread_time()
                if path == "single":
                    model.recommend(k=10, channel="web", **kwargs)
                else:
                    batch_path(**kwargs)
                times[path][1].append(time.thread_time() - cpu)
                times[path][0].append(time.perf_counter() - tick)
        out[name] = _percentiles(*times["single"])
        out[f"{name}_batch_path"] = _percentiles(*times["batch"])
    out |= stored_lists(model, customers)
    batch = customers[: min(5000, len(customers))]
    tick = time.perf_counter()
    model.recommendations_frame(batch, k=10)
    per = (time.perf_counter() - tick) / len(batch)
    out["batch_ms_per_customer"] = round(per * 1000.0, 3)
    out["batch_customers_per_second"] = round(1.0 / per, 1)
    return out


def stored_lists(model, customers: list[str]) -> dict:
    """The same known customers' plain requests answered from lists computed ahead
    (`models.recs.precomputed`, as `omni build` stores them, read memory-mapped) against the live
    single-request path, alternating; plus the build cost per customer and a check that every
    stored answer is the live one."""
    from models.recs.precomputed import PrecomputedLists

    rows = np.sort(np.array([model.customer_index_[cid] for cid in customers], dtype=np.int64))
    lists = PrecomputedLists()
    tick = time.perf_counter()
    lists.fit(model, parts=[lists.compute_part(model, rows)])
    build_ms = (time.perf_counter() - tick) * 1000.0 / max(1, len(rows))
    times = {"stored": ([], []), "live": ([], [])}
    mismatches = 0
    with tempfile.TemporaryDirectory(prefix="recs-speed-lists-") as tmp:
        lists.save(Path(tmp) / "precomputed")
        stored = PrecomputedLists.load(Path(tmp) / "precomputed", model)
        try:
            for cid in customers:
                answers = {}
                for path in ("stored", "live"):
                    model.precomputed_ = stored if path == "stored" else None
                    tick, cpu = time.perf_counter(), time.thread_time()
                    answers[path] = model.recommend(cid, k=10, channel="web")
                    times[path][1].append(time.thread_time() - cpu)
                    times[path][0].append(time.perf_counter() - tick)
                mismatches += answers["stored"] != answers["live"]
        finally:
            model.precomputed_ = None
    return {
        "known_customer_stored_list": _percentiles(*times["stored"]),
        "known_customer_stored_list_live_path": _percentiles(*times["live"]),
        "stored_list_build_ms_per_customer": round(build_ms, 3),
        "stored_list_mismatches": int(mismatches),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--data", type=Path, default=None, help="an existing data folder instead of generating"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="a saved model folder to time (skips training)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests per latency scenario")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_average = os.getloadavg()[0]

    tick = time.perf_counter()
    if args.model is not None:
        data_dir, dataset = None, f"model folder {args.model}"
    elif args.data is None:
        data_dir = ensure_generated(DEFAULT_DATA, args.customers, args.seed, n_products=args.products)
        dataset = (
            f"features.synthetic.generate({args.customers}, seed={args.seed}, n_products={args.products})"
        )
    else:
        data_dir, dataset = args.data, f"folder {args.data}"
    generate_seconds = time.perf_counter() - tick

    from models.recs.two_stage import TwoStageRecommender

    params = TwoStageRecommender().get_params()
    with tempfile.TemporaryDirectory(prefix="recs-speed-") as tmp:
        training = None
        if args.model is not None:
            model_dir = args.model
        else:
            model_dir = Path(tmp) / "model"
            log("training in a child process")
            queue = mp.get_context("spawn").Queue()
            child = mp.get_context("spawn").Process(
                target=_train, args=(str(data_dir), str(model_dir), params, queue)
            )
            child.start()
            training = queue.get()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"training failed (exit {child.exitcode})")
            log(f"training: {training}")
        tick = time.perf_counter()
        model = TwoStageRecommender.load(model_dir)
        load_seconds = time.perf_counter() - tick
        # a served copy (`omni build`) carries stored lists: scenarios 3 time the live path
        model.precomputed_ = None
        size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 1024**2
        log("measuring latency")
        lat = latency(model, args.requests, args.seed)

    result = {
        "dataset": dataset,
        "data_generation_seconds": round(generate_seconds, 1),
        "training": None if training is None else training | {"params": params},
        "model_folder_mb": round(size_mb, 1),
        "model_load_seconds": round(load_seconds, 2),
        "latency": {"k": 10, "channel": "web", "products": int(len(model.product_ids_))} | lat,
        "machine": machine(),
        "load_average_at_start": round(load_average, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(text + "\n")
    tmp_out.replace(args.out)
    return result


if __name__ == "__main__":
    main()
