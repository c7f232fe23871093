"""The live loop under load: several service workers on one live store, mixed traffic, a worker
killed with SIGKILL mid-run and a champion switch, then an audit of what was acknowledged.

    python bench/live_loop.py --out FILE [--workdir DIR] [--data DIR] [--store sqlite|postgresql|both]
                              [--postgres-url URL] [--duration 40] [--clients 8] [--seed 7]

Per store: SQLite = one `bentoml serve` with two workers on one SQLite file; PostgreSQL = two
service processes (one worker each) on one PostgreSQL database (`--postgres-url`, else a throwaway
server this script starts and stops: the binaries are on these machines). The models are the
ones `omni build` put in `<workdir>/bentoml`, copied to a temporary store first (the switch adds a
build there, never in yours). For `--duration` seconds, `--clients` threads send, at random:
behaviour events for bench customers (each naming a product of its own, so every acknowledged
event can be found again), opt-outs, messages sent by a channel system, next-best-action with
`commit: true` and recommendations for known customers, every decision at one fixed time so that
they compete for the same caps. At 30 % of the run one worker is killed with SIGKILL; at 60 % a new
build (the recommender under a new version) is written and the run waits until every answer
carries it.

The audit, after the run, reads the store directly:
- events_lost_after_kill: acknowledged (2xx) events not in the store;
- decisions_committed: contacts the store holds from committed decisions (each answered
  `committed: true` must be there: one missing counts as lost too);
- cap_or_cooldown_violations: committed decisions closer than the contact policy's cooldown to
  another committed decision of the customer, or to a message acknowledged before the decision
  was asked; or more in a 7-day window than the weekly cap;
- consent_violations: a committed decision on a channel the customer's opt-out had been
  acknowledged for before the decision was asked, or /v1/send_time still giving a moment after;
- failed_requests_during_reload: requests that failed from the moment the build was written until
  5 s after every answer carried it.

JSON: {"store": ..., "requests", "errors_5xx", "acknowledged_events", "events_lost_after_kill",
"decisions_committed", "cap_or_cooldown_violations", "consent_violations",
"failed_requests_during_reload", ...}: the PostgreSQL run's (or the only run's) fields at the top
level, every run under "runs".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/X.py` and `-m bench.X`

from _postgres import throwaway_postgres  # noqa: E402
from serve_load import ROOT, ServerProcess, default_workdir, machine_info  # noqa: E402

NOW = "2026-09-01T09:00:00+00:00"  # every decision at this time: they compete for the same caps
MESSAGE_CHANNELS = ("email", "sms", "push", "social")
RELOAD_VERSION = "bench-reload"

# A new build in a BentoML store, as `omni build` makes one: the model `name` copied under a new
# MLflow version (or, "broken", an artefact that loads nothing), then the build's manifest. Run in
# a subprocess with the store's BENTOML_HOME: BentoML reads it once per process.
NEW_BUILD = """
import shutil, sys
from pathlib import Path
import bentoml
from training.build import SERVED_MODELS, ImportedModel, served_manifest, write_manifest

name, version, broken = sys.argv[1], sys.argv[2], sys.argv[3] == "broken"
manifest = served_manifest()
old = bentoml.models.get(manifest["models"][name])
tag = f"{name}:v{version}"
labels = {**old.info.labels, "mlflow_version": version}
with bentoml.models.create(tag, labels=labels) as model:
    target = Path(model.path_of(SERVED_MODELS[name]))
    if broken:
        target.mkdir(parents=True)
        (target / "model.json").write_text("not a model")
    else:
        shutil.copytree(old.path_of(SERVED_MODELS[name]), target)
imported = [ImportedModel(n, "?", t) for n, t in manifest["models"].items() if n != name]
write_manifest([*imported, ImportedModel(name, version, tag)], manifest["missing"], manifest["skipped"])
"""


def new_build(env: dict, name: str, version: str, broken: bool = False) -> None:
    """Writes a new build into the BentoML store `env["BENTOML_HOME"]` (see NEW_BUILD)."""
    done = subprocess.run(
        [sys.executable, "-c", NEW_BUILD, name, version, "broken" if broken else "ok"],
        env=dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"new build failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def _policy() -> tuple[float, int | None]:
    """The default contact policy's message cooldown (hours) and weekly cap over all channels."""
    from models.decisions.contact_policy import load_contact_policy

    policy = load_contact_policy()
    return policy.cooldown_after_message_hours, policy.overall_caps.per_week


