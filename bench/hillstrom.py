"""Hillstrom e-mail benchmark: which e-mail (men's, women's or none) to send to whom, scored by IPW.

    python bench/hillstrom.py --out FILE [--data PATH] [--policy-out FILE] [--seeds 42,43,44,45,46]

Data: Kevin Hillstrom's MineThatData test, a real randomised experiment (64,000 customers, each
arm assigned with probability 1/3). Features: one-hot history_segment, zip_code, channel plus
recency, history, mens, womens, newbie. Arms: 0 = No E-Mail, 1 = Mens E-Mail, 2 = Womens E-Mail.

Protocol, per seed: a random 50/50 split stratified by arm; everything is learned on the first
half; on the second half each policy's mean visit, conversion and spend is estimated by inverse
propensity weighting (propensity 1/3) with a 95% normal CI. The evaluation half is never used to
choose anything.

Policies:
- mens_all, womens_all, none: one fixed arm for everyone;
- t_learner: a plain scikit-learn T-learner, one HistGradientBoostingClassifier (defaults) per
  arm on visit, each customer gets the arm with the highest predicted visit probability;
- ours: `MultiArmUpliftLearner` (X-learner, the module default) on visit, arms valued by
  `incremental_value` with margin 1 and no costs (an e-mail costs next to nothing, so the value
  maximised is the incremental visit rate), arbitrated by `ValueGuardedPolicy`: its decision to
  personalise rests on 5-fold cross-fitted IPW estimates inside the training half, and without
  a lower confidence bound above the best fixed arm it sends that arm to everyone. Its one-sided
  confidence is chosen as the engine's is (`confidence="validated"`: the level of 0.5-0.95 whose
  decisions earn the most on nested splits of those cross-fitted rows; it was 0.9).

Also: Qini curve and area (scikit-uplift's normalisation, plus a per-customer variant) for "any
e-mail vs none" on visit, scored by the predicted uplift of the best e-mail, for ours and the
T-learner; per-learner diagnostics (t, x, dr: cross-fitted gain over the best fixed arm inside
the training half, which is what the default learner was chosen on, and the evaluation-half value
of each learner's unguarded choice, for information only). Top-level "policies"/"qini_auc" are
the first seed's; "summary" holds mean/std over seeds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.decisions.uplift import (  # noqa: E402
    MultiArmUpliftLearner,
    ValueGuardedPolicy,
    cross_fit_outcomes,
    incremental_value,
    ipw_policy_gain,
    ipw_policy_value,
    qini_auc,
    qini_curve,
)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "hillstrom" / "hillstrom.csv"
DEFAULT_SEEDS = "42,43,44,45,46"
ARMS = ["No E-Mail", "Mens E-Mail", "Womens E-Mail"]  # index = arm id; 0 is the control
PROPENSITY = 1.0 / 3.0
OUTCOMES = ["visit", "conversion", "spend"]
CATEGORICAL = ["history_segment", "zip_code", "channel"]
NUMERIC = ["recency", "history", "mens", "womens", "newbie"]
FIXED = {"mens_all": 1, "womens_all": 2, "none": 0}
LEARNER_KINDS = ["t", "x", "dr"]
OUR_LEARNER = "x"  # the module default; see models/decisions/uplift.py for why
CROSSFIT_SPLITS = 5
# as the engine (`NextBestActionEngine(guard_confidence="validated")`): the guard's one-sided
# confidence is chosen on nested splits of the training half's cross-fitted rows
GUARD_CONFIDENCE = "validated"
QINI_POINTS = 101  # curve points kept in the JSON (evenly spaced in population share)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The raw frame, the feature matrix and the arm index per row (file order kept)."""
    df = pd.read_csv(path)
    unknown = set(df["segment"]) - set(ARMS)
    if unknown:
        raise ValueError(f"unexpected segment values {sorted(unknown)}")
    arm = df["segment"].map({name: i for i, name in enumerate(ARMS)}).to_numpy(np.int64)
    dummies = pd.get_dummies(df[CATEGORICAL].astype("category"), dtype=np.float64)
    features = pd.concat([df[NUMERIC].astype(np.float64), dummies], axis=1)
    return df, features.to_numpy(), arm


def evaluate(chosen: np.ndarray, arm: np.ndarray, outcomes: dict[str, np.ndarray]) -> dict:
    out = {}
    for name in OUTCOMES:
        value, (lo, hi) = ipw_policy_value(chosen, arm, outcomes[name], PROPENSITY)
        out[name] = {"value": round(value, 6), "ci95": [round(lo, 6), round(hi, 6)]}
    return out


def gain_vs(chosen, baseline, arm, outcomes) -> dict:
    out = {}
    for name in OUTCOMES:
        gain, (lo, hi) = ipw_policy_gain(chosen, baseline, arm, outcomes[name], PROPENSITY)
        out[name] = {"gain": round(gain, 6), "ci95": [round(lo, 6), round(hi, 6)]}
    return out


