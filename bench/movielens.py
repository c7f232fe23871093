"""MovieLens 100k benchmark under Microsoft Recommenders' protocol, beside its published table.

    python bench/movielens.py --out FILE [--data DIR] [--workdir DIR] [--skip-served]

Protocol (as recommenders' examples/06_benchmarks does it):
- all 100,000 ratings, every rating relevant (no threshold);
- `python_stratified_split(data, ratio=0.75, filter_by="item", seed=42)`, reproduced below: each
  item's ratings shuffled with `DataFrame.sample(frac=1, random_state=42)` and cut at
  `round(0.75·n)` (train = the first part);
- top-10 per user with that user's training items removed, for the users present in train and
  test; MAP divides by the user's number of relevant test items (`training.evaluation`).

Models: popularity, implicit ALS with near-default settings, EASE (λ=500), and "ours": the best
of a small grid (EASE λ, ALS, EASE+ALS blend) chosen on a validation split carved out of the
training part only (the same stratified split, seed 7), refitted on the whole training part and
scored once on test.

`served`: what `omni train` serves, reached as a user would, through the CLI (`python -m
training.cli`, with `OMNI_WORKDIR` set to the scratch folder `--workdir`, wiped first): the
training split written as a user's export (user_id, item_id, rating, timestamp as ISO 8601 text
in UTC), `omni import --channel web --event-type purchase`, `omni train`, `omni recommend --all
--k 10`, scored by the same protocol (the served list as it comes: a training item in it is a
miss, `training_items_share` says how many there are); with `omni recommend --exclude-purchased`
too when the CLI has that flag (`exclude_purchased`). A failing step leaves the row's metrics
null and says why (`cli`).

The data come from the recbole==1.2.1 package (MovieLens' licence forbids redistributing it;
`make install` installs it without its dependencies): its file
recbole/dataset_example/ml-100k/ml-100k.inter is read where the package is installed, without
importing recbole (which needs torch), and never downloaded at run time.
"""

from __future__ import annotations

import os

# implicit runs its own threads; OpenBLAS threads on top only contend (EASE's 1,682² inverse takes
# well under a second on one core).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _cli import Omni  # noqa: E402

from features import columns as c  # noqa: E402
from models.base import top_k  # noqa: E402
from models.recs.als import ALSScorer  # noqa: E402
from models.recs.ease import EASEScorer  # noqa: E402
from models.recs.popularity import PopularityScorer  # noqa: E402
from training.evaluation import ranking_metrics  # noqa: E402

K = 10
SEED = 42  # recommenders' SEED: the test split
VALIDATION_SEED = 7  # the validation split inside the training part
RECBOLE = "recbole==1.2.1"
PACKAGE_FILE = "recbole/dataset_example/ml-100k/ml-100k.inter"
INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
DEFAULT_WORKDIR = REPO / "work" / "bench-movielens"

# Microsoft Recommenders README, "Algorithm Comparison", MovieLens 100k, top-10.
PUBLISHED = {
    "BiVAE": {"map": 0.146126, "ndcg@10": 0.475077, "precision@10": 0.411771, "recall@10": 0.219145},
    "BPR (cornac)": {"map": 0.132478, "ndcg@10": 0.441997, "precision@10": 0.388229, "recall@10": 0.212522},
    "LightGCN": {"map": 0.088526, "ndcg@10": 0.419846, "precision@10": 0.379626, "recall@10": 0.144336},
    "NCF": {"map": 0.107720, "ndcg@10": 0.396118, "precision@10": 0.347296, "recall@10": 0.180775},
    "SAR": {"map": 0.110591, "ndcg@10": 0.382461, "precision@10": 0.330753, "recall@10": 0.176385},
}