# -- traffic ---------------------------------------------------------------------------------------
@dataclass
class Record:
    """What the clients saw, for the audit."""

    requests: int = 0
    errors_5xx: int = 0
    errors_4xx: int = 0
    connection_errors: int = 0
    events: list[tuple[str, str]] = field(default_factory=list)  # acknowledged (customer, product)
    messages: list[tuple[str, str, float, float]] = field(default_factory=list)  # cid, channel, ts, acked
    opt_outs: list[tuple[str, str, float]] = field(default_factory=list)  # cid, channel, acked at
    decisions: list[tuple[str, str, str, float]] = field(default_factory=list)  # cid, channel, send_at, asked
    failures: list[tuple[float, str]] = field(default_factory=list)  # (when, what)
    recommender_versions: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Traffic:
    def __init__(self, urls: list[str], customers: list[str], seed: int, record: Record) -> None:
        self.urls, self.customers, self.seed, self.record = urls, customers, seed, record
        self.stop = threading.Event()
        self._seq = 0
        self._seq_lock = threading.Lock()

    def _next(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _post(self, client: httpx.Client, url: str, route: str, body: dict) -> dict | None:
        rec = self.record
        try:
            r = client.post(f"{url}{route}", json=body)
        except httpx.HTTPError as exc:
            with rec.lock:
                rec.requests += 1
                rec.connection_errors += 1
                rec.failures.append((time.monotonic(), f"{route}: {type(exc).__name__}"))
            return None
        with rec.lock:
            rec.requests += 1
            if r.status_code >= 500:
                rec.errors_5xx += 1
                rec.failures.append((time.monotonic(), f"{route}: {r.status_code}"))
            elif r.status_code >= 400:
                rec.errors_4xx += 1
                rec.failures.append((time.monotonic(), f"{route}: {r.status_code} {r.text[:120]}"))
        return r.json() if r.status_code == 200 else None

    def client(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        rec = self.record
        # commits go to a small set of customers, so that decisions compete for their caps
        hot = self.customers[:40]
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                url = rng.choice(self.urls)
                kind = rng.random()
                if kind < 0.35:
                    n = self._next()
                    cid, product = f"LL-{n % 5000:05d}", f"LL-P-{n}"
                    body = {
                        "customer_id": cid,
                        "event_type": rng.choice(["view", "add_to_cart", "purchase"]),
                        "channel": rng.choice(["web", "app", "store"]),
                        "product_id": product,
                    }
                    if self._post(client, url, "/v1/events", body) is not None:
                        with rec.lock:
                            rec.events.append((cid, product))
                elif kind < 0.40:
                    cid, channel = rng.choice(hot), rng.choice(MESSAGE_CHANNELS)
                    body = {
                        "customer_id": cid,
                        "event_type": "consent",
                        "channel": channel,
                        "opted_in": False,
                    }
                    if self._post(client, url, "/v1/events", body) is not None:
                        with rec.lock:
                            rec.opt_outs.append((cid, channel, time.monotonic()))
                elif kind < 0.45:
                    cid, channel = rng.choice(hot), rng.choice(MESSAGE_CHANNELS)
                    ts = (datetime.fromisoformat(NOW) + timedelta(hours=rng.uniform(-30, 60))).isoformat()
                    body = {"customer_id": cid, "event_type": "message_sent", "channel": channel, "ts": ts}
                    if self._post(client, url, "/v1/events", body) is not None:
                        with rec.lock:
                            rec.messages.append(
                                (cid, channel, datetime.fromisoformat(ts).timestamp(), time.monotonic())
                            )
                elif kind < 0.70:
                    cid = rng.choice(hot)
                    asked = time.monotonic()
                    body = {"customer_id": cid, "now": NOW, "commit": True}
                    answer = self._post(client, url, "/v1/next_best_action", body)
                    if answer is not None and answer.get("committed"):
                        with rec.lock:
                            rec.decisions.append((cid, answer["channel"], answer["send_at"], asked))
                else:
                    body = {"customer_id": rng.choice(self.customers), "channel": "web", "k": 10}
                    answer = self._post(client, url, "/v1/recommend", body)
                    if answer is not None:
                        with rec.lock:
                            rec.recommender_versions.append(
                                (time.monotonic(), answer["model_versions"].get("recommender", "?"))
                            )


# -- audit -----------------------------------------------------------------------------------------
def audit(record: Record, store_url: str, urls: list[str]) -> dict:
    from features.live_store import open_live_store

    cooldown_h, week_cap = _policy()
    cooldown = cooldown_h * 3600.0
    lost = 0
    with open_live_store(store_url) as store:
        by_customer: dict[str, set[str]] = defaultdict(set)
        for cid, product in record.events:
            by_customer[cid].add(product)
        for cid, products in by_customer.items():
            held = {e["product_id"] for e in store.recent(cid, 10_000)}
            lost += len(products - held)
        hot = sorted({d[0] for d in record.decisions} | {m[0] for m in record.messages})
        ledger = store.contacts(hot)
    decisions = ledger.loc[ledger["source"] == "decision"]
    answered = defaultdict(list)
    for cid, channel, send_at, asked in record.decisions:
        answered[cid].append((channel, datetime.fromisoformat(send_at).timestamp(), asked))
    # every decision answered as committed is in the store
    held = defaultdict(list)
    for cid, channel, ts in zip(decisions["customer_id"], decisions["channel"], decisions["ts"], strict=True):
        held[cid].append((channel, ts.timestamp()))
    missing = sum(
        1 for cid, rows in answered.items() for ch, ts, _ in rows if (ch, ts) not in held.get(cid, [])
    )
    violations = 0
    for cid, rows in answered.items():
        rows = sorted(rows, key=lambda r: r[1])
        for i, (_, ts, asked) in enumerate(rows):
            others = [t for j, (_, t, _) in enumerate(rows) if j != i]
            # messages acknowledged before this decision was asked had to be respected
            others += [m_ts for m_cid, _, m_ts, acked in record.messages if m_cid == cid and acked < asked]
            if any(abs(ts - t) < cooldown for t in others):
                violations += 1
            elif week_cap is not None and sum(abs(ts - t) < 7 * 86400 for t in others) >= week_cap:
                violations += 1
    consent_violations = 0
    opted_out_at: dict[tuple[str, str], float] = {}
    for cid, channel, acked in record.opt_outs:
        opted_out_at[(cid, channel)] = min(acked, opted_out_at.get((cid, channel), acked))
    for cid, rows in answered.items():
        for channel, _, asked in rows:
            acked = opted_out_at.get((cid, channel))
            if acked is not None and acked < asked:
                consent_violations += 1
    with httpx.Client(timeout=30) as client:
        for (cid, channel), _ in list(opted_out_at.items())[:200]:
            for url in urls:
                r = client.post(f"{url}/v1/send_time", json={"customer_id": cid, "channel": channel})
                if r.status_code != 200 or r.json()["next_send_utc"] is not None:
                    consent_violations += 1
    return {
        "events_lost_after_kill": lost,
        "decisions_committed": len(decisions),
        "committed_answers_missing_from_store": missing,
        "cap_or_cooldown_violations": violations,
        "consent_violations": consent_violations,
    }


# -- one run ---------------------------------------------------------------------------------------
def run_store(kind: str, args: argparse.Namespace, customers: list[str], postgres_url: str | None) -> dict:
    from serve_load import worker_pids

    scratch = Path(tempfile.mkdtemp(prefix=f"omni-live-loop-{kind}-"))
    home = scratch / "bentoml"
    shutil.copytree(Path(args.workdir) / "bentoml", home)  # the switch writes a build here only
    env = {"BENTOML_HOME": str(home), "OMNI_RELOAD_SECONDS": str(args.reload_seconds)}
    if kind == "sqlite":
        store_url = f"sqlite:///{scratch / 'live.db'}"
        env["OMNI_CONTEXT_DB"] = str(scratch / "live.db")
        layout = [2]  # one service process, two workers
    else:
        store_url = postgres_url
        env["OMNI_STORE_URL"] = postgres_url
        layout = [1, 1]  # two service processes, one worker each (2 cores)
    servers = []
    try:
        for i, workers in enumerate(layout):
            servers.append(
                ServerProcess(
                    args.workdir, workers=workers, extra_env=env, log_path=scratch / f"server{i}.log"
                ).start()
            )
        urls = [s.url for s in servers]
        record = Record()
        traffic = Traffic(urls, customers, args.seed, record)
        threads = [
            threading.Thread(target=traffic.client, args=(i,), daemon=True) for i in range(args.clients)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.duration * 0.3)
        victims = worker_pids(servers[0].proc.pid)
        killed = victims[0] if victims else None
        if killed:
            os.kill(killed, signal.SIGKILL)
        time.sleep(max(0.0, started + args.duration * 0.6 - time.monotonic()))
        build_at = time.monotonic()
        new_build(dict(os.environ, **env), "omni-recommender", RELOAD_VERSION)
        switched_at = None
        while time.monotonic() - build_at < 120:
            with record.lock:
                recent = [v for t, v in record.recommender_versions if t > time.monotonic() - 2]
            # every answer of the last 2 s (at least 20 of them) carries the new version
            if len(recent) >= 20 and all(v == RELOAD_VERSION for v in recent):
                switched_at = time.monotonic() - 2
                break
            time.sleep(0.25)
        time.sleep(max(5.0, started + args.duration - time.monotonic()))
        traffic.stop.set()
        for t in threads:
            t.join(60)
        reload_end = (switched_at or time.monotonic()) + 5
        failed_reload = sum(1 for t, _ in record.failures if build_at <= t <= reload_end)
        found = audit(record, store_url, urls)
        return {
            "store": "postgresql" if kind == "postgresql" else "sqlite",
            "requests": record.requests,
            "errors_5xx": record.errors_5xx,
            "acknowledged_events": len(record.events),
            "events_lost_after_kill": found["events_lost_after_kill"]
            + found["committed_answers_missing_from_store"],
            "decisions_committed": found["decisions_committed"],
            "cap_or_cooldown_violations": found["cap_or_cooldown_violations"],
            "consent_violations": found["consent_violations"],
            "failed_requests_during_reload": failed_reload,
            "errors_4xx": record.errors_4xx,
            "connection_errors": record.connection_errors,
            "committed_answers_missing_from_store": found["committed_answers_missing_from_store"],
            "opt_outs": len(record.opt_outs),
            "messages_sent_events": len(record.messages),
            "service_processes": len(layout),
            "workers": sum(layout),
            "killed_worker_pid": killed,
            "reload_seconds": None if switched_at is None else round(switched_at - build_at, 1),
            "failures_sample": [what for _, what in record.failures[:10]],
            "duration_s": args.duration,
            "clients": args.clients,
        }
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def load_customers(data_dir: Path) -> list[str]:
    import pandas as pd

    ids = pd.read_parquet(data_dir / "customers.parquet", columns=["customer_id"])["customer_id"].astype(str)
    return ids.tolist()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--workdir", type=Path, default=default_workdir(), help="trained and built (omni build)"
    )
    parser.add_argument("--data", type=Path, default=None, help="the data trained on (customers.parquet)")
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--postgres-url", default=None, help="default: a throwaway server of this run")
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reload-seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    data = args.data or args.workdir / "data" / "demo"
    customers = load_customers(data)
    kinds = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    runs = []
    for kind in kinds:
        if kind == "postgresql" and args.postgres_url is None:
            with throwaway_postgres() as url:
                runs.append(run_store(kind, args, customers, url))
        else:
            runs.append(run_store(kind, args, customers, args.postgres_url))
        print(json.dumps(runs[-1]), file=sys.stderr)
    result = {**runs[-1], "runs": runs, "machine": machine_info(), "now": NOW}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