def qini_summary(score: np.ndarray, arm: np.ndarray, visit: np.ndarray) -> dict:
    treated = arm != 0
    x, y = qini_curve(score, treated, visit)
    # the raw curve has one point per distinct score; keep an evenly spaced sample for the JSON
    grid = np.linspace(0.0, 1.0, QINI_POINTS)
    n = x[-1]
    return {
        "auc": round(qini_auc(score, treated, visit), 6),
        "auc_per_customer": round(qini_auc(score, treated, visit, normalize="population"), 8),
        "curve": {
            "share_targeted": [round(float(g), 4) for g in grid],
            "incremental_visits": [round(float(v), 3) for v in np.interp(grid * n, x, y)],
        },
    }


def t_learner_plain(X_tr, arm_tr, visit_tr, X_ev, seed: int) -> np.ndarray:
    """(n_eval, 3) predicted visit probability per arm from one sklearn classifier per arm."""
    cols = []
    for k in range(len(ARMS)):
        model = HistGradientBoostingClassifier(random_state=seed)
        model.fit(X_tr[arm_tr == k], visit_tr[arm_tr == k])
        cols.append(model.predict_proba(X_ev)[:, 1])
    return np.column_stack(cols)


def guarded(kind: str, X_tr, arm_tr, visit_tr, seed: int):
    """Cross-fitted guard + final learner on the training half only."""
    learner = MultiArmUpliftLearner(learner=kind, outcome="binary", random_state=seed)
    known = np.full(len(ARMS), PROPENSITY)
    oof = cross_fit_outcomes(
        learner, X_tr, arm_tr, visit_tr, known, n_splits=CROSSFIT_SPLITS, random_state=seed
    )
    guard = ValueGuardedPolicy(confidence=GUARD_CONFIDENCE, random_state=seed).fit(
        incremental_value(oof), arm_tr, visit_tr, PROPENSITY
    )
    learner.fit(X_tr, arm_tr, visit_tr, propensity=known)
    return learner, guard


def guard_record(guard: ValueGuardedPolicy) -> dict:
    return {
        "fallback": guard.fallback_,
        "confidence": guard.confidence_,
        "confidence_scores": {str(k): round(v, 6) for k, v in guard.confidence_scores_.items()},
        "best_fixed_arm": ARMS[guard.best_fixed_arm_],
        "personalised_share": round(guard.personalised_share_, 4),
        "validation_gain": {k: np.round(v, 6).tolist() for k, v in guard.validation_gain_.items()},
        "validation_values": {
            k: {"value": round(v["value"], 6), "ci95": np.round(v["ci95"], 6).tolist()}
            for k, v in guard.validation_values_.items()
        },
    }


