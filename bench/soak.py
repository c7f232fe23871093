"""Soak test of the HTTP service: a steady request rate for minutes, errors and worker memory growth.

    python bench/soak.py --out FILE [--workdir DIR] [--data DIR] [--url URL --server-pid PID]
                         [--rps 50] [--duration 300] [--warmup 30] [--sample-every 10] [--workers N]

Starts the service as `bench/serve_load.py` does (127.0.0.1, free port, `OMNI_WORKDIR=<workdir>`), then
sends requests on a fixed schedule (open loop: one every 1/rps s, whatever the answers take; at most
`--max-in-flight` outstanding, beyond which a tick is counted as `dropped`) for `--duration` seconds:

- 70% recommend: POST /v1/recommend {"customer_id", "channel", "k": 10} (random known customer and channel);
- 20% events: POST /v1/events {"customer_id", "event_type", "channel", "product_id"} (view, add_to_cart,
  remove_from_cart, purchase, message_open, message_click), the contract this bench assumes;
- 10% trivial: POST /v1/ping {} (GET /healthz when the server has no /v1/ping).

A route the server does not have (404 while absent from /docs.json) is counted under `missing_route_404`
per endpoint and noted, not as an error. Every other non-2xx answer or exception is an error.

Worker memory: the RSS of every BentoML worker process under the server is sampled every
`--sample-every` s; growth is end vs the first sample after `--warmup` s (total over workers, and the
worst single worker). Targets (issue #6): zero errors, worker memory growth under 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

# the script's folder on sys.path: `python bench/X.py` and `python -m bench.X` both find serve_load
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import (  # noqa: E402
    Endpoint,
    LoadClient,
    ServerProcess,
    auth_headers,
    check_local,
    default_workdir,
    load_customers,
    load_products,
    machine_info,
    openapi_paths,
    percentile,
    probe,
    server_arguments,
    worker_pids,
)

MIX = (("recommend", 0.7), ("events", 0.2), ("trivial", 0.1))
EVENT_TYPES = (
    "view",
    "view",
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "message_open",
    "message_click",
)
CHANNELS = ("web", "app", "email", "store", "push", "sms")
GROWTH_LIMIT_PCT = 10.0


def rss_mb(pids: list[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


class Traffic:
    """Request bodies for the mix, from known customers and products."""

    def __init__(self, customers: list[str], products: list[str], seed: int) -> None:
        self.customers, self.products = customers, products
        self.rng = random.Random(seed)
        self.trivial = ("POST", "/v1/ping")

    def customer(self) -> str:
        return self.customers[self.rng.randrange(len(self.customers))]

    def pick_endpoint(self) -> str:
        x, acc = self.rng.random(), 0.0
        for name, share in MIX:
            acc += share
            if x < acc:
                return name
        return MIX[-1][0]

    def request(self, name: str) -> tuple[str, str, bytes | None]:
        if name == "recommend":
            body = {"customer_id": self.customer(), "channel": self.rng.choice(CHANNELS), "k": 10}
            return "POST", "/v1/recommend", json.dumps(body).encode()
        if name == "events":
            event_type = self.rng.choice(EVENT_TYPES)
            body = {
                "customer_id": self.customer(),
                "event_type": event_type,
                "channel": self.rng.choice(CHANNELS),
            }
            if not event_type.startswith("message_"):
                body["product_id"] = self.products[self.rng.randrange(len(self.products))]
            return "POST", "/v1/events", json.dumps(body).encode()
        method, path = self.trivial
        return method, path, (b"{}" if method == "POST" else None)


async def soak(
    url: str,
    traffic: Traffic,
    rps: float,
    duration: float,
    headers: dict[str, str],
    missing: set[str],
    pids: list[int],
    sample_every: float,
    max_in_flight: int,
    timeout: float,
    client_kind: str = "aiohttp",
) -> dict:
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    error_examples: list[dict] = []
    samples: list[dict] = []
    in_flight: set[asyncio.Task] = set()
    dropped = 0
    max_lag = 0.0

    async def one(client: LoadClient, name: str) -> None:
        method, path, content = traffic.request(name)
        t0 = time.perf_counter()
        status, text = await client.request(method, path, content)
        ms = (time.perf_counter() - t0) * 1000
        statuses[name][status] += 1
        if status.startswith("2"):
            latencies[name].append(ms)
        elif not (status == "404" and name in missing) and len(error_examples) < 20:
            error_examples.append({"endpoint": name, "path": path, "status": status, "body": text[:300]})

    async def sampler(start: float) -> None:
        while True:
            per_worker = rss_mb(pids)
            samples.append(
                {
                    "t": round(time.perf_counter() - start, 1),
                    "rss_mb": round(sum(per_worker.values()), 1),
                    "workers": per_worker,
                }
            )
            await asyncio.sleep(sample_every)

    async with LoadClient(client_kind, url, max_in_flight, timeout, headers) as client:
        start = time.perf_counter()
        sampling = asyncio.create_task(sampler(start))
        interval = 1.0 / rps
        n = 0
        while True:
            due = start + n * interval
            if due - start >= duration:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                max_lag = max(max_lag, now - due)
            n += 1
            name = traffic.pick_endpoint()
            if len(in_flight) >= max_in_flight:
                dropped += 1
                continue
            task = asyncio.create_task(one(client, name))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=timeout + 5)
        wall = time.perf_counter() - start
        per_worker = rss_mb(pids)
        samples.append(
            {"t": round(wall, 1), "rss_mb": round(sum(per_worker.values()), 1), "workers": per_worker}
        )
        sampling.cancel()
    return {
        "latencies": latencies,
        "statuses": statuses,
        "error_examples": error_examples,
        "samples": samples,
        "dropped": dropped,
        "scheduled": n,
        "max_schedule_lag_ms": round(max_lag * 1000, 1),
        "wall_s": wall,
    }


def summarize(raw: dict, missing: set[str], warmup: float) -> dict:
    per_endpoint = {}
    all_latencies: list[float] = []
    requests = errors = 0
    for name in sorted(set(raw["statuses"]) | set(raw["latencies"])):
        counts = raw["statuses"][name]
        lat = sorted(raw["latencies"][name])
        all_latencies.extend(lat)
        n = sum(counts.values())
        absent = counts.get("404", 0) if name in missing else 0
        errs = n - len(lat) - absent
        requests += n
        errors += errs
        per_endpoint[name] = {
            "requests": n,
            "ok": len(lat),
            "errors": errs,
            "missing_route_404": absent,
            "p50_ms": _r(percentile(lat, 50)),
            "p99_ms": _r(percentile(lat, 99)),
            "status_counts": dict(sorted(counts.items())),
        }
    all_latencies.sort()
    samples = raw["samples"]
    after = [s for s in samples if s["t"] >= warmup] or samples
    first, last = after[0], samples[-1]
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100 if first["rss_mb"] else None
    worker_growth = {}
    for pid, mb in last["workers"].items():
        base = first["workers"].get(pid)
        if base:
            worker_growth[str(pid)] = round((mb - base) / base * 100, 2)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else None,
        "dropped": raw["dropped"],
        "scheduled": raw["scheduled"],
        "achieved_rps": round(requests / raw["wall_s"], 1) if raw["wall_s"] else None,
        "max_schedule_lag_ms": raw["max_schedule_lag_ms"],
        "p50_ms": _r(percentile(all_latencies, 50)),
        "p99_ms": _r(percentile(all_latencies, 99)),
        "per_endpoint": per_endpoint,
        "rss_mb_start": first["rss_mb"],
        "rss_mb_start_at_s": first["t"],
        "rss_mb_end": last["rss_mb"],
        "rss_growth_pct": _r(growth),
        "rss_growth_pct_per_worker": worker_growth,
        "rss_samples": [{"t": s["t"], "rss_mb": s["rss_mb"]} for s in samples],
        "error_examples": raw["error_examples"],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir).resolve() if args.workdir else default_workdir()
    data_dir = Path(args.data) if args.data else workdir / "data" / "demo"
    traffic = Traffic(load_customers(args.customers_file, data_dir), load_products(data_dir), args.seed)
    headers = auth_headers(args.api_key)
    notes: list[str] = []
    server = None
    if args.url:
        url = args.url.rstrip("/")
        pids = worker_pids(args.server_pid) if args.server_pid else []
        if not pids:
            notes.append("external server without --server-pid: worker memory not sampled")
    else:
        server = ServerProcess(workdir, workers=args.workers, service=args.service).start()
        url, pids = server.url, server.worker_pids()
    try:
        paths = openapi_paths(url, headers)
        missing: set[str] = set()
        if probe(url, Endpoint("trivial", "POST", "/v1/ping", dict), headers) == 404:
            traffic.trivial = ("GET", "/healthz")
            notes.append("trivial: POST /v1/ping is missing (404): GET /healthz used instead")
        if "/v1/events" not in paths:
            missing.add("events")
            notes.append(
                "events: POST /v1/events is not in /docs.json; its 404s are counted under missing_route_404, not as errors"
            )
        load_before = os.getloadavg()
        raw = asyncio.run(
            soak(
                url,
                traffic,
                args.rps,
                args.duration,
                headers,
                missing,
                pids,
                args.sample_every,
                args.max_in_flight,
                args.timeout,
                args.client,
            )
        )
        load_after = os.getloadavg()
    finally:
        if server is not None:
            server.stop()
    report = summarize(raw, missing, args.warmup)
    growth = report["rss_growth_pct"]
    report.update(
        targets={
            "zero_errors": report["errors"] == 0 and report["dropped"] == 0,
            "rss_growth_under_10pct": growth is not None and growth < GROWTH_LIMIT_PCT,
        },
        rps_target=args.rps,
        duration_s=args.duration,
        warmup_s=args.warmup,
        workers=len(pids),
        client=args.client,
        server_log=str(server.log_path) if server is not None else None,
        machine={**machine_info(), "loadavg_before": load_before, "loadavg_after": load_after},
        notes=notes,
    )
    print(
        f"soak: {report['requests']} requests at {report['achieved_rps']} rps, {report['errors']} errors, "
        f"p99 {report['p99_ms']} ms, worker RSS {report['rss_mb_start']} -> {report['rss_mb_end']} MB ({growth}%)",
        file=sys.stderr,
    )
    return report


def main(argv: list[str] | None = None) -> None:
    p = server_arguments(__doc__, "soak", data_help="customers.parquet and products.parquet")
    p.add_argument(
        "--server-pid", type=int, help="with --url: pid of its `bentoml serve`, to sample worker memory"
    )
    p.add_argument("--rps", type=float, default=50.0, help="steady request rate (default 50)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument(
        "--warmup", type=float, default=30.0, help="memory baseline: first sample after this many seconds"
    )
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument(
        "--client", choices=("aiohttp", "httpx"), default="aiohttp", help="HTTP client (default aiohttp)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    args = p.parse_args(argv)
    check_local(args.url)
    if args.rps <= 0 or args.duration <= 0:
        raise SystemExit("--rps and --duration must be positive")
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