# ALS "alone": implicit's ALS at ALSScorer's defaults (64 factors, regularization 0.05, alpha 2,
# 15 iterations) on binary interactions. implicit 0.7 uses confidence = alpha·w.
ALS_DEFAULT = {"factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15}
EASE_DEFAULT = {"l2": 500.0}

# Validation grids (kept small: the reference machine has 2 cores).
EASE_GRID = [100.0, 200.0, 300.0, 400.0, 500.0, 700.0, 1000.0]
# implicit's ALS weighs a positive by alpha and a missing cell by 1: dividing through by alpha, what
# matters is the weight of the missing cells (1/alpha) and regularization/alpha, hence both ranges.
ALS_GRID = {
    "factors": [64, 128, 256],
    "regularization": [10.0, 30.0, 100.0],
    "alpha": [2.0, 5.0, 10.0, 20.0],
    "iterations": [15],
}
ALS_ITERATIONS = [30, 50]  # second stage, on the best of ALS_GRID
BLEND_WEIGHTS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # weight of the standardised ALS scores


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- data
def installed_inter_file() -> Path:
    """ml-100k.inter inside the installed recbole package, found without importing it (recbole
    imports torch); SystemExit naming `make install` when the package or the file is missing."""
    try:
        path = Path(str(importlib.metadata.distribution("recbole").locate_file(PACKAGE_FILE)))
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("recbole")  # a top-level package: found, not executed
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        path = Path(locations[0]).parent / PACKAGE_FILE if locations else None
    if path is None or not path.is_file():
        raise SystemExit(
            f"MovieLens 100k not found: the {RECBOLE} package (which ships {PACKAGE_FILE}) is not "
            f"installed{f' or lacks that file ({path})' if path is not None else ''}. Run `make install` "
            f"(it installs {RECBOLE} without its dependencies), or give --data DIR holding ml-100k.inter."
        )
    return path


def load_ratings(data_dir: Path | None = None) -> tuple[pd.DataFrame, str]:
    """MovieLens 100k as customer_id, product_id, rating, ts (the file's row order kept): from
    `data_dir`'s ml-100k.inter when given, else from the installed recbole package."""
    if data_dir is not None:
        candidates = [data_dir / "ml-100k.inter", data_dir / "ml-100k" / "ml-100k.inter"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SystemExit(f"--data {data_dir}: no ml-100k.inter there (nor in ml-100k/)")
    else:
        path = installed_inter_file()
    source = str(path)
    df = pd.read_csv(path, sep="\t")
    if list(df.columns) != INTER_HEADER:
        raise SystemExit(f"{source}: unexpected header {list(df.columns)}, expected {INTER_HEADER}")
    df.columns = [c.CUSTOMER_ID, c.PRODUCT_ID, "rating", c.TS]
    df = df.astype({c.CUSTOMER_ID: np.int64, c.PRODUCT_ID: np.int64, "rating": np.float64, c.TS: np.int64})
    shape = (len(df), df[c.CUSTOMER_ID].nunique(), df[c.PRODUCT_ID].nunique())
    if shape != (100_000, 943, 1_682):
        raise SystemExit(f"{source}: {shape} (ratings, users, items), expected (100000, 943, 1682)")
    return df, source


# -------------------------------------------------------------------------------------- split
def stratified_split(
    data: pd.DataFrame, ratio: float = 0.75, filter_col: str = c.PRODUCT_ID, seed: int = SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """microsoft/recommenders' `python_stratified_split` (pandas, per-group version).

    Its `_do_stratification` loops over `data.groupby(col)` (groups in key order, rows in data
    order) and calls `split_pandas_data_with_ratios(group, [ratio, 1 - ratio], shuffle=True,
    seed=seed)`, which does `group.sample(frac=1, random_state=seed)` (pandas draws
    `RandomState(seed).choice(n, n, replace=False)`) and `np.split` at `round(ratio · n)` (Python's
    round, half to even). Every group reuses the same seed. The same draw is made here explicitly
    so that it does not depend on the installed pandas.
    """
    if not 0 < ratio < 1:
        raise ValueError("ratio must be in (0, 1)")
    train_rows, test_rows = [], []
    for rows in data.groupby(filter_col, sort=True).indices.values():
        n = len(rows)
        order = np.random.RandomState(seed).choice(n, size=n, replace=False)
        cut = round(ratio * n)
        train_rows.append(rows[order[:cut]])
        test_rows.append(rows[order[cut:]])
    train = data.iloc[np.concatenate(train_rows)]
    test = data.iloc[np.concatenate(test_rows)]
    return train, test


# ----------------------------------------------------------------------------------- problem
@dataclass
class Problem:
    """A train/test pair in matrix form, for the test users seen in training."""

    X: sp.csr_matrix  # users × items, binary, training interactions
    users: np.ndarray  # customer ids, row order of X
    items: np.ndarray  # product ids, column order of X
    rows: np.ndarray  # rows of X of the evaluated users
    relevant: pd.DataFrame  # test interactions of those users
    exclude: np.ndarray  # bool, (len(rows), n_items): training items of the evaluated users

    @classmethod
    def build(cls, train: pd.DataFrame, test: pd.DataFrame) -> Problem:
        users = np.sort(train[c.CUSTOMER_ID].unique())
        items = np.sort(train[c.PRODUCT_ID].unique())
        u = np.searchsorted(users, train[c.CUSTOMER_ID].to_numpy())
        i = np.searchsorted(items, train[c.PRODUCT_ID].to_numpy())
        X = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (u, i)), shape=(len(users), len(items)))
        X.sum_duplicates()
        X.data[:] = 1.0
        relevant = test[test[c.CUSTOMER_ID].isin(users)][[c.CUSTOMER_ID, c.PRODUCT_ID]]
        rows = np.searchsorted(users, np.sort(relevant[c.CUSTOMER_ID].unique()))
        exclude = X[rows].toarray() > 0
        return cls(X, users, items, rows, relevant, exclude)

    def scores(self, model) -> np.ndarray:
        model.fit(self.X)
        return np.asarray(model.score(self.X[self.rows], self.rows), dtype=np.float64)

    def evaluate(self, scores: np.ndarray) -> dict[str, float]:
        idx, _ = top_k(scores, K, exclude=self.exclude)
        valid = idx >= 0
        recs = pd.DataFrame(
            {
                c.CUSTOMER_ID: np.repeat(self.users[self.rows], idx.shape[1])[valid.ravel()],
                c.PRODUCT_ID: self.items[idx[valid]],
                c.RANK: np.tile(np.arange(1, idx.shape[1] + 1), len(self.rows))[valid.ravel()],
            }
        )
        return self.evaluate_lists(recs)

    def evaluate_lists(self, recs: pd.DataFrame) -> dict[str, float]:
        """The protocol's metrics of ready-made lists (customer_id, product_id, rank) of the evaluated
        users, as they come (nothing removed; an evaluated user without a list scores 0)."""
        m = ranking_metrics(recs, self.relevant, k=K, catalogue_size=len(self.items))
        keys = ["map", f"ndcg@{K}", f"precision@{K}", f"recall@{K}", "coverage"]
        return {key: round(m[key], 6) for key in keys}


def standardise(scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Per-user z-scores over the items that user may be recommended (training items ignored)."""
    masked = np.ma.masked_array(scores, mask=exclude)
    mean = masked.mean(axis=1).filled(0.0)[:, None]
    std = masked.std(axis=1).filled(1.0)[:, None]
    std[std == 0] = 1.0
    return (scores - mean) / std


def blend(ease_scores: np.ndarray, als_scores: np.ndarray, weight: float, exclude: np.ndarray) -> np.ndarray:
    return (1 - weight) * standardise(ease_scores, exclude) + weight * standardise(als_scores, exclude)


def make_model(kind: str, params: dict):
    if kind == "ease":
        return EASEScorer(random_state=SEED, **params)
    if kind == "als":
        return ALSScorer(random_state=SEED, **params)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------- validation
def search(problem: Problem) -> tuple[dict, list[dict]]:
    """Grid search on the validation problem; returns the best candidate and every result."""
    results: list[dict] = []
    metric = f"ndcg@{K}"

    def record(kind: str, config: dict, scores: np.ndarray) -> dict:
        row = {"model": kind, "config": config, **problem.evaluate(scores)}
        results.append(row)
        log(f"  validation {kind:5s} {json.dumps(config)}: nDCG@{K} {row[metric]:.4f}")
        return row

    ease_scores: dict[float, np.ndarray] = {}
    for l2 in EASE_GRID:
        ease_scores[l2] = problem.scores(make_model("ease", {"l2": l2}))
        record("ease", {"l2": l2}, ease_scores[l2])
    best_ease = max((r for r in results if r["model"] == "ease"), key=lambda r: r[metric])

    als_scores: dict[tuple, np.ndarray] = {}
    names = list(ALS_GRID)
    for values in itertools.product(*(ALS_GRID[n] for n in names)):
        config = dict(zip(names, values, strict=True))
        als_scores[values] = problem.scores(make_model("als", config))
        record("als", config, als_scores[values])
    best_als = max((r for r in results if r["model"] == "als"), key=lambda r: r[metric])
    for iterations in ALS_ITERATIONS:
        if iterations in ALS_GRID["iterations"]:
            continue
        config = {**best_als["config"], "iterations": iterations}
        values = tuple(config[n] for n in names)
        als_scores[values] = problem.scores(make_model("als", config))
        record("als", config, als_scores[values])
    best_als = max((r for r in results if r["model"] == "als"), key=lambda r: r[metric])

    e = ease_scores[best_ease["config"]["l2"]]
    a = als_scores[tuple(best_als["config"][n] for n in names)]
    for weight in BLEND_WEIGHTS:
        config = {"ease": best_ease["config"], "als": best_als["config"], "als_weight": weight}
        record("blend", config, blend(e, a, weight, problem.exclude))

    best = max(results, key=lambda r: r[metric])
    return best, results


def fit_candidate(problem: Problem, best: dict) -> np.ndarray:
    if best["model"] == "blend":
        e = problem.scores(make_model("ease", best["config"]["ease"]))
        a = problem.scores(make_model("als", best["config"]["als"]))
        return blend(e, a, best["config"]["als_weight"], problem.exclude)
    return problem.scores(make_model(best["model"], best["config"]))


# -------------------------------------------------------------------------------------- served
METRIC_KEYS = ("map", f"ndcg@{K}", f"precision@{K}", f"recall@{K}", "coverage")
IMPORT_MAP = "customer_id=user_id,product_id=item_id,ts=timestamp"


def user_export(train: pd.DataFrame) -> pd.DataFrame:
    """The training split as a user's export: user_id, item_id, rating, timestamp (ISO 8601, UTC)."""
    stamp = pd.to_datetime(train[c.TS].to_numpy(), unit="s", utc=True)
    return pd.DataFrame(
        {
            "user_id": train[c.CUSTOMER_ID].to_numpy(),
            "item_id": train[c.PRODUCT_ID].to_numpy(),
            "rating": train["rating"].to_numpy(),
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


def evaluated_lists(problem: Problem, frame: pd.DataFrame) -> pd.DataFrame:
    """A served lists frame (text ids) as the protocol's integer ids, for the evaluated users only."""
    recs = pd.DataFrame(
        {
            c.CUSTOMER_ID: pd.to_numeric(frame[c.CUSTOMER_ID], errors="coerce"),
            c.PRODUCT_ID: pd.to_numeric(frame[c.PRODUCT_ID], errors="coerce"),
            c.RANK: frame[c.RANK].astype(np.int64).to_numpy(),
        }
    ).dropna()
    recs = recs.astype({c.CUSTOMER_ID: np.int64, c.PRODUCT_ID: np.int64})
    return recs[recs[c.CUSTOMER_ID].isin(problem.users[problem.rows]) & (recs[c.RANK] <= K)]


def training_items_share(recs: pd.DataFrame, train: pd.DataFrame) -> float | None:
    """Share of list rows that are the user's own training items (the protocol counts them as misses)."""
    if recs.empty:
        return None
    seen = train[[c.CUSTOMER_ID, c.PRODUCT_ID]].drop_duplicates().assign(_seen=True)
    merged = recs[[c.CUSTOMER_ID, c.PRODUCT_ID]].merge(seen, on=[c.CUSTOMER_ID, c.PRODUCT_ID], how="left")
    return round(float(merged["_seen"].notna().mean()), 6)


def score_served(problem: Problem, train: pd.DataFrame, frame: pd.DataFrame | None) -> dict:
    """The protocol's metrics of a served lists frame (None: every metric null), with its share of
    training items and how many evaluated users got a list."""
    if frame is None:
        return {key: None for key in METRIC_KEYS}
    recs = evaluated_lists(problem, frame)
    return {
        **problem.evaluate_lists(recs),
        "training_items_share": training_items_share(recs, train),
        "users_with_list": int(recs[c.CUSTOMER_ID].nunique()),
    }


def served_row(problem: Problem, train: pd.DataFrame, workdir: Path) -> dict:
    """`models.served`: the training split through omni import, train and recommend --all."""
    if workdir.exists():
        shutil.rmtree(workdir)
    export, data_dir, outputs = workdir / "export", workdir / "data", workdir / "outputs"
    export.mkdir(parents=True)
    outputs.mkdir()
    user_export(train).to_csv(export / "ratings.csv", index=False)
    omni = Omni(workdir)
    lists: dict[str, pd.DataFrame | None] = {"default": None, "exclude_purchased": None}
    exclude_flag = omni.has_option("recommend", "--exclude-purchased")
    imported = omni.run(
        "import",
        "import",
        "--events",
        str(export / "ratings.csv"),
        "--map",
        IMPORT_MAP,
        "--channel",
        "web",
        "--event-type",
        "purchase",
        "--out",
        str(data_dir),
    )
    if imported.ok and omni.run("train", "train", "--data", str(data_dir)).ok:
        for name, extra in (("default", []), ("exclude_purchased", ["--exclude-purchased"])):
            if extra and not exclude_flag:
                continue
            path = outputs / f"recommend_{name}.parquet"
            step = omni.run(
                f"recommend_{name}", "recommend", "--all", "--k", str(K), *extra, "--out", str(path)
            )
            lists[name] = pd.read_parquet(path) if step.ok and path.is_file() else None
    row = score_served(problem, train, lists["default"])
    row["exclude_purchased"] = (
        score_served(problem, train, lists["exclude_purchased"])
        if exclude_flag
        else "`omni recommend --help` has no --exclude-purchased"
    )
    row["cli"] = {
        "export": "user_id, item_id, rating, timestamp (ISO 8601 text, UTC) of the training split",
        "steps": omni.summary(),
    }
    return row


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument(
        "--data", type=Path, default=None, help="folder holding ml-100k.inter (default: the recbole package)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch folder of the served row (wiped first)"
    )
    parser.add_argument("--skip-served", action="store_true", help="leave out the served row (no CLI runs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    ratings, source = load_ratings(args.data)
    log(f"MovieLens 100k from {source}")
    train, test = stratified_split(ratings, ratio=0.75, filter_col=c.PRODUCT_ID, seed=SEED)
    problem = Problem.build(train, test)
    log(
        f"train {len(train)} / test {len(test)} ratings; {len(problem.rows)} users evaluated, "
        f"{len(problem.items)} items"
    )

    models: dict[str, dict] = {}
    models["popularity"] = problem.evaluate(problem.scores(PopularityScorer()))
    models["als"] = {
        **problem.evaluate(problem.scores(make_model("als", ALS_DEFAULT))),
        "config": ALS_DEFAULT,
    }
    models["ease"] = {
        **problem.evaluate(problem.scores(make_model("ease", EASE_DEFAULT))),
        "config": EASE_DEFAULT,
    }
    for name in ("popularity", "als", "ease"):
        log(f"test {name}: nDCG@{K} {models[name][f'ndcg@{K}']:.4f}")
    if not args.skip_served:
        tick = time.perf_counter()
        models["served"] = served_row(problem, train, args.workdir)
        models["served"]["seconds"] = round(time.perf_counter() - tick, 1)
        log(f"test served: nDCG@{K} {models['served'][f'ndcg@{K}']}")

    # hyper-parameters: chosen on a validation split of the training part only
    fit_part, val_part = stratified_split(train, ratio=0.75, filter_col=c.PRODUCT_ID, seed=VALIDATION_SEED)
    validation = Problem.build(fit_part, val_part)
    log(f"validation: {len(fit_part)} / {len(val_part)} ratings, {len(validation.rows)} users")
    best, grid = search(validation)
    log(
        f"chosen on validation: {best['model']} {json.dumps(best['config'])} nDCG@{K} {best[f'ndcg@{K}']:.4f}"
    )
    models["ours"] = {
        **problem.evaluate(fit_candidate(problem, best)),
        "config": {"model": best["model"], **best["config"]},
        "validation": {k: v for k, v in best.items() if k not in ("model", "config")},
    }
    log(f"test ours: nDCG@{K} {models['ours'][f'ndcg@{K}']:.4f}")

    result = {
        "dataset": "movielens-100k",
        "source": source,
        "split": "stratified by item 75/25 seed 42 (microsoft/recommenders python_stratified_split)",
        "protocol": (
            "all ratings relevant; top-10 with the user's training items removed; users in train and test "
            f"({len(problem.rows)}); MAP divides by the number of relevant test items; coverage over "
            f"{len(problem.items)} items"
        ),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}",
        "models": models,
        "published": PUBLISHED,
        "validation": {
            "split": f"stratified by item 75/25 seed {VALIDATION_SEED}, inside the training part",
            "selected_by": f"ndcg@{K}",
            "results": grid,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    from training.tracking import save_benchmark

    print(save_benchmark("movielens", result, args.out))
    return result


if __name__ == "__main__":
    main()
