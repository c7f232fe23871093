"""The channel model's engagement model: a hierarchical logistic regression. Its profile part is
one logistic regression per channel on the customer's cross-channel profile (whether and how much
they are active, their mix of event channels smoothed with `ACTIVITY_PRIOR_HOURS` pseudo hours at
the population's mix, purchases, recency, tenure, consent and identity flags; each input clipped
to the range seen in training), shrunk by a ridge towards one model pooled over the channels (so
a channel with few messages borrows from the rest):

    logit p(i, ch) = x_i · beta_ch  +  r_ich / (info_ich + tau)

The second term is the customer's own evidence on that channel, an empirical-Bayes effect:
r = engaged - sent * p and info = sent * p (1 - p) from their messages on the channel, and
tau = 1 / sigma^2 with sigma^2, the spread of customer × channel effects, estimated by the method
of moments (a customer with three messages moves a little, one with thirty a lot). Cross-channel
activity is what places a customer without messages (an app shopper reads push); the profile part
is fitted on every message, so that estimate rests on all customers, not on a few thin ones.

`EngagementGLM` is the part of `models.engagement.channel.ChannelModel` that fits and scores it;
its inputs are the history features (`models.engagement.channel_history`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from features import columns as c
from models.engagement.channel_attributes import attribute_feature_names
from models.timestamps import to_us

_MISSING = "missing:"  # prefix of a numeric attribute's missing-value indicator (engagement model)
# engagement model: hierarchical logistic regression + empirical-Bayes customer × channel effect
ACTIVITY_PRIOR_HOURS = 3.0  # pseudo active hours at the population's mix in smoothed activity shares
POOLED_RIDGE = 1.0  # ridge of the pooled model (standardised inputs)
# pull of each channel's coefficients towards the pooled ones: a prior sd of 0.1 per standard
# deviation of an input, which a few thousand messages on the channel overrule
GLM_RIDGE = 100.0
_GLM_ITER = 25
_MIN_SIGMA2, _MAX_SIGMA2 = 1e-4, 4.0
_CHUNK_ROWS = 1 << 18  # rows per chunk where a per-row matrix is built piece by piece
_NO_EVENT_DAYS = 3650.0  # "days since the last event" of a customer without events


class EngagementGLM:
    """The engagement model of `ChannelModel` (see the module docstring), mixed into it: fitted
    on the model's training rows by `_fit_engagement`, scored by `_engagement_logit`. It reads the
    model's `channels_`, `feature_names_` and `attribute_encoding_`, writes its calibration and
    training info beside the conversion model's, and notes its choice of the customer attributes
    with `_note_attributes`."""

    def _fit_engagement(self, rows: pd.DataFrame, fit_idx: np.ndarray, cal_idx: np.ndarray) -> None:
        """The engagement model (see the module docstring): a logistic regression per channel on
        the customer's cross-channel profile, ridge-shrunk towards one pooled over the channels,
        plus an empirical-Bayes customer × channel effect from the customer's own history on the
        channel; fitted on `fit_idx`, mapped to probabilities by isotonic regression on `cal_idx`.
        With customer attributes, fitted with and without them; the one with the higher AUC on
        the calibration rows (not fitted on) is kept."""
        y = rows["_y_engagement"].to_numpy(np.float64)
        frame = rows[self.feature_names_]
        self.population_mix_ = {}
        if "active_hours" in frame:
            active = frame["active_hours"].fillna(0.0).to_numpy()[fit_idx]
            for col in (name for name in self.feature_names_ if name.startswith("share_")):
                share = frame[col].fillna(0.0).to_numpy()[fit_idx]
                self.population_mix_[col] = float((share * active).sum() / max(active.sum(), 1e-12))
        inputs = _glm_feature_names(self.feature_names_, self.attribute_encoding_)
        plain = [name for name in inputs if not _is_attribute_input(name)]
        candidates = [plain] if len(plain) == len(inputs) else [plain, inputs]
        best, scores = None, []
        for names in candidates:
            self._fit_glm(frame, rows, y, fit_idx, names)
            logit = self._engagement_logit(frame)
            scores.append(_auc(y[cal_idx], logit[cal_idx]))
            if best is None or scores[-1] > best[0]:
                best = (scores[-1], self._glm_state(), logit)
        kept = len(candidates) > 1 and best[1]["glm_features_"] is candidates[1]
        if len(candidates) > 1:
            self._note_attributes("engagement", kept, "AUC", scores[0] if kept else scores[1], best[0])
            for name, value in best[1].items():
                setattr(self, name, value)
        self.attributes_used_["engagement"] = kept
        logit = best[2]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(logit[cal_idx], y[cal_idx])
        self.boosters_.pop("engagement", None)
        self.calibrators_["engagement"] = (
            np.asarray(iso.X_thresholds_, float),
            np.asarray(iso.y_thresholds_, float),
        )
        self.training_info_["engagement"] = {
            "rows": int(len(rows)),
            "fit_rows": int(len(fit_idx)),
            "calibration_rows": int(len(cal_idx)),
            "positive_rate": float(y.mean()),
            "model": "hierarchical logistic regression + empirical-Bayes customer x channel effect",
            "inputs": int(len(self.glm_features_)),
            "eb_sigma2": float(1.0 / self.eb_tau_) if np.isfinite(self.eb_tau_) else 0.0,
            "constant": False,
        }

    _GLM_STATE: tuple[str, ...] = (
        "glm_features_", "glm_coef_", "glm_mean_", "glm_scale_", "glm_low_", "glm_high_", "eb_tau_",
    )  # fmt: skip

    def _glm_state(self) -> dict:
        return {name: getattr(self, name) for name in self._GLM_STATE}

    def _fit_glm(self, frame, rows, y, fit_idx, inputs: list[str]) -> None:
        """The engagement model's coefficients and prior strength on the inputs `inputs`."""
        self.glm_features_ = inputs
        raw = _glm_inputs(frame, self.glm_features_, self.population_mix_, self.attribute_encoding_)
        # inputs are clipped to the range seen in training: a linear model must not extrapolate
        fit_raw = raw[fit_idx]
        self.glm_low_, self.glm_high_ = fit_raw.min(axis=0), fit_raw.max(axis=0)
        self.glm_mean_ = fit_raw.mean(axis=0)
        scale = fit_raw.std(axis=0)
        del fit_raw
        self.glm_scale_ = np.where(scale > 1e-9, scale, np.inf)  # a constant input is left out (z = 0)
        # [1, (raw - mean) / scale], computed in place: at a million customers each matrix of the
        # training rows is gigabytes (the same numbers as building it from temporaries)
        design = np.empty((len(raw), raw.shape[1] + 1))
        design[:, 0] = 1.0
        np.subtract(raw, self.glm_mean_, out=design[:, 1:])
        design[:, 1:] /= self.glm_scale_
        del raw
        code = frame["channel_code"].to_numpy().astype(np.int64)  # training rows: known channels
        n_ch, n_in = len(self.channels_), design.shape[1] - 1
        pooled_x = np.empty((len(fit_idx), n_ch + n_in))  # [one-hot channel, design[fit_idx, 1:]]
        for start in range(0, len(fit_idx), _CHUNK_ROWS):
            rows_at = fit_idx[start : start + _CHUNK_ROWS]
            pooled_x[start : start + len(rows_at), :n_ch] = np.eye(n_ch)[code[rows_at]]
            pooled_x[start : start + len(rows_at), n_ch:] = design[rows_at, 1:]
        pooled = _ridge_logistic(pooled_x, y[fit_idx], np.zeros(n_ch + n_in), POOLED_RIDGE)
        del pooled_x
        coef = np.zeros((n_ch + 1, n_in + 1))  # one row per channel, then the pooled row
        coef[n_ch] = np.concatenate([[pooled[:n_ch].mean()], pooled[n_ch:]])
        for j in range(n_ch):
            start = np.concatenate([[pooled[j]], pooled[n_ch:]])
            sel = fit_idx[code[fit_idx] == j]
            coef[j] = _ridge_logistic(design[sel], y[sel], start, GLM_RIDGE) if len(sel) else start
        self.glm_coef_ = coef

        # prior strength of the customer × channel effect: method of moments on each customer and
        # channel's history as of their last fitting row
        self.eb_tau_ = float("inf")
        profile_logit = self._profile_logit(frame)
        last = (
            pd.DataFrame({"customer": rows["_customer"].to_numpy()[fit_idx], "code": code[fit_idx]})
            .assign(_sent=to_us(rows["_sent"])[fit_idx], _row=fit_idx)
            .sort_values("_sent", kind="stable")
            .drop_duplicates(["customer", "code"], keep="last")["_row"]
            .to_numpy()
        )
        residual, info = _history_residual(frame.iloc[last], profile_logit[last])
        self.eb_tau_ = _eb_tau(residual, info)

    def _profile_logit(self, frame: pd.DataFrame) -> np.ndarray:
        """Log-odds of engagement from the customer's profile alone (the channel's coefficients;
        the pooled ones for a channel without its own)."""
        # z = (clip(raw) - mean) / scale in place, and the per-row coefficients a chunk of rows
        # at a time (the same numbers; one matrix of the rows instead of four)
        z = _glm_inputs(frame, self.glm_features_, self.population_mix_, self.attribute_encoding_)
        np.clip(z, self.glm_low_, self.glm_high_, out=z)
        z -= self.glm_mean_
        z /= self.glm_scale_
        code = frame["channel_code"].to_numpy(dtype=np.float64)
        row = np.where(np.isnan(code), len(self.glm_coef_) - 1, np.nan_to_num(code)).astype(np.int64)
        out = np.empty(len(row))
        for start in range(0, len(row), _CHUNK_ROWS):
            coef = self.glm_coef_[row[start : start + _CHUNK_ROWS]]
            out[start : start + len(coef)] = coef[:, 0] + np.einsum(
                "ij,ij->i", z[start : start + len(coef)], coef[:, 1:]
            )
        return out

    def _engagement_logit(self, frame: pd.DataFrame) -> np.ndarray:
        """Profile log-odds plus the shrunk customer × channel effect r / (info + tau)."""
        logit = self._profile_logit(frame)
        residual, info = _history_residual(frame, logit)
        return logit + residual / (info + self.eb_tau_)


