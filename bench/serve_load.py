"""Load benchmark of the HTTP service: latency percentiles and throughput per endpoint and concurrency.

    python bench/serve_load.py --out FILE [--workdir DIR] [--data DIR] [--url URL] [--duration 10]
                               [--max-requests 100000] [--concurrency 1,16,64] [--workers N] [--rounds R]

Unless `--url` is given, starts `bentoml serve serving.service:OmniService --host 127.0.0.1 -p <free port>`
as a subprocess with `OMNI_WORKDIR=<workdir>` (a store trained by `omni train`), waits for /readyz and
stops it at the end. Servers bind to 127.0.0.1 only.

For each endpoint (trivial, recommend, recommend_live, recommend_session, next_best_action) and each concurrency, a closed loop of N
clients (asyncio + one aiohttp session, or httpx.AsyncClient with `--client httpx`, with N keep-alive
connections) sends requests back to back for
`--duration` seconds or `--max-requests` requests, whichever comes first, after a short unrecorded
warm-up. Per cell: requests, errors (non-2xx or exceptions), p50/p99 latency of the successful
requests in ms (client side, so it includes the client's own overhead), rps (successful requests per
second of wall time) and the status counts; when the bench started the server, each worker's CPU
seconds (`worker_cpu_s`) and the busiest worker's share of them (`busiest_worker_cpu_share`: 0.5
with two workers sharing the load evenly, 1.0 with one doing it all).

- `recommend`: POST /v1/recommend {"customer_id": <random known customer>, "channel": "web", "k": 10};
  customers from `--customers-file` (one id a line) or `<data>/customers.parquet`. A known
  customer's plain request is answered from the lists `omni build` computed ahead
  (`models/recs/precomputed.py`) when they hold it.
- `recommend_live`: the same with `"exclude": [<random product>]` (issue 16's measure of requests
  with an exclusion). The stored lists answer it when the excluded product is none of the
  customer's candidates (most random products: it then changes nothing); otherwise it runs both
  stages.
- `recommend_session`: the same with `"context_items": [<random product>]`, a session item: the
  stored lists never answer it, so every request runs both stages (the cost of the live path).
- `next_best_action`: POST /v1/next_best_action {"customer_id": ..., "channel": "email"}. A route the
  server does not have is measured as it answers (404s, all errors) for 1 s per cell, with a note.
- `trivial`: POST /v1/ping {} (the cheapest API route, through the same BentoML machinery: the
  framework's floor); falls back to GET /healthz, with a note, when the server has no /v1/ping.

With `--rounds R` each cell is measured in R slices of duration / R seconds, the endpoints taking
turns, and the slices are merged (the shares of the trivial endpoint then compare endpoints
measured at the same moments, on a machine whose speed drifts).

Targets (issue #6, 2-core machine): recommend p99 <= 25 ms at 16 clients, and recommend throughput at
16 clients >= 70% of the trivial endpoint's in the same run. Writes
{"results": [...], "targets": {...}, "machine": {...}, "workers": n, "notes": [...]} to --out and stdout.

The load generator shares the machine with the server (2 cores here): its CPU use is part of what is
measured, and at a fixed concurrency a closed loop's latency is about concurrency / throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:OmniService"
HOST = "127.0.0.1"
ENDPOINTS = ("trivial", "recommend", "recommend_live", "recommend_session", "next_best_action")
CONCURRENCY = (1, 16, 64)
P99_TARGET_MS = 25.0
THROUGHPUT_TARGET = 0.7
# issue 16: next_best_action >= 40 % and recommend_live >= 50 % of the trivial endpoint at 16 clients
LIVE_TARGETS = {"next_best_action": 0.4, "recommend_live": 0.5}
CHANNELS = ("store", "web", "app", "email", "sms", "push", "social", "call_center")


# -- server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def default_workdir() -> Path:
    return Path(os.environ.get("OMNI_WORKDIR", ROOT / "work")).resolve()


class ServerProcess:
    """`bentoml serve` on a free 127.0.0.1 port in its own process group, stopped on exit."""

    def __init__(
        self,
        workdir: Path,
        workers: int | None = None,
        startup_timeout: float = 180.0,
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
        service: str = SERVICE,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.service = service
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="omni-bench-")) / "server.log"
        self.proc: subprocess.Popen | None = None

    def _command(self) -> list[str]:
        exe = Path(sys.executable).with_name("bentoml")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]
        return [*base, "serve", self.service, "--host", HOST, "-p", str(self.port)]

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        # a real deployment has OMNI_* only; MLflow variables of this process must not leak in
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(key, None)
        env.update(
            OMNI_WORKDIR=str(self.workdir),
            # the served models live in the BentoML store `omni build` filled (as in the Makefile)
            BENTOML_HOME=os.environ.get("BENTOML_HOME") or str(self.workdir / "bentoml"),
            OPENBLAS_NUM_THREADS="1",
            BENTOML_DO_NOT_TRACK="True",
            MLFLOW_DISABLE_TELEMETRY="true",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        if self.workers is not None:
            env["OMNI_WORKERS"] = str(self.workers)
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (kept open for the server's lifetime)
        self.proc = subprocess.Popen(
            self._command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        return worker_pids(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this process started
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_pids(server_pid: int) -> list[int]:
    """The BentoML worker processes under a `bentoml serve` process (all its children if none look like one)."""
    import psutil

    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for child in children:
        try:
            if any("_bentoml_impl.worker" in part for part in child.cmdline()):
                workers.append(child.pid)
        except psutil.Error:
            continue
    return workers or [c.pid for c in children]


def cpu_seconds(pids: list[int]) -> list[float]:
    """CPU seconds (user + system) each process has used so far (0 for one that is gone)."""
    import psutil

    out = []
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            out.append(times.user + times.system)
        except psutil.Error:
            out.append(0.0)
    return out


def machine_info() -> dict:
    import psutil

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    try:
        import bentoml

        info["bentoml"] = bentoml.__version__
    except ImportError:
        pass
    return info


# -- requests --------------------------------------------------------------------------------------


def load_customers(customers_file: Path | None, data_dir: Path) -> list[str]:
    if customers_file is not None:
        ids = [line.strip() for line in Path(customers_file).read_text().splitlines() if line.strip()]
    else:
        import pyarrow.parquet as pq

        path = Path(data_dir) / "customers.parquet"
        if not path.exists():
            raise SystemExit(f"no customers: {path} is missing (give --data or --customers-file)")
        ids = [str(x) for x in pq.read_table(path, columns=["customer_id"]).column("customer_id").to_pylist()]
    if not ids:
        raise SystemExit("no customers to ask for")
    return ids


def load_products(data_dir: Path) -> list[str]:
    path = Path(data_dir) / "products.parquet"
    if not path.exists():
        return [f"P{i:06d}" for i in range(1, 1001)]
    import pyarrow.parquet as pq

    return [str(x) for x in pq.read_table(path, columns=["product_id"]).column("product_id").to_pylist()]


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"x-api-key": api_key} if api_key else {}


def openapi_paths(url: str, headers: dict[str, str]) -> dict[str, list[str]]:
    """Route -> methods, from the server's own OpenAPI document ({} if it cannot be read)."""
    try:
        doc = httpx.get(f"{url}/docs.json", headers=headers, timeout=10).json()
        return {path: [m.upper() for m in ops] for path, ops in doc.get("paths", {}).items()}
    except (httpx.HTTPError, ValueError):
        return {}


