"""Learning the next-best-action engine's uplift from the logged messages: the training rows, the
uplift learner, the exposure propensities and the guard.

Conversion window. A message converts within its offer's `duration_days` (the offer's validity,
optional in `offers`) when it has one, else within `conversion_window_days` (default 14); a
message is learned from only once its own window has closed.

Where the uplift comes from (the identification choice). The logged messages carry offers drawn
at random (an explore share of sends) or no offer, and a 5 % holdout got no message at all. The
holdout cannot serve as control for the messages' conversion label: that label is the messaging
system's attribution within 14 days, which has no counterpart for a customer who was not messaged,
and any-purchase-within-14-days is not comparable either (on the generated data messaged "sure
things" buy at 75 % against 32 % in the holdout, a gap no message causes). Instead the engine uses
*exposure*: a message that was not opened was not seen, so it acts like no message. The uplift
learner (`MultiArmUpliftLearner`, X-learner by default) is trained on arms

    0 = message not opened (control), 1 = opened, no offer, 1 + j = opened with offer j,

with features known at the send time (`models.decisions.history.CustomerHistory`, leak-free), and outcome
"converted within the window". Opening is not randomised, so it is adjusted for by the features
(customer-level: history, open and conversion rates); the offer is randomised by the logging
policy independently of the customer, so among opened messages the offer comparison is a
randomised one. The propensities of the exposure arms are estimated, never taken from the truth:
P(not opened | x) = 1 - p_open(x) from a cross-fitted LightGBM open model, P(arm 1 + j | x) =
p_open(x) * share of that arm among opened messages. They weight the guard's IPW estimates (the
X-learner only uses the arms' shares to blend its two estimates). Assumption to keep in mind: an
unopened message has no effect (it may, through the subject line or the preview).

Arms that fewer than `min_arm_rows` exposed messages carry are not learned and never sent (an
offer, or the plain message when every opened message carried an offer).

Without opens in the messages table the engine trains on sent messages with "no offer" as the base
arm (p_open = 1) and assumes a plain message has no effect: it can then only choose offers against
a plain message (`mode_ = "plain_base"`).

When every message carries an offer (a campaign system that logs only offer sends) there is no
message without offer to compare with: the offers are learned against each other and against
customers who were not contacted in the same period (`mode_ = "offers_control"`, see
`_control_training_data`): per message, one customer seen before its send time and without any
message within its window on either side is drawn as control at that same moment, and the outcome
of both is "a purchase within the window" from the events. Arms: 0 not contacted, then the offers
as sent (intent to treat, p_open = 1); P(sent | x) is estimated by a cross-fitted model. The
assumption, stated in the note: given the history features, whether a customer was contacted at
that moment is unrelated to whether they would have bought anyway. The note also gives what was
learned: the arms, their rows, and each arm's average uplift over the control with its 95 %
interval (a doubly robust estimate from the guard's cross-fitted outcomes; every mode reports it).

Customer attributes (`customers.attr.*`, `CustomerProfiles.attribute_names_`) are offered to the
uplift learners: the guard's cross-fitted outcomes are computed with and without them, and they
are kept only if the personalised policy's cross-fitted value is higher with them (note and
`metrics_["attributes"]`).

Guard: the NBA baseline is the best fixed action. `ValueGuardedPolicy` is fitted on cross-fitted
(out-of-fold) values of the training messages at the exposure level with the estimated
propensities: personalised choices are used only if their IPW gain over the best *fixed* arm (e.g.
"no action for everyone" or "the 10 % discount to everyone seen") has a one-sided lower confidence
bound above 0; otherwise the best fixed arm itself is served, to every customer the contact policy
(and the offer's eligibility rules) allows, whatever the model predicts for them (no arm at all
when the best fixed arm is "not exposed"). The reward carries a control variate (see
`_fit_guard`). The confidence is chosen on the training rows (`guard_confidence="validated"`):
nested splits of the guard's cross-fitted rows value the decisions each level of a grid (0.5 to
0.95) would take on held-out rows, and the level whose decisions earn the most is kept, the
strictest on ties. It was a fixed 0.8, set by looking at the generated data's truth (on ~100k
training messages there the gain's standard error is about 0.15 per message against true gains of
0.2-0.3); now the data at hand decide how much evidence personalising needs. Both values, the
personalised choice's and the best fixed action's, are in `metrics_["guard"]`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from features import columns as c
from features.io import Tables
from models._compiled_trees import CompiledStack, CompiledTrees
from models.decisions.history import CustomerHistory, message_windows_days
from models.decisions.profile import CustomerProfiles
from models.decisions.uplift import (
    _Z95,
    MultiArmUpliftLearner,
    ValueGuardedPolicy,
    cross_fit_outcomes,
)
from models.fitting import (  # on the Dask cluster of `omni train` when one is active
    fit_estimator,
    fit_pool,
    run_tasks,
)
from models.timestamps import NAT_US, US_PER_DAY, US_PER_SECOND, to_us

_MAX_JOBS = 2
MISSING = -1e9  # sentinel for unknown feature values (see `_model_matrix`)
CONTROL_DRAWS = 10  # tries per message to find a customer not contacted around its send time


# ----------------------------------------------------------------------------------------------
# Uplift predictions from saved LightGBM boosters
class _BoosterUplift:
    """`MultiArmUpliftLearner.predict_outcomes` from the learner's LightGBM boosters.

    The engine predicts through this both right after fitting and after loading, so a saved and
    reloaded engine decides exactly as the one that was fitted.
    """

    def __init__(self, kind: str, outcomes: list, effects: list, arm_share: np.ndarray, n_jobs: int = 1):
        self.kind = kind
        self.outcomes = outcomes  # Booster, or a float for a one-class model
        self.effects = effects  # x: (on_control, on_treated) pairs; dr: boosters; t: []
        self.arm_share = np.asarray(arm_share, dtype=np.float64)
        self.n_jobs = n_jobs

    @classmethod
    def from_learner(cls, learner: MultiArmUpliftLearner) -> _BoosterUplift:
        outcomes = []
        for model in learner.outcome_models_:
            if hasattr(model, "classes_") and len(model.classes_) < 2:
                outcomes.append(float(model.classes_[0]))
            else:
                outcomes.append(model.booster_)
        if learner.learner == "x":
            effects = [(a.booster_, b.booster_) for a, b in learner.effect_models_]
        elif learner.learner == "dr":
            effects = [m.booster_ for m in learner.effect_models_]
        else:
            effects = []
        return cls(learner.learner, outcomes, effects, learner.arm_share_, learner.n_jobs)

    def _predict(self, model, X: np.ndarray) -> np.ndarray:
        if isinstance(model, float):
            return np.full(len(X), model)
        if len(X) == 1:
            # a request: `Booster.predict` sets up a C++ predictor on every call (~100 µs, 10+
            # calls per decision); the compiled trees give the same values in a few µs
            compiled = self._compiled(model)
            if compiled is not None:
                return compiled.predict(X)
        return model.predict(X, num_threads=min(max(1, self.n_jobs), _MAX_JOBS))

    def _compiled(self, model) -> CompiledTrees | None:
        cache = self.__dict__.setdefault("_compiled_cache", {})
        key = id(model)
        found = cache.get(key)
        if found is None or found[0] is not model:
            # built once per booster (two threads racing build two, one is dropped: harmless)
            found = (model, CompiledTrees.of(model, model.best_iteration))
            cache[key] = found
        return found[1]

    def __getstate__(self) -> dict:
        # compiled once per process, on first use
        state = self.__dict__.copy()
        state.pop("_compiled_cache", None)
        state.pop("_stack_cache", None)
        return state

    def _boosters(self) -> list:
        """Every booster of the outcomes and effects, in a fixed order (floats left out)."""
        found = []
        for model in [*self.outcomes, *self.effects]:
            for part in model if isinstance(model, tuple) else (model,):
                if not isinstance(part, float):
                    found.append(part)
        return found

    def _stacked(self) -> tuple[CompiledStack, dict[int, int]] | None:
        """All boosters compiled as one stack and each one's column, or None when one of them
        is not compiled (it then keeps `Booster.predict`, and so do the others)."""
        boosters = self._boosters()
        kept = self.__dict__.get("_stack_cache")
        if (
            kept is not None
            and len(kept[0]) == len(boosters)
            and all(a is b for a, b in zip(kept[0], boosters, strict=True))
        ):
            return kept[1]
        compiled = [self._compiled(b) for b in boosters]
        stacked = None
        if (
            boosters
            and all(cm is not None for cm in compiled)
            and len({cm.n_features for cm in compiled}) == 1
        ):
            stacked = (CompiledStack(compiled), {id(b): j for j, b in enumerate(boosters)})
        self._stack_cache = (boosters, stacked)
        return stacked

    def predict_outcomes(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        stacked = self._stacked() if len(X) == 1 else None
        if stacked is not None:
            return self._one_row_outcomes(X, *stacked)
        K = len(self.outcomes)
        if self.kind == "t":
            out = np.column_stack([self._predict(m, X) for m in self.outcomes])
        else:
            mu0 = self._predict(self.outcomes[0], X)
            out = np.empty((len(X), K))
            out[:, 0] = mu0
            for k in range(1, K):
                if self.kind == "x":
                    on_control, on_treated = self.effects[k - 1]
                    g = self.arm_share[k] / (self.arm_share[0] + self.arm_share[k])
                    tau = g * self._predict(on_control, X) + (1.0 - g) * self._predict(on_treated, X)
                else:
                    tau = self._predict(self.effects[k - 1], X)
                out[:, k] = mu0 + tau
        return np.clip(out, 0.0, 1.0)

    def _one_row_outcomes(self, X: np.ndarray, stack: CompiledStack, column: dict[int, int]) -> np.ndarray:
        """`predict_outcomes` of one row: every booster in one compiled call and the arms'
        arithmetic over arrays of arms (the same operations, element by element, as the loop
        over arms above: equal values)."""
        values = stack.predict(X)[0]

        def of(models) -> np.ndarray:
            return np.array([m if isinstance(m, float) else values[column[id(m)]] for m in models])

        if self.kind == "t":
            return np.clip(of(self.outcomes)[None, :], 0.0, 1.0)
        mu0 = of(self.outcomes[:1])
        if self.kind == "x":
            share = self.arm_share[1 : len(self.outcomes)]
            g = share / (self.arm_share[0] + share)
            tau = g * of([pair[0] for pair in self.effects]) + (1.0 - g) * of(
                [pair[1] for pair in self.effects]
            )
        else:
            tau = of(self.effects)
        return np.clip(np.concatenate([mu0, mu0 + tau])[None, :], 0.0, 1.0)

    def save(self, folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        outcome_files = []
        for k, model in enumerate(self.outcomes):
            if isinstance(model, float):
                outcome_files.append(model)
            else:
                name = f"outcome_{k}.lgb.txt"
                model.save_model(str(folder / name))
                outcome_files.append(name)
        effect_files = []
        for k, model in enumerate(self.effects, start=1):
            if isinstance(model, tuple):
                names = (f"effect_{k}_on_control.lgb.txt", f"effect_{k}_on_treated.lgb.txt")
                model[0].save_model(str(folder / names[0]))
                model[1].save_model(str(folder / names[1]))
                effect_files.append(list(names))
            else:
                name = f"effect_{k}.lgb.txt"
                model.save_model(str(folder / name))
                effect_files.append(name)
        return {
            "kind": self.kind,
            "outcomes": outcome_files,
            "effects": effect_files,
            "arm_share": self.arm_share.tolist(),
        }

    @classmethod
    def load(cls, folder: Path, meta: dict, n_jobs: int = 1) -> _BoosterUplift:
        def booster(name):
            return lgb.Booster(model_file=str(folder / name))

        outcomes = [float(x) if isinstance(x, int | float) else booster(x) for x in meta["outcomes"]]
        effects = [
            tuple(booster(n) for n in e) if isinstance(e, list) else booster(e) for e in meta["effects"]
        ]
        return cls(meta["kind"], outcomes, effects, np.asarray(meta["arm_share"]), n_jobs)


# ----------------------------------------------------------------------------------------------
# The training rows, the uplift learner and the guard
class _LearningFromMessages:
    """How `models.decisions.nba.NextBestActionEngine` (its base) learns from the logged messages.

    Reads the engine's parameters and its policy_, offer_ids_, offer_kinds_, offer_cost_table_,
    feature_names_, notes_ and metrics_; sets mode_, arm_names_, arm_costs_, learner_arms_,
    offer_ids_, offer_kinds_, learner_, uplift_, guard_ and feature_names_. Uses the engine's
    `_rules_mode` (no uplift can be learned) and `_order_value`.
    """

    def _history(self, tables: Tables, profiles: CustomerProfiles) -> CustomerHistory:
        history = getattr(profiles, "history_", None)
        if history is not None and history.as_of == profiles.as_of_:
            return history
        return CustomerHistory(tables, profiles.as_of_, profiles.conversion_window_days)

    def training_data(
        self, tables: Tables, profiles: CustomerProfiles, train_customers=None, sent_from=None
    ) -> dict | None:
        """The uplift training rows: one per message whose conversion window (its offer's
        `duration_days`, else `conversion_window_days`) closed before the profiles' time (and
        that was sent at or after `sent_from`, when given: the champion gate's new window).

        Returns X (every profile feature, attributes included, at the send time), names (the
        columns of X), arm (learner arm), y (converted within the window), opened (exposed: opened,
        or sent in the intent-to-treat modes), order_value, learner_arms (the engine arm of each
        learner arm), arm_labels (their names), costs (currency per redemption per learner arm),
        customer_id, sent_us and window_us (the row's moment and window, µs), channel (the
        message's; None for a control row); or None, with a
        note, when no uplift can be learned. Sets mode_,
        offer_ids_, offer_kinds_, arm_names_, arm_costs_.
        """
        messages = tables.messages
        as_of_us = int(to_us(profiles.as_of_)[0])
        windows = message_windows_days(messages, tables.offers, self.conversion_window_days)
        sent_us = to_us(messages[c.SENT_TS])
        keep = (sent_us != NAT_US) & (sent_us + (windows * US_PER_DAY).astype(np.int64) < as_of_us)
        if sent_from is not None:
            keep &= sent_us >= int(to_us(pd.Timestamp(sent_from))[0])
        if train_customers is not None:
            train = pd.Index(np.asarray(train_customers, dtype=str))
            keep &= messages[c.CUSTOMER_ID].astype(str).isin(train).to_numpy()
        offer_col = (
            messages[c.OFFER_ID] if c.OFFER_ID in messages else pd.Series(np.nan, index=messages.index)
        )
        known_offer = (offer_col.isna() | offer_col.astype(str).isin(self.offer_ids_)).to_numpy()
        if (keep & ~known_offer).any():
            self.notes_.append(
                f"{int((keep & ~known_offer).sum())} messages with offers not in the offers table were left out"
            )
        keep &= known_offer
        rows = messages.loc[keep].assign(_window_days=windows[keep])
        if self.max_training_messages is not None and len(rows) > self.max_training_messages:
            rows = rows.sample(self.max_training_messages, random_state=self.random_state).sort_index()
        if len(rows) == 0:
            self._rules_mode(
                "no message's conversion window closed before the profile time: no uplift can be learned "
                "yet; only replenishment reminders and win-backs, valued with assumed priors"
            )
            return None
        window_us = (rows["_window_days"].to_numpy() * US_PER_DAY).astype(np.int64)
        offer_idx = np.asarray(
            pd.Categorical(rows[c.OFFER_ID].astype(object), categories=self.offer_ids_).codes
            if c.OFFER_ID in rows
            else np.full(len(rows), -1),
            dtype=np.int64,
        )
        if self.offer_ids_ and (offer_idx >= 0).all():
            return self._control_training_data(tables, profiles, rows, offer_idx, window_us, train_customers)

        has_opens = c.OPENED_TS in rows and rows[c.OPENED_TS].notna().any()
        self.mode_ = "uplift" if has_opens else "plain_base"
        opened = rows[c.OPENED_TS].notna().to_numpy() if has_opens else np.ones(len(rows), dtype=bool)
        converted = rows[c.CONVERTED_TS] if c.CONVERTED_TS in rows else pd.Series(pd.NaT, index=rows.index)
        converted_us = to_us(converted)
        y = ((converted_us != NAT_US) & (converted_us < to_us(rows[c.SENT_TS]) + window_us)).astype(
            np.float64
        )
        # arms in the engine's numbering: 0 not exposed (unopened), 1 plain message, 2 + j offer j
        engine_arm = offer_idx + 2
        if self.mode_ == "uplift":
            engine_arm = np.where(opened, engine_arm, 0)
            control, treated = 0, [1, *range(2, 2 + len(self.offer_ids_))]
        else:
            self.notes_.append(
                "messages carry no opens: offers are learned against a message without offer (the base "
                "arm), every message counts as seen (p_open = 1) and a plain message is assumed to have "
                "no effect, so a message without offer is never sent for its own sake"
            )
            control, treated = 1, list(range(2, 2 + len(self.offer_ids_)))
        return self._learnable(tables, profiles, rows, engine_arm, control, treated, y, opened)

    def _learnable(
        self, tables, profiles, rows, engine_arm, control, treated, y, opened, X=None
    ) -> dict | None:
        """Keeps the arms with at least `min_arm_rows` rows (the control must have them too) and
        builds the training dict (see `training_data`)."""
        seen = "opened " if self.mode_ == "uplift" else ""
        n_engine = 2 + len(self.offer_ids_)
        counts = np.bincount(engine_arm, minlength=n_engine)
        learned = [k for k in treated if counts[k] >= self.min_arm_rows]
        # the arms' names in the learner's terms, by engine arm
        labels = {
            "uplift": ["unopened", "opened_plain", *(f"opened_{o}" for o in self.offer_ids_)],
            "plain_base": ["none", "plain", *self.offer_ids_],
            "offers_control": ["not_contacted", "plain", *self.offer_ids_],
        }[self.mode_]
        dropped = [labels[k] for k in treated if k not in learned]
        if counts[control] < self.min_arm_rows or not learned or len(np.unique(y)) < 2:
            self._rules_mode(
                "too little message history to learn uplift: every arm needs "
                f"{self.min_arm_rows} {seen}messages and both outcomes must occur ("
                + ", ".join(f"{labels[k]}: {int(counts[k])}" for k in [control, *treated])
                + f"; conversions {int(y.sum())} of {len(y)}); only replenishment reminders and win-backs are "
                "decided, valued with assumed priors"
            )
            return None
        if dropped:
            self.notes_.append(
                f"arms with fewer than {self.min_arm_rows} {seen}messages are not sent (no evidence of their "
                f"effect): {', '.join(dropped)}"
            )
        keep_rows = np.isin(engine_arm, [control, *learned])
        offers_kept = [k - 2 for k in learned if k >= 2]
        # renumber the engine's arms to the offers kept: none, plain, kept offers
        renumber = np.full(n_engine, -1, dtype=np.int64)
        renumber[:2] = [0, 1]
        renumber[np.asarray([k for k in learned if k >= 2], dtype=np.int64)] = 2 + np.arange(len(offers_kept))
        learner_arms = [int(renumber[k]) for k in [control, *learned]]
        to_learner = np.full(n_engine, -1, dtype=np.int64)
        to_learner[[control, *learned]] = np.arange(1 + len(learned))
        arm = to_learner[engine_arm[keep_rows]]
        rows = rows.loc[keep_rows] if X is None else rows[keep_rows]
        self.offer_ids_ = [self.offer_ids_[j] for j in offers_kept]
        self.offer_kinds_ = [self.offer_kinds_[j] for j in offers_kept]
        self.arm_names_ = ["none", "plain", *self.offer_ids_]
        self.arm_costs_ = np.array([0.0, 0.0, *(self.offer_cost_table_[o] for o in self.offer_ids_)])
        self.learner_arms_ = learner_arms
        if X is None:
            history = self._history(tables, profiles)
            features = history.features_at(rows[c.CUSTOMER_ID].to_numpy(), rows[c.SENT_TS])
            names = list(profiles.feature_names_)
            X = _model_matrix(features, names)
            order_value = self._order_value(features)
            customer_id = rows[c.CUSTOMER_ID].astype(str).to_numpy()
            sent_us = to_us(rows[c.SENT_TS])
            window_us = (rows["_window_days"].to_numpy() * US_PER_DAY).astype(np.int64)
            channel = rows[c.CHANNEL].astype(object).to_numpy()
        else:
            X, names, order_value, customer_id, sent_us, window_us, channel = (
                X["X"][keep_rows],
                X["names"],
                X["order_value"][keep_rows],
                X["customer_id"][keep_rows],
                X["sent_us"][keep_rows],
                X["window_us"][keep_rows],
                X["channel"][keep_rows],
            )
        arm_labels = [labels[k] for k in [control, *learned]]
        return {
            "X": X,
            "names": names,
            "arm": arm,
            "y": y[keep_rows],
            "opened": opened[keep_rows],
            "order_value": order_value,
            "learner_arms": learner_arms,
            "arm_labels": arm_labels,
            "costs": self.arm_costs_[learner_arms],
            "customer_id": customer_id,
            "sent_us": sent_us,
            "window_us": window_us,
            "channel": channel,
        }

    def _control_training_data(
        self, tables, profiles, rows, offer_idx, window_us, train_customers
    ) -> dict | None:
        """Every message carries an offer: the offers against each other and against customers
        who were not contacted in the same period.

        Control: for every message, one customer drawn at random among those seen before its send
        time t (an event or sign-up) who got no message within its window on either side of t
        (|sent - t| <= window), at the same moment t and with the same window (matched in time).
        The outcome of both is "a purchase (events) within the window after t": the messaging
        system's attribution has no counterpart for a customer who was not messaged. Arms: 0 not
        contacted, 1 + j offer j (sent, opened or not: intent to treat, p_open = 1). P(sent | x)
        comes from a cross-fitted model of message rows against control rows, the offer's share
        among sends from the data. Assumption: given the history features at t, whether a customer
        was contacted then is unrelated to whether they would have bought anyway.
        """
        self.mode_ = "offers_control"
        history = self._history(tables, profiles)
        t_us = to_us(rows[c.SENT_TS])
        msg_codes = history._codes(rows[c.CUSTOMER_ID].astype(str))
        universe = np.arange(len(history.customer_index), dtype=np.int64)
        if train_customers is not None:
            universe = history._codes(pd.unique(np.asarray(train_customers, dtype=str)).astype(object))
            universe = universe[universe < len(history.customer_index)]
        rng = np.random.default_rng(self.random_state)
        control_codes = np.full(len(rows), -1, dtype=np.int64)
        pending = np.arange(len(rows))
        for _ in range(CONTROL_DRAWS):
            if len(pending) == 0 or len(universe) == 0:
                break
            candidate = universe[rng.integers(len(universe), size=len(pending))]
            t, w = t_us[pending], window_us[pending]
            # messages sent within [t - w, t + w] (the stream counts rows strictly before a second)
            near = (
                history.sent.sums(candidate, t + w + US_PER_SECOND)[:, 0]
                - history.sent.sums(candidate, t - w)[:, 0]
            )
            seen = history.events.first_before(candidate, t) != NAT_US
            signup = history.signup_us[candidate]
            seen |= (signup != NAT_US) & (signup < t)
            ok = (near == 0) & seen
            control_codes[pending[ok]] = candidate[ok]
            pending = pending[~ok]
        matched = control_codes >= 0
        n_control = int(matched.sum())
        names = list(profiles.feature_names_)
        codes = np.concatenate([msg_codes, control_codes[matched]])
        times = np.concatenate([t_us, t_us[matched]])
        windows = np.concatenate([window_us, window_us[matched]])
        # a purchase (an order) within the window after t, from the events, for both kinds of rows
        orders = history.orders.sums(codes, times + windows)[:, 0] - history.orders.sums(codes, times)[:, 0]
        y = (orders > 0).astype(np.float64)
        ids = np.concatenate(
            [
                rows[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object),
                history.customer_index.to_numpy(dtype=object)[control_codes[matched]],
            ]
        )
        features = history.features_at(
            ids, pd.DatetimeIndex(times.astype("datetime64[us]")).tz_localize("UTC")
        )
        engine_arm = np.concatenate([offer_idx + 2, np.zeros(n_control, dtype=np.int64)])
        sent = np.concatenate([np.ones(len(rows), dtype=bool), np.zeros(n_control, dtype=bool)])
        built = {
            "X": _model_matrix(features, names),
            "names": names,
            "order_value": self._order_value(features),
            "customer_id": ids.astype(str),
            "sent_us": times,
            "window_us": windows,
            "channel": np.concatenate(
                [rows[c.CHANNEL].astype(object).to_numpy(), np.full(n_control, None, dtype=object)]
            ),
        }
        self.metrics_["control"] = {
            "messages": int(len(rows)),
            "control_rows": n_control,
            "unmatched_messages": int(len(rows) - n_control),
            "purchase_rate_sent": float(y[: len(rows)].mean()),
            "purchase_rate_control": float(y[len(rows) :].mean()) if n_control else float("nan"),
        }
        treated = list(range(2, 2 + len(self.offer_ids_)))
        data = self._learnable(tables, profiles, np.arange(len(y)), engine_arm, 0, treated, y, sent, X=built)
        if data is not None:
            self.notes_.append(
                "every message carries an offer: the offers are learned against each other and against "
                f"{n_control} control rows, customers without any message within the window on either side "
                "of a message's send time, one drawn per message at the same moment "
                f"({len(rows) - n_control} messages found none); outcome for both: a purchase within the "
                "window (the offer's duration_days, else the default window) from the events, an offer "
                "counting as received when sent. Assumption: given their purchase and message history, "
                "whether customers were contacted at that moment is unrelated to whether they would have "
                "bought anyway"
            )
        return data

    def _fit_uplift(self, tables: Tables, profiles: CustomerProfiles, train_customers, attributes) -> None:
        data = self.training_data(tables, profiles, train_customers)
        if data is None:
            return
        arm, y, opened = data["arm"], data["y"], data["opened"]
        n_arms = len(data["learner_arms"])
        base_cols = [data["names"].index(f) for f in self.feature_names_]
        with fit_pool(self.fit_workers) as pool:
            propensity = self._exposure_propensity(data["X"][:, base_cols], arm, opened, n_arms, pool)
            candidates = {"without_attributes": self.feature_names_}
            if attributes and self.guard:
                candidates["with_attributes"] = [*self.feature_names_, *attributes]
            oofs = {}
            for label, names in candidates.items():
                X = data["X"][:, [data["names"].index(f) for f in names]]
                oofs[label] = self._guard_outcomes(X, arm, y, propensity, pool) if self.guard else None
            chosen = "without_attributes"
            if len(candidates) > 1:
                # the personalised policy's cross-fitted value with and without the attributes
                worth = {
                    label: ValueGuardedPolicy(confidence=0.5)
                    .fit(*self._guard_inputs(data, oof, propensity))
                    .validation_values_["personalised"]["value"]
                    for label, oof in oofs.items()
                }
                chosen = (
                    "with_attributes" if worth["with_attributes"] > worth["without_attributes"] else chosen
                )
                self.metrics_["attributes"] = {
                    "candidates": list(attributes),
                    "kept": chosen == "with_attributes",
                    "personalised_value_with": worth["with_attributes"],
                    "personalised_value_without": worth["without_attributes"],
                }
                self.notes_.append(
                    f"customer attributes {'kept' if chosen == 'with_attributes' else 'left out'} for uplift: "
                    f"the personalised policy's cross-fitted value per message is {worth['with_attributes']:.4g} "
                    f"with them, {worth['without_attributes']:.4g} without ({', '.join(attributes)})"
                )
            self.feature_names_ = list(candidates[chosen])
            X = data["X"][:, [data["names"].index(f) for f in self.feature_names_]]
            learner = MultiArmUpliftLearner(
                learner=self.learner, random_state=self.random_state, n_jobs=self.n_jobs
            )
            learner.fit(X, arm, y, propensity=propensity)
        self.learner_ = learner
        self.uplift_ = _BoosterUplift.from_learner(learner)
        labels = data["arm_labels"]
        counts = np.bincount(arm, minlength=n_arms)
        self.metrics_.update(
            {
                "mode": self.mode_,
                "training_messages": int(opened.sum()) if self.mode_ == "offers_control" else int(len(arm)),
                "training_rows": int(len(arm)),
                "arms": {name: int(k) for name, k in zip(labels, counts, strict=True)},
                "conversion_rate_by_arm": {name: float(y[arm == k].mean()) for k, name in enumerate(labels)},
                "open_rate": float(opened.mean()) if self.mode_ != "offers_control" else 1.0,
            }
        )
        if self.guard:
            oof = oofs[chosen]
            self._arm_uplift(data, oof, propensity)
            self._fit_guard(data, propensity, oof)

    def _exposure_propensity(self, X, arm, exposed, n_arms: int, pool=None) -> np.ndarray:
        """(n, K) estimated probabilities of each learner arm given x (never from the truth).

        Arm 0 is "not exposed" (unopened, or not contacted) in the uplift and offers_control
        modes: P(arm 0 | x) = 1 - P(exposed | x) from a cross-fitted LightGBM model, P(arm k | x) =
        P(exposed | x) × the share of arm k among exposed rows. In plain_base every row is a sent
        message: the arms' shares are the propensities (offers assigned independently of x)."""
        n = len(arm)
        if self.mode_ == "plain_base":
            share = np.bincount(arm, minlength=n_arms) / n
            return np.broadcast_to(share, (n, n_arms)).copy()
        p_open = np.empty(n)
        folds = StratifiedKFold(3, shuffle=True, random_state=self.random_state)
        params = {
            "n_estimators": 150,
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_child_samples": max(20, n // 200),
            "subsample": 0.8,
            "subsample_freq": 1,
            "random_state": self.random_state,
            "n_jobs": min(max(1, self.n_jobs), _MAX_JOBS),
            "verbose": -1,
        }

        def fold(tr: np.ndarray, te: np.ndarray) -> None:
            model = fit_estimator(lgb.LGBMClassifier(objective="binary", **params), X[tr], exposed[tr])
            p_open[te] = model.predict_proba(X[te])[:, 1]

        run_tasks([partial(fold, tr, te) for tr, te in folds.split(X, exposed)], pool)
        p_open = np.clip(p_open, 0.01, 0.99)
        share_exposed = np.bincount(arm[exposed], minlength=n_arms)[1:] / max(int(exposed.sum()), 1)
        out = np.empty((n, n_arms))
        out[:, 0] = 1.0 - p_open
        out[:, 1:] = p_open[:, None] * share_exposed[None, :]
        self.metrics_["open_model_mean_p" if self.mode_ == "uplift" else "sent_model_mean_p"] = float(
            p_open.mean()
        )
        return np.maximum(out, 1e-3)

    def _guard_outcomes(self, X, arm, y, propensity: np.ndarray, pool=None) -> np.ndarray:
        """Cross-fitted (out-of-fold) outcomes per arm of the training rows, for the guard."""
        learner = MultiArmUpliftLearner(
            learner=self.learner, random_state=self.random_state, n_jobs=self.n_jobs
        )
        return cross_fit_outcomes(
            learner,
            X,
            arm,
            y,
            propensity,
            n_splits=self.guard_folds,
            random_state=self.random_state,
            executor=pool,
        )

    def _guard_inputs(self, data: dict, oof: np.ndarray, propensity: np.ndarray):
        """(values, arm, reward, propensity) for `ValueGuardedPolicy.fit`, and the baseline b(x).

        Values and rewards are profits per row in currency: incremental margin (uplift × order
        value × margin rate) minus the offer's cost (`offers.cost`, currency per redemption) on
        every conversion. The reward carries a control variate, the cross-fitted predicted profit
        of arm 0, b(x) (see `_fit_guard`)."""
        arm, y, order_value = data["arm"], data["y"], data["order_value"]
        costs = np.asarray(data["costs"], dtype=np.float64)
        margin = self.policy_.margin_rate * order_value
        values = (oof - oof[:, [0]]) * margin[:, None] - (oof * costs[None, :] - oof[:, [0]] * costs[0])
        baseline = oof[:, 0] * (margin - costs[0])
        reward = y * (margin - costs[arm]) - baseline
        return values, arm, reward, propensity

    def _arm_uplift(self, data: dict, oof: np.ndarray, propensity: np.ndarray) -> None:
        """Average uplift of each arm over arm 0 with a 95 % interval: the doubly robust (AIPW)
        estimate from the cross-fitted outcomes, mean of Γ_k - Γ_0 with
        Γ_k = mu_k + 1[arm = k](y - mu_k) / e_k."""
        arm, y = data["arm"], data["y"]
        n, K = oof.shape
        hit = arm[:, None] == np.arange(K)[None, :]
        gamma = oof + hit * (y[:, None] - oof) / propensity
        out = {}
        for k in range(1, K):
            diff = gamma[:, k] - gamma[:, 0]
            half = _Z95 * diff.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
            out[data["arm_labels"][k]] = {
                "rows": int((arm == k).sum()),
                "uplift": float(diff.mean()),
                "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            }
        self.metrics_["arm_uplift"] = {
            "against": data["arm_labels"][0],
            "rows": int((arm == 0).sum()),
            "arms": out,
        }
        self.notes_.append(
            f"uplift per arm against {data['arm_labels'][0]} ({int((arm == 0).sum())} rows; conversion "
            "probability, doubly robust cross-fitted estimate with 95 % interval): "
            + "; ".join(
                f"{name} {v['uplift']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] on {v['rows']} rows"
                for name, v in out.items()
            )
        )

    def _fit_guard(self, data: dict, propensity: np.ndarray, oof: np.ndarray) -> None:
        """`ValueGuardedPolicy` on cross-fitted values of the training rows (learner arms).

        Reward: the realised profit minus a control variate, the cross-fitted predicted profit of
        arm 0, b(x). b depends on x only, so every policy's IPW value moves by the same E[b] and
        the gains the guard tests stay unbiased, while their spread shrinks (the baseline
        conversions of "sure things" no longer add noise): on the generated data the gain's
        confidence interval is about 17 % narrower. Its confidence is `guard_confidence`
        ("validated": chosen on nested splits of these rows, see `ValueGuardedPolicy`).
        """
        values, arm, reward, propensity = self._guard_inputs(data, oof, propensity)
        margin = self.policy_.margin_rate * data["order_value"]
        costs = np.asarray(data["costs"], dtype=np.float64)
        baseline = oof[:, 0] * (margin - costs[0])
        self.guard_ = ValueGuardedPolicy(
            confidence=self.guard_confidence, random_state=self.random_state
        ).fit(values, arm, reward, propensity)
        names = data["arm_labels"]
        shift = float(baseline.mean())  # add E[b] back so the reported values are profits per row
        values_by_arm = {
            (names[int(k.split("_")[1])] if k.startswith("arm_") else k): {
                "value": v["value"] + shift,
                "ci95": [v["ci95"][0] + shift, v["ci95"][1] + shift],
            }
            for k, v in self.guard_.validation_values_.items()
        }
        best = names[self.guard_.best_fixed_arm_]
        self.metrics_["guard"] = {
            "fallback": bool(self.guard_.fallback_),
            "best_fixed_arm": best,
            "best_fixed_value": values_by_arm[best]["value"],
            "personalised_value": values_by_arm["personalised"]["value"],
            "personalised_share": float(self.guard_.personalised_share_),
            "confidence": self.guard_.confidence_,
            "confidence_scores": {str(k): v for k, v in self.guard_.confidence_scores_.items()},
            "validation_gain": self.guard_.validation_gain_,
            "validation_values": values_by_arm,
        }
        gain = self.guard_.validation_gain_
        served = "the best fixed arm" if self.guard_.fallback_ else "the personalised choice"
        self.notes_.append(
            f"guard: personalised choice {values_by_arm['personalised']['value']:.4g} per row against the best "
            f"fixed arm ({best}) {values_by_arm[best]['value']:.4g}, gain {gain['gain']:+.4g} (one-sided "
            f"{self.guard_.confidence_:.0%} lower bound {gain['lower_bound']:+.4g}"
            + (
                ", confidence chosen on nested splits of the training rows"
                if self.guard_confidence == "validated"
                else ""
            )
            + f"); serving {served}"
            + (" to every allowed customer" if self.guard_.fallback_ else "")
        )


def _model_matrix(features, names: list[str]) -> np.ndarray:
    """Features as the uplift learner takes them: float64, unknown values as a sentinel.

    (The learner's input check refuses NaN; a value below every real one lets LightGBM put
    "unknown" on its own side of a split, e.g. the recency of a customer who never bought.)
    `features`: a frame, or a dict of columns (`CustomerProfiles.model_feature_arrays`).
    """
    if isinstance(features, pd.DataFrame):
        X = features[names].to_numpy(np.float64)
    else:
        columns = [features[name] for name in names]
        if columns and all(len(col) == 1 for col in columns):
            # a request's one row: one conversion instead of a stack of 1-element arrays
            X = np.array([[col[0] for col in columns]], dtype=np.float64)
        else:
            X = np.column_stack([np.asarray(col, dtype=np.float64) for col in columns])
    return np.where(np.isfinite(X), X, MISSING)
