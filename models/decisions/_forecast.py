"""The profiles' forecasts: predicted spend over the next 90 days and churn risk.

Predicted spend over the next 90 days and churn risk (probability of no purchase in the next 90
days): LightGBM models trained with a time split. Features are computed from the history before
t = as_of - 90 days only, labels from [t, as_of); 20 % of customers are held out to report the
metrics (against "the last 90 days repeat"), then the models are refitted on everyone and applied
to the features at `as_of`. Without 90 days of history before t they are skipped, with a note.
"""

from __future__ import annotations

from functools import partial

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.model_selection import train_test_split

# the LightGBM fits run on the Dask cluster of `omni train --dask-scheduler`, if any
from models.decisions.history import CustomerHistory
from models.fitting import fit_estimator, fit_pool, run_tasks
from models.timestamps import NAT_US, US_PER_DAY, to_us

_MAX_JOBS = 2


class _SpendChurnForecast:
    """The spend and churn forecasts of `models.decisions.profile.CustomerProfiles` (its fit
    calls `_fit_forecast`).

    Reads the profiles' parameters (horizon_days, LightGBM settings, random_state, n_jobs,
    fit_workers) and fitted `as_of_`, `frame_`, `features_`, `feature_names_`,
    `attribute_names_`; sets `forecast_features_`, `forecast_metrics_`, `boosters_` and the
    frame's `predicted_spend_90d` and `churn_risk`; its notes go to `notes_`.
    """

    def _lgbm_params(self) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "random_state": self.random_state,
            "n_jobs": min(max(1, self.n_jobs), _MAX_JOBS),
            "verbose": -1,
        }

    def _fit_forecast(self, history: CustomerHistory, ids: np.ndarray) -> None:
        """Spend and churn over `horizon_days`: features before t, labels from [t, t + horizon).

        Each target is learned on 80 % of the customers seen before t and judged on the other 20 %
        against its naive rule (spend: the last 90 days repeat; churn: no order in the last 90
        days). With customer attributes (`attr.*`) the model is also fitted with them, and they
        are kept only if they improve its score there (spend: MAE, churn: AUC). A model that
        does not beat its naive rule is not served: the naive rule is (churn: its churn rate on
        the training customers, per flag). The served models are then refitted on everyone.
        A target the data cannot support (no spend at all, nobody or everybody churned) is
        skipped with a note.
        """
        self.forecast_features_: dict[str, list[str]] = {}
        window = self._forecast_window(history, ids)
        if window is None:
            return
        churned = window["labels"]["churn"]
        stratify = churned if np.bincount(churned, minlength=2).min() >= 2 else None
        tr, te = train_test_split(
            np.arange(len(churned)), test_size=0.2, random_state=self.random_state, stratify=stratify
        )
        targets = self._forecast_targets(window["labels"], tr, te)
        if not targets:
            return
        base = [name for name in self.feature_names_ if name not in self.attribute_names_]
        feature_sets = {"without_attributes": base}
        if self.attribute_names_:
            feature_sets["with_attributes"] = list(self.feature_names_)
        fitted = self._fit_forecast_trials(window, targets, feature_sets, tr)
        served = self._choose_forecasts(window, targets, feature_sets, fitted, tr, te)
        self._serve_forecasts(window, targets, served, tr)

    def _forecast_window(self, history: CustomerHistory, ids: np.ndarray) -> dict | None:
        """The customers seen before t = as_of - horizon: their features at t (`x_t`, and as a
        float matrix `x`), the split time `t` and the labels from [t, as_of) (`labels`: spend,
        churned); None, with a note, without `horizon_days` of history before t or 200 customers."""
        horizon = pd.Timedelta(days=self.horizon_days)
        t = self.as_of_ - horizon
        first_event = self.frame_["first_event_us"].to_numpy()
        t_us = int(to_us(t)[0])
        known = (first_event != NAT_US) & (first_event < t_us)
        span_days = (t_us - first_event[known].min()) / US_PER_DAY if known.any() else 0.0
        if span_days < self.horizon_days or known.sum() < 200:
            self.notes_.append(
                f"predicted spend and churn risk skipped: they need {self.horizon_days} days of history "
                f"before t = as_of - {self.horizon_days} days and >= 200 customers seen by then "
                f"({span_days:.0f} days, {int(known.sum())} customers)"
            )
            return None
        train_ids = ids[known]
        x_t = history.features_at(train_ids, t)[self.feature_names_]
        codes = history._codes(train_ids)  # once: mapping string ids to codes is the slow part
        orders_t = history.orders.sums(codes, np.full(len(train_ids), t_us))
        as_of_us = int(to_us(self.as_of_)[0])
        orders_end = history.orders.sums(codes, np.full(len(train_ids), as_of_us))
        ret_t = history.returns.sums(codes, np.full(len(train_ids), t_us))[:, 0]
        ret_end = history.returns.sums(codes, np.full(len(train_ids), as_of_us))[:, 0]
        spend = np.maximum((orders_end[:, 1] - orders_t[:, 1]) - (ret_end - ret_t), 0.0)
        bought = (orders_end[:, 0] - orders_t[:, 0]) > 0
        churned = (~bought).astype(int)
        x = x_t.to_numpy(np.float64)
        return {"t": t, "x_t": x_t, "x": x, "labels": {"spend": spend, "churn": churned}}

    def _forecast_targets(self, labels: dict, tr: np.ndarray, te: np.ndarray) -> list[str]:
        """The targets both halves of the split can support ("spend", "churn"); a note for each
        one skipped."""
        spend, churned = labels["spend"], labels["churn"]
        targets = []
        if spend[tr].sum() > 0 and spend[te].sum() > 0:
            targets.append("spend")
        else:
            self.notes_.append(
                "predicted spend skipped: nobody spent anything in the last "
                f"{self.horizon_days} days before the profile time (no amounts, or no purchases then)"
            )
        if len(np.unique(churned[tr])) == 2 and len(np.unique(churned[te])) == 2:
            targets.append("churn")
        else:
            self.notes_.append(
                f"churn risk skipped: {'every' if churned.all() else 'no'} customer seen before t went "
                f"{self.horizon_days} days without a purchase, so there is nothing to tell apart"
            )
        return targets

    def _forecast_model(self, target: str):
        if target == "spend":
            return lgb.LGBMRegressor(objective="tweedie", **self._lgbm_params())
        return lgb.LGBMClassifier(objective="binary", **self._lgbm_params())

    def _fit_forecast_trials(self, window: dict, targets: list[str], feature_sets: dict, tr) -> dict:
        """{(target, feature set): model fitted on the training customers}."""
        x, labels = window["x"], window["labels"]
        column = {name: j for j, name in enumerate(self.feature_names_)}
        trials = [(target, name) for target in targets for name in feature_sets]
        # the fits are independent and seeded: run them on `fit_workers` threads (LightGBM
        # releases the GIL), the models are the same
        tasks = [
            partial(
                fit_estimator,
                self._forecast_model(target),
                x[np.ix_(tr, [column[f] for f in feature_sets[name]])],
                labels[target][tr],
            )
            for target, name in trials
        ]
        with fit_pool(self.fit_workers) as pool:
            return dict(zip(trials, run_tasks(tasks, pool), strict=True))

    def _choose_forecasts(
        self, window: dict, targets: list[str], feature_sets: dict, fitted: dict, tr, te
    ) -> dict[str, str]:
        """Scores each target's models on the validation customers against its naive rule, keeps
        the attributes only where they help, and returns {target: "model" or "naive"} (what is
        served); sets `forecast_metrics_` and `forecast_features_`."""
        x, x_t = window["x"], window["x_t"]
        spend, churned = window["labels"]["spend"], window["labels"]["churn"]
        column = {name: j for j, name in enumerate(self.feature_names_)}

        def score(target: str, name: str) -> tuple[float, np.ndarray]:
            X_te = x[np.ix_(te, [column[f] for f in feature_sets[name]])]
            model = fitted[(target, name)]
            if target == "spend":
                pred = model.predict(X_te)
                return -mean_absolute_error(spend[te], pred), pred
            pred = model.predict_proba(X_te)[:, 1]
            return roc_auc_score(churned[te], pred), pred

        metrics: dict = {
            "split_time": window["t"].isoformat(),
            "train_customers": int(len(tr)),
            "test_customers": int(len(te)),
            "churn_rate": float(churned[te].mean()),
        }
        naive_spend = x_t["spend_90d"].to_numpy()
        naive_flag = (x_t["orders_90d"].to_numpy() == 0).astype(float)
        served: dict[str, str] = {}
        for target in targets:
            scores = {name: score(target, name) for name in feature_sets}
            # attributes must earn their place: on a tie the model without them is kept
            chosen = max(feature_sets, key=lambda name: (scores[name][0], name == "without_attributes"))
            value, pred = scores[chosen]
            if target == "spend":
                naive_value = -mean_absolute_error(spend[te], naive_spend[te])
                metrics.update(
                    {
                        "spend_mae": -value,
                        "spend_mae_naive": -naive_value,
                        "spend_spearman": float(
                            pd.Series(pred).corr(pd.Series(spend[te]), method="spearman")
                        ),
                        "spend_mean_actual": float(spend[te].mean()),
                        "spend_mean_predicted": float(pred.mean()),
                    }
                )
            else:
                naive_value = roc_auc_score(churned[te], naive_flag[te])
                metrics.update(
                    {
                        "churn_auc": value,
                        "churn_auc_naive": naive_value,
                        "churn_brier": float(np.mean((pred - churned[te]) ** 2)),
                    }
                )
            if "with_attributes" in scores:
                self._note_attributes(target, scores, chosen, metrics)
            served[target] = "model" if value > naive_value else "naive"
            metrics[f"{target}_served"] = served[target]
            if served[target] == "naive":
                self.notes_.append(
                    f"{target} model did not beat its naive rule on the validation customers "
                    f"({'MAE' if target == 'spend' else 'AUC'} {abs(value):.4g} against {abs(naive_value):.4g}): "
                    "the naive rule is served"
                )
            self.forecast_features_[target] = list(feature_sets[chosen]) if served[target] == "model" else []
        self.forecast_metrics_ = metrics
        return served

    def _note_attributes(self, target: str, scores: dict, chosen: str, metrics: dict) -> None:
        """The target's validation score with and without the customer attributes: in the metrics
        and a note saying whether they were kept."""
        unit = "MAE" if target == "spend" else "AUC"
        sign = -1.0 if target == "spend" else 1.0
        with_value = sign * scores["with_attributes"][0]
        without_value = sign * scores["without_attributes"][0]
        metrics[f"{target}_{unit.lower()}_with_attributes"] = with_value
        metrics[f"{target}_{unit.lower()}_without_attributes"] = without_value
        kept = chosen == "with_attributes"
        self.notes_.append(
            f"customer attributes {'kept' if kept else 'left out'} for the {target} model "
            f"({unit} {with_value:.4g} with them, {without_value:.4g} without, on the validation "
            f"customers): {', '.join(self.attribute_names_)}"
        )

    def _serve_forecasts(self, window: dict, targets: list[str], served: dict[str, str], tr) -> None:
        """Refits the served models on every customer of the window, then looks forward from
        as_of: `predicted_spend_90d` and `churn_risk` from the model, or from the naive rule."""
        x, labels = window["x"], window["labels"]
        churned = labels["churn"]
        naive_flag = (window["x_t"]["orders_90d"].to_numpy() == 0).astype(float)
        column = {name: j for j, name in enumerate(self.feature_names_)}
        refits = [t_ for t_ in targets if served[t_] == "model"]
        tasks = [
            partial(
                fit_estimator,
                self._forecast_model(target),
                x[:, [column[f] for f in self.forecast_features_[target]]],
                labels[target],
            )
            for target in refits
        ]
        with fit_pool(self.fit_workers) as pool:
            models = dict(zip(refits, run_tasks(tasks, pool), strict=True))
        for target in targets:
            if target in models:
                now = self.features_[self.forecast_features_[target]].to_numpy(np.float64)
                model = models[target]
                if target == "spend":
                    self.frame_["predicted_spend_90d"] = model.predict(now)
                else:
                    self.frame_["churn_risk"] = model.predict_proba(now)[:, 1]
                self.boosters_[target] = model.booster_
            elif target == "spend":
                self.frame_["predicted_spend_90d"] = self.features_["spend_90d"].to_numpy(np.float64)
            else:
                # the naive flag as a probability: the churn rate of the training customers per flag
                rate = {
                    flag: float(churned[tr][naive_flag[tr] == flag].mean())
                    if (naive_flag[tr] == flag).any()
                    else float(churned[tr].mean())
                    for flag in (0.0, 1.0)
                }
                flag_now = (self.features_["orders_90d"].to_numpy() == 0).astype(float)
                self.frame_["churn_risk"] = np.where(flag_now == 1.0, rate[1.0], rate[0.0])
        self._frame_changed()