class Endpoint:
    """One measured endpoint: method, path and a body factory (None for GET)."""

    def __init__(self, name: str, method: str, path: str, body: Callable[[], dict] | None) -> None:
        self.name, self.method, self.path, self.body = name, method, path, body

    def encoded(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body()).encode()


def endpoints(
    customers: list[str], rng: random.Random, products: list[str] | None = None
) -> dict[str, Endpoint]:
    def pick() -> str:
        return customers[rng.randrange(len(customers))]

    products = products or ["P000001"]

    def with_product(field: str) -> dict:
        """A recommend request with one random product in `field`."""
        customer = pick()  # drawn before the product, as before this helper
        return {
            "customer_id": customer,
            "channel": "web",
            "k": 10,
            field: [products[rng.randrange(len(products))]],
        }

    return {
        "trivial": Endpoint("trivial", "POST", "/v1/ping", lambda: {}),
        "recommend": Endpoint(
            "recommend", "POST", "/v1/recommend", lambda: {"customer_id": pick(), "channel": "web", "k": 10}
        ),
        # the same request with one excluded product: the lists computed ahead answer it when the
        # product is none of the customer's candidates, the two stages when it is
        "recommend_live": Endpoint(
            "recommend_live", "POST", "/v1/recommend", lambda: with_product("exclude")
        ),
        # a session item: always the two stages (what the live path costs)
        "recommend_session": Endpoint(
            "recommend_session", "POST", "/v1/recommend", lambda: with_product("context_items")
        ),
        "next_best_action": Endpoint(
            "next_best_action",
            "POST",
            "/v1/next_best_action",
            lambda: {"customer_id": pick(), "channel": "email"},
        ),
    }