def _glm_feature_names(feature_names: list[str], encoding: list[dict] | None = None) -> list[str]:
    """Inputs of the engagement model's profile part, from the history features available:
    activity (whether any, how much, the smoothed mix over event channels), purchases, recency,
    tenure, consent and identity flags, customer attributes (a numeric one with its missing
    indicator). Message history enters through the customer effect."""
    names: list[str] = []
    if "active_hours" in feature_names:
        names += ["has_activity", "log_active_hours"]
        names += [f"mix_{col[len('share_') :]}" for col in feature_names if col.startswith("share_")]
    for col in ("purchases", "days_since_event", "days_since_signup"):
        if col in feature_names:
            names.append(f"log_{col}")
    names += [col for col in feature_names if col.startswith(("consent_", "known_"))]
    for spec in encoding or []:
        if spec["kind"] == "numeric":
            names += [spec["column"]] + ([_MISSING + spec["column"]] if spec["has_missing"] else [])
    names += [
        name for name in attribute_feature_names(encoding or []) if "=" in name and name in feature_names
    ]
    return names


def _is_attribute_input(name: str) -> bool:
    return name.startswith((c.ATTRIBUTE_PREFIX, _MISSING))


def _glm_inputs(
    frame: pd.DataFrame,
    names: list[str],
    population_mix: dict[str, float],
    encoding: list[dict] | None = None,
) -> np.ndarray:
    """The inputs `names` (see `_glm_feature_names`) computed from history-feature columns.

    The mix is each event channel's share of the customer's active hours, smoothed with
    ACTIVITY_PRIOR_HOURS pseudo hours at the population's mix: two active hours are weak evidence.
    A numeric attribute's missing values take its median (in `encoding`), beside an indicator."""
    active = frame["active_hours"].fillna(0.0).to_numpy() if "active_hours" in frame else None
    medians = {spec["column"]: spec["median"] for spec in encoding or [] if spec["kind"] == "numeric"}
    columns = []
    for name in names:
        if name in medians:
            value = frame[name].fillna(medians[name]).to_numpy()
        elif name.startswith(_MISSING):
            value = frame[name[len(_MISSING) :]].isna().to_numpy()
        elif name == "has_activity":
            value = (active > 0).astype(np.float64)
        elif name == "log_active_hours":
            value = np.log1p(active)
        elif name.startswith("mix_"):
            col = f"share_{name[len('mix_') :]}"
            share = frame[col].fillna(0.0).to_numpy()
            prior = population_mix.get(col, 0.0)
            value = (share * active + ACTIVITY_PRIOR_HOURS * prior) / (active + ACTIVITY_PRIOR_HOURS)
        elif name == "log_purchases":
            value = np.log1p(frame["purchases"].fillna(0.0).clip(lower=0.0).to_numpy())
        elif name == "log_days_since_event":
            days = frame["days_since_event"].fillna(_NO_EVENT_DAYS).clip(0.0, _NO_EVENT_DAYS)
            value = np.log1p(days.to_numpy())
        elif name == "log_days_since_signup":
            value = np.log1p(frame["days_since_signup"].fillna(0.0).clip(lower=0.0).to_numpy())
        else:
            value = frame[name].fillna(0.0).to_numpy()
        columns.append(np.asarray(value, dtype=np.float64))
    return np.column_stack(columns) if columns else np.zeros((len(frame), 0))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (ties count half); NaN with one outcome only."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def _ridge_logistic(x: np.ndarray, y: np.ndarray, prior: np.ndarray, ridge: float) -> np.ndarray:
    """Logistic regression coefficients by Newton's method with the penalty ridge/2 |beta - prior|^2
    (a Gaussian prior centred on `prior`), started at `prior`."""
    beta = prior.astype(np.float64).copy()
    penalty = ridge * np.eye(len(beta))
    for _ in range(_GLM_ITER):
        p = _sigmoid(x @ beta)
        grad = x.T @ (y - p) - ridge * (beta - prior)
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-6:
            break
    return beta


def _history_residual(frame: pd.DataFrame, logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Own-channel evidence against the profile log-odds: r = engaged - sent * p and
    info = sent * p (1 - p) (zero without messages on the channel)."""
    sent = frame["own_sent"].fillna(0.0).to_numpy() if "own_sent" in frame else np.zeros(len(frame))
    engaged = frame["own_engaged"].fillna(0.0).to_numpy() if "own_engaged" in frame else np.zeros(len(frame))
    p = _sigmoid(logit)
    return engaged - sent * p, sent * p * (1.0 - p)


def _eb_tau(residual: np.ndarray, info: np.ndarray) -> float:
    """Prior precision 1/sigma^2 of the customer × channel log-odds effect by the method of moments:
    for an effect z, r ≈ info * z + noise of variance info, so E[r^2] = info + info^2 sigma^2."""
    has = info > 0
    if has.sum() < 10:
        return float("inf")
    sigma2 = float((residual[has] ** 2 - info[has]).sum() / (info[has] ** 2).sum())
    return 1.0 / float(np.clip(sigma2, _MIN_SIGMA2, _MAX_SIGMA2))