def run_seed(seed: int, X: np.ndarray, arm: np.ndarray, df: pd.DataFrame, diagnostics: bool) -> dict:
    started = time.perf_counter()
    idx_tr, idx_ev = train_test_split(np.arange(len(arm)), test_size=0.5, stratify=arm, random_state=seed)
    X_tr, X_ev, arm_tr, arm_ev = X[idx_tr], X[idx_ev], arm[idx_tr], arm[idx_ev]
    visit_tr = df["visit"].to_numpy(np.float64)[idx_tr]
    outcomes_ev = {name: df[name].to_numpy(np.float64)[idx_ev] for name in OUTCOMES}
    n_ev = len(idx_ev)

    policies: dict[str, np.ndarray] = {name: np.full(n_ev, k) for name, k in FIXED.items()}

    mu_t = t_learner_plain(X_tr, arm_tr, visit_tr, X_ev, seed)
    policies["t_learner"] = mu_t.argmax(axis=1)

    learner, guard = guarded(OUR_LEARNER, X_tr, arm_tr, visit_tr, seed)
    values_ev = incremental_value(learner.predict_outcomes(X_ev))
    policies["ours"] = guard.predict(values_ev)
    log(
        f"seed {seed}: guard fallback={guard.fallback_} (confidence {guard.confidence_}) "
        f"best fixed={ARMS[guard.best_fixed_arm_]} "
        f"cross-fitted gain {guard.validation_gain_['gain']:+.5f} "
        f"(lower bound {guard.validation_gain_['lower_bound']:+.5f})"
    )

    result = {
        "seed": seed,
        "n_train": len(idx_tr),
        "n_eval": n_ev,
        "policies": {name: evaluate(chosen, arm_ev, outcomes_ev) for name, chosen in policies.items()},
        "gain_vs_mens_all": {
            name: gain_vs(policies[name], policies["mens_all"], arm_ev, outcomes_ev)
            for name in ("ours", "t_learner", "womens_all")
        },
        "action_share": {
            name: {ARMS[k]: round(float(np.mean(chosen == k)), 4) for k in range(len(ARMS))}
            for name, chosen in policies.items()
            if name not in FIXED
        },
        "guard": guard_record(guard),
    }

    ours_score = learner.predict_uplift(X_ev).max(axis=1)
    t_score = mu_t[:, 1:].max(axis=1) - mu_t[:, 0]
    qini = {
        "ours": qini_summary(ours_score, arm_ev, outcomes_ev["visit"]),
        "t_learner": qini_summary(t_score, arm_ev, outcomes_ev["visit"]),
    }
    result["qini_auc"] = {name: q["auc"] for name, q in qini.items()}
    result["qini"] = qini

    if diagnostics:
        diag = {}
        for kind in LEARNER_KINDS:
            k_learner, k_guard = (
                (learner, guard) if kind == OUR_LEARNER else guarded(kind, X_tr, arm_tr, visit_tr, seed)
            )
            k_values = incremental_value(k_learner.predict_outcomes(X_ev))
            unguarded = k_values.argmax(axis=1)
            diag[kind] = {
                "train_crossfit_gain_vs_best_fixed": round(k_guard.validation_gain_["gain"], 6),
                "train_crossfit_lower_bound": round(k_guard.validation_gain_["lower_bound"], 6),
                "guard_fallback": k_guard.fallback_,
                "eval_visit_unguarded": evaluate(unguarded, arm_ev, outcomes_ev)["visit"],
                "eval_visit_guarded": evaluate(k_guard.predict(k_values), arm_ev, outcomes_ev)["visit"],
                "eval_unguarded_action_share": [
                    round(float(np.mean(unguarded == k)), 4) for k in range(len(ARMS))
                ],
            }
            log(
                f"  {kind:2s}: train cross-fitted gain {diag[kind]['train_crossfit_gain_vs_best_fixed']:+.5f}, "
                f"eval visit unguarded {diag[kind]['eval_visit_unguarded']['value']:.5f}"
            )
        result["learner_diagnostics"] = diag

    result["chosen_ours"] = (idx_ev, policies["ours"])
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def mean_std(values) -> dict:
    """Mean and sample standard deviation over seeds."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": round(float(values.mean()), 6), "std": round(std, 6)}


def summarise(seeds: list[dict]) -> dict:
    summary: dict = {
        name: {metric: mean_std([s["policies"][name][metric]["value"] for s in seeds]) for metric in OUTCOMES}
        for name in seeds[0]["policies"]
    }
    summary["qini_auc"] = {
        name: mean_std([s["qini_auc"][name] for s in seeds]) for name in ("ours", "t_learner")
    }
    summary["gain_vs_mens_all_visit"] = {
        name: mean_std([s["gain_vs_mens_all"][name]["visit"]["gain"] for s in seeds])
        for name in ("ours", "t_learner")
    }
    summary["ours_fallback_seeds"] = int(sum(s["guard"]["fallback"] for s in seeds))
    if "learner_diagnostics" in seeds[0]:
        diag = {}
        for kind in LEARNER_KINDS:
            rows = [s["learner_diagnostics"][kind] for s in seeds]
            diag[kind] = {
                "train_crossfit_gain_vs_best_fixed": mean_std(
                    [r["train_crossfit_gain_vs_best_fixed"] for r in rows]
                ),
                "eval_visit_unguarded": mean_std([r["eval_visit_unguarded"]["value"] for r in rows]),
                "eval_visit_guarded": mean_std([r["eval_visit_guarded"]["value"] for r in rows]),
            }
        summary["learner_diagnostics"] = diag
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="hillstrom.csv")
    parser.add_argument(
        "--policy-out", type=Path, help="CSV of our actions on the first seed's evaluation half"
    )
    parser.add_argument(
        "--seeds", default=DEFAULT_SEEDS, help="comma-separated split seeds; the first is reported on top"
    )
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the per-learner comparison")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    df, X, arm = load(args.data)
    log(f"{len(df)} customers, {X.shape[1]} features, seeds {seeds}")

    per_seed = [run_seed(seed, X, arm, df, diagnostics=not args.no_diagnostics) for seed in seeds]
    first = per_seed[0]
    if args.policy_out:
        idx_ev, chosen = first["chosen_ours"]
        order = np.argsort(idx_ev)
        args.policy_out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"row": idx_ev[order], "action": np.array(ARMS)[chosen[order]]}).to_csv(
            args.policy_out, index=False
        )
    for s in per_seed:
        del s["chosen_ours"]

    result = {
        "benchmark": "hillstrom",
        "protocol": "50/50 split stratified by arm; learn on the first half; IPW (propensity 1/3) on the second, 95% normal CI",
        "ours": {
            "learner": OUR_LEARNER,
            "value_maximised": "incremental visit probability (margin 1, no costs)",
            "guard": "ValueGuardedPolicy(confidence='validated': the one-sided level of 0.5-0.95 whose "
            "decisions earn the most on nested 3-fold splits) on 5-fold cross-fitted IPW inside the training half",
        },
        "seed": seeds[0],
        "policies": first["policies"],
        "qini_auc": first["qini_auc"],
        "summary": summarise(per_seed),
        "seeds": per_seed,
        "machine": "2 cores, 24 GB, no GPU",
        "platform": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "seconds": round(time.perf_counter() - started, 1),
    }
    from training.tracking import save_benchmark

    print(save_benchmark("hillstrom", result, args.out))
    return result


if __name__ == "__main__":
    main()