def probe(url: str, ep: Endpoint, headers: dict[str, str]) -> int:
    try:
        r = httpx.request(
            ep.method,
            url + ep.path,
            content=ep.encoded(),
            headers={**headers, "content-type": "application/json"},
            timeout=30,
        )
        return r.status_code
    except httpx.HTTPError:
        return -1


# -- load ------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


CLIENTS = ("aiohttp", "httpx")


class LoadClient:
    """One async HTTP client with `connections` keep-alive connections: aiohttp (default) or httpx.

    aiohttp is the default because the generator shares the 2 cores with the server: on this machine
    httpx's AsyncClient costs about twice the CPU per request and its pool degrades past ~16
    connections, which would be measured as server latency.
    """

    def __init__(
        self, kind: str, url: str, connections: int, timeout: float, headers: dict[str, str]
    ) -> None:
        if kind not in CLIENTS:
            raise ValueError(f"client: expected one of {CLIENTS}, got {kind!r}")
        self.kind, self.url, self.connections, self.timeout, self.headers = (
            kind,
            url,
            connections,
            timeout,
            headers,
        )
        self._client = None

    async def __aenter__(self) -> LoadClient:
        if self.kind == "aiohttp":
            import aiohttp

            self._client = aiohttp.ClientSession(
                self.url,
                connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self.headers,
            )
        else:
            limits = httpx.Limits(
                max_connections=self.connections, max_keepalive_connections=self.connections
            )
            self._client = httpx.AsyncClient(
                base_url=self.url, limits=limits, timeout=self.timeout, headers=self.headers
            )
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def request(self, method: str, path: str, content: bytes | None) -> tuple[str, str]:
        """(status code or exception name, body text of a non-2xx answer)."""
        headers = {"content-type": "application/json"} if content is not None else None
        if self.kind == "aiohttp":
            import aiohttp

            try:
                async with self._client.request(method, path, data=content, headers=headers) as r:
                    body = await r.read()
                    status = r.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                return type(exc).__name__, str(exc)
        else:
            try:
                r = await self._client.request(method, path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                return type(exc).__name__, str(exc)
            body, status = r.content, r.status_code
        return str(status), "" if 200 <= status < 300 else body.decode("utf-8", "replace")


async def closed_loop(
    url: str,
    ep: Endpoint,
    concurrency: int,
    duration: float,
    max_requests: int,
    headers: dict[str, str],
    timeout: float = 10.0,
    client_kind: str = "aiohttp",
    think_s: float = 0.0,
) -> dict:
    """`concurrency` clients, each sending its next request as soon as the last one answered
    (or `think_s` seconds later)."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    issued = 0
    async with LoadClient(client_kind, url, concurrency, timeout, headers) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def client_loop() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                content = ep.encoded()
                t0 = time.perf_counter()
                status, _ = await client.request(ep.method, ep.path, content)
                elapsed = time.perf_counter() - t0
                statuses[status] += 1
                if status.startswith("2"):
                    latencies.append(elapsed * 1000)
                if think_s:
                    await asyncio.sleep(think_s)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarise(ep, concurrency, latencies, statuses, wall)


def summarise(ep: Endpoint, concurrency: int, latencies: list[float], statuses: Counter, wall: float) -> dict:
    """One cell's figures from its successful requests' latencies (ms), status counts and wall time;
    `_latencies` (dropped from the report) lets rounds of one cell be merged (`merge_rounds`)."""
    latencies = sorted(latencies)
    requests = sum(statuses.values())
    ok = len(latencies)
    return {
        "endpoint": ep.name,
        "concurrency": concurrency,
        "requests": requests,
        "errors": requests - ok,
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "rps": round(ok / wall, 1) if wall > 0 else 0.0,
        "mean_ms": _round(sum(latencies) / ok if ok else None),
        "max_ms": _round(latencies[-1] if latencies else None),
        "seconds": round(wall, 2),
        "path": f"{ep.method} {ep.path}",
        "status_counts": dict(sorted(statuses.items())),
        "_latencies": latencies,
        "_wall": wall,
    }


def merge_rounds(ep: Endpoint, cells: list[dict]) -> dict:
    """The cells of one endpoint and concurrency measured in several rounds, as one cell."""
    latencies = [x for cell in cells for x in cell["_latencies"]]
    statuses: Counter[str] = Counter()
    for cell in cells:
        statuses.update(cell["status_counts"])
    merged = summarise(ep, cells[0]["concurrency"], latencies, statuses, sum(cell["_wall"] for cell in cells))
    merged["rounds"] = len(cells)
    return merged


def client_version(kind: str) -> str:
    if kind == "aiohttp":
        import aiohttp

        return aiohttp.__version__
    return httpx.__version__


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def find(results: list[dict], endpoint: str, concurrency: int) -> dict | None:
    return next((r for r in results if r["endpoint"] == endpoint and r["concurrency"] == concurrency), None)


def targets(results: list[dict]) -> dict:
    rec, triv = find(results, "recommend", 16), find(results, "trivial", 16)
    out: dict = {"recommend_p99_ms_at_16": rec and rec["p99_ms"], "p99_limit_ms": P99_TARGET_MS}
    out["recommend_p99_at_16_le_25ms"] = bool(
        rec and rec["errors"] == 0 and rec["p99_ms"] is not None and rec["p99_ms"] <= P99_TARGET_MS
    )
    if rec and triv and triv["rps"]:
        out["recommend_rps_share_of_trivial_at_16"] = round(rec["rps"] / triv["rps"], 3)
    else:
        out["recommend_rps_share_of_trivial_at_16"] = None
    share = out["recommend_rps_share_of_trivial_at_16"]
    out["recommend_rps_at_16_ge_70pct_trivial"] = bool(
        share is not None and rec["errors"] == 0 and share >= THROUGHPUT_TARGET
    )
    # issue 16: the live request paths, against the same run's trivial endpoint
    for name, target in LIVE_TARGETS.items():
        cell = find(results, name, 16)
        ok = bool(cell and triv and triv["rps"] and cell["errors"] == 0)
        share = round(cell["rps"] / triv["rps"], 3) if ok else None
        out[f"{name}_rps_share_of_trivial_at_16"] = share
        out[f"{name}_rps_at_16_ge_{round(target * 100)}pct_trivial"] = bool(
            share is not None and share >= target
        )
    # not a target: the share of the path that always runs both stages, beside them
    cell = find(results, "recommend_session", 16)
    ok = bool(cell and triv and triv["rps"] and cell["errors"] == 0)
    out["recommend_session_rps_share_of_trivial_at_16"] = round(cell["rps"] / triv["rps"], 3) if ok else None
    return out


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir).resolve() if args.workdir else default_workdir()
    data_dir = Path(args.data) if args.data else workdir / "data" / "demo"
    rng = random.Random(args.seed)
    customers = load_customers(args.customers_file, data_dir)
    headers = auth_headers(args.api_key)
    notes: list[str] = []
    server = None
    if args.url:
        url = args.url.rstrip("/")
        workers = args.workers
        notes.append(f"external server {url}")
    else:
        server = ServerProcess(workdir, workers=args.workers, service=args.service).start()
        url = server.url
        workers = len(server.worker_pids())
    load_before = os.getloadavg()
    try:
        paths = openapi_paths(url, headers)
        eps = endpoints(customers, rng, load_products(data_dir))
        chosen = [e for e in args.endpoints.split(",") if e]
        concurrencies = [int(c) for c in args.concurrency.split(",") if c]
        results: list[dict] = []
        ready: list[tuple[str, Endpoint, float]] = []
        for name in chosen:
            ep = eps[name]
            duration = args.duration
            status = probe(url, ep, headers)
            if name == "trivial" and status == 404:
                notes.append(
                    "trivial: POST /v1/ping is missing (404): measured GET /healthz instead, which skips the API machinery"
                )
                ep = Endpoint("trivial", "GET", "/healthz", None)
                status = probe(url, ep, headers)
            if not 200 <= status < 300:
                listed = ep.path in paths
                notes.append(
                    f"{name}: {ep.method} {ep.path} answered {status} to a probe"
                    + ("" if listed else " and is not in /docs.json")
                    + "; measured as it answers (every request counted as an error), 1 s per cell"
                )
                duration = min(duration, 1.0)
            else:
                # unrecorded warm-up: connections, caches, lazy imports
                asyncio.run(
                    closed_loop(url, ep, 4, min(1.0, args.duration), 200, headers, args.timeout, args.client)
                )
            ready.append((name, ep, duration))
        # with --rounds N, every cell is measured in N slices, the endpoints taking turns: a
        # machine whose speed drifts over a run (a shared box does) then slows every endpoint
        # alike, and the shares of the trivial endpoint's throughput compare like with like
        rounds = max(1, int(args.rounds))
        cells: dict[tuple[str, int], list[dict]] = {}
        # each worker's CPU seconds per cell: whether the workers shared the load (a server's
        # workers share one socket and a connection stays with one worker: serving/connections.py)
        pids = server.worker_pids() if server is not None else []
        worker_cpu: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for name, ep, duration in ready:
                for concurrency in concurrencies:
                    before = cpu_seconds(pids)
                    cell = asyncio.run(
                        closed_loop(
                            url,
                            ep,
                            concurrency,
                            duration / rounds,
                            max(1, args.max_requests // rounds),
                            headers,
                            args.timeout,
                            args.client,
                            args.think_ms / 1000,
                        )
                    )
                    cells.setdefault((name, concurrency), []).append(cell)
                    used = [b - a for a, b in zip(before, cpu_seconds(pids), strict=True)]
                    total = worker_cpu.setdefault((name, concurrency), [0.0] * len(pids))
                    worker_cpu[(name, concurrency)] = [t + u for t, u in zip(total, used, strict=True)]
        for name, ep, _ in ready:
            for concurrency in concurrencies:
                cell = merge_rounds(ep, cells[(name, concurrency)])
                for key in ("_latencies", "_wall"):
                    cell.pop(key)
                if pids:
                    used = worker_cpu[(name, concurrency)]
                    cell["worker_cpu_s"] = [round(x, 2) for x in used]
                    cell["busiest_worker_cpu_share"] = round(max(used) / sum(used), 3) if sum(used) else None
                results.append(cell)
                print(
                    f"{name:>16} c={concurrency:<3} n={cell['requests']:<6} err={cell['errors']:<5} "
                    f"p50={cell['p50_ms']} ms p99={cell['p99_ms']} ms rps={cell['rps']}"
                    + (
                        f" busiest worker {cell['busiest_worker_cpu_share']}"
                        if cell.get("worker_cpu_s")
                        else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if server is not None:
            server.stop()
    report = {
        "results": results,
        "targets": targets(results),
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "workers": workers,
        "service": args.url or args.service,
        "server_log": str(server.log_path) if server is not None else None,
        "duration_s_per_cell": args.duration,
        "think_ms": args.think_ms,
        "max_requests_per_cell": args.max_requests,
        "client": f"{args.client} {client_version(args.client)}, closed loop, one process on the same machine",
        "notes": notes,
    }
    t = report["targets"]
    print(
        f"recommend@16: p99 {t['recommend_p99_ms_at_16']} ms (<= {P99_TARGET_MS}: {t['recommend_p99_at_16_le_25ms']}), "
        f"{t['recommend_rps_share_of_trivial_at_16']} of trivial rps (>= {THROUGHPUT_TARGET}: "
        f"{t['recommend_rps_at_16_ge_70pct_trivial']})",
        file=sys.stderr,
    )
    return report


def server_arguments(doc: str, verb: str, data_help: str = "customers.parquet") -> argparse.ArgumentParser:
    """The options every server benchmark shares (where the server and its data are, how to reach it)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument(
        "--workdir", help="OMNI_WORKDIR of the server (a trained store); default $OMNI_WORKDIR or ./work"
    )
    p.add_argument("--data", help=f"data folder with {data_help}; default <workdir>/data/demo")
    p.add_argument("--customers-file", type=Path, help="customer ids to ask for, one a line")
    p.add_argument("--url", help=f"{verb} this running server instead of starting one (127.0.0.1 only)")
    p.add_argument(
        "--workers", type=int, help="OMNI_WORKERS for the started server (service default otherwise)"
    )
    p.add_argument("--service", default=SERVICE, help=f"BentoML service to start (default {SERVICE})")
    p.add_argument(
        "--api-key", default=os.environ.get("OMNI_API_KEY"), help="sent as x-api-key (default $OMNI_API_KEY)"
    )
    p.add_argument("--seed", type=int, default=42)
    return p


def main(argv: list[str] | None = None) -> None:
    p = server_arguments(__doc__, "measure")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per cell (default 10)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each cell in this many slices, the endpoints taking turns (default 1: each "
        "cell at once); more rounds make the shares of the trivial endpoint robust to a machine "
        "whose speed drifts during the run",
    )
    p.add_argument("--max-requests", type=int, default=100_000, help="request cap per cell")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--endpoints", default=",".join(ENDPOINTS))
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    p.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="pause of each client between requests (default 0: back to back)",
    )
    p.add_argument(
        "--client", choices=CLIENTS, default="aiohttp", help="load generator's HTTP client (default aiohttp)"
    )
    args = p.parse_args(argv)
    check_local(args.url)
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


def check_local(url: str | None) -> None:
    """Benchmarks only ever target this machine."""
    if url is None:
        return
    host = httpx.URL(url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load {host}: benchmarks only target 127.0.0.1")


if __name__ == "__main__":
    main()
