"""The habit-profile mixture of the send-time model and its EM (`HabitMixture`, part of
`models.engagement.send_time.SendTimeModel`).

What activity says about the habit (the observation model, all of it learned by EM):

    P(active in local hour h | profile k, channel group g)
        ∝ ((1 - beta) phi_k(h) + beta b(h)) * exp(a_g(h))

- phi_k is the habit bump; beta b(h) is off-habit activity (errands, the odd late visit), a
  population background whose share beta and shape b are re-estimated from the expected
  off-habit counts. Without it one visit far from a person's habit would overrule ten near it.
- a_g(h) are channel-group hour offsets (store, other; web and app, open around the clock, are
  the reference at 0, or the busiest group without online activity): a store is only open 8-22,
  so a store visit at 8:00 says "8:00 or earlier", while a web visit at 6:00 says 6:00. The
  offsets are Newton steps on the expected log-likelihood (ridge `OFFSET_RIDGE`); every channel
  informs one shared habit.
- Activity is fitted first on its own (`ACTIVITY_ITER` cheap iterations), so the population's
  habit weights are already in place as the prior of customers without activity when the
  (weak) evidence of message outcomes joins in.

Engagement of a message sent on channel ch in local slot (d, h) under profile k:

    logit p_k = alpha[ch] + u[i, ch]                                    level (customer's own, shrunk)
              + b_rel * phi_k(h) / max phi_k + b_log * log(24 phi_k(h))  + delta_k(h)    habit
              + b_day * log(7 q_i(d)) + v[i, d]                           weekday
              + w[ch, d, h]                                               channel timing

and the grid is the posterior mean sum_k post[i, k] * p_k. Responses: alpha, b_rel, b_log, b_day
are fitted by Newton steps on the expected log-likelihood inside EM's M-step. The layers delta
(per profile and hour), u (customer × channel), v (customer × weekday) and w (channel × slot) are
one-step empirical-Bayes Newton updates r / (info + tau) with r = sum(y - p), info = sum p(1 - p)
per cell and tau = 1 / sigma^2 estimated from the spread of the cells (`eb_newton_step`): a cell
with little data stays at the layer below. The sums over (message, profile) cells are compiled
loops (`models.engagement.em_kernels`).

The habit bump's width is learned: a generalised EM step maximises the expected activity
log-likelihood over the width (`profile_width_`); nothing about its shape is taken from a
generator.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from models.engagement.em_kernels import (
    add_message_log_likelihood,
    customer_starts,
    engagement_sums,
    info_dot,
)
from models.engagement.local_time import DAYS, HOURS, SLOTS
from models.engagement.shrinkage import dirichlet_prior_strength, eb_newton_step, shrink_counts

SEGMENTS: tuple[str, ...] = ("none", "store", "web", "app", "other")
# event channels that name a segment of their own; every other channel counts as "other"
SEGMENT_CHANNELS: tuple[str, ...] = ("store", "web", "app")
# channel groups open around the clock: their activity hours are the habit's own (hour offsets 0);
# the others (a store's opening hours, a call centre's) get learned offsets against them
OPEN_ALL_HOURS: tuple[str, ...] = ("web", "app")
FEATURES: tuple[str, ...] = ("rel_hour", "log_hour", "log_day")
# Where EM starts the coefficients. Without messages there is nothing to learn them from: the grid
# is then log(24 p(h)) + log_day * log(7 q(d)) with log_day = 1, the log-probability of activity in
# the slot (rel_hour only shapes grids of models saved before format 3 that hold no `hour_prob_`).
DEFAULT_COEF: dict[str, float] = {"rel_hour": 1.0, "log_hour": 0.0, "log_day": 1.0}
DEFAULT_BASE_RATE = 0.1
# share of activity first assumed to be off-habit (background); EM re-estimates it
INITIAL_BACKGROUND_SHARE = 0.1
# The habit bump's width (Gaussian sd, hours) is learned from activity by maximum likelihood,
# within these bounds; EM starts from INITIAL_WIDTH, which also stays where there is no activity
# to learn it from (messages only).
WIDTH_BOUNDS: tuple[float, float] = (0.25, 8.0)
INITIAL_WIDTH = 2.0
# ridge on the channel-group hour offsets (log scale): a group's hour with no data stays near 0
OFFSET_RIDGE = 1.0
ACTIVITY_ITER = 15  # EM iterations on activity alone before message outcomes join in
_OFFSET_STEPS = 3  # Newton steps on the offsets per EM iteration
_MAX_OFFSET_STEP = 2.0  # largest change of an offset in one Newton step (log scale)
# pseudo customers that pull a small segment's profile weights towards the population's
SEGMENT_PRIOR_COUNT = 20.0
# the largest change of one engagement parameter (log-odds) in one EM step (`_m_step_engagement`)
MAX_STEP = 4.0
MAX_LOG_DENSITY = 4.0  # |log density ratio| is clipped here: an empty hour is not infinitely bad


def circular_kernel(bandwidth_hours: float, size: int = HOURS) -> np.ndarray:
    """Circulant smoothing matrix (size × size): Gaussian weights on the circular hour distance."""
    if bandwidth_hours <= 0:
        return np.eye(size)
    idx = np.arange(size)
    dist = np.abs((idx[:, None] - idx[None, :] + size // 2) % size - size // 2)
    weights = np.exp(-0.5 * (dist / bandwidth_hours) ** 2)
    weights[dist > 3 * bandwidth_hours] = 0.0
    return weights / weights.sum(axis=1, keepdims=True)


_TIE_KERNEL = circular_kernel(3.0)


def habit_profiles(n_centres: int, widths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Habit profiles over the local hour (K × 24, rows sum to 1): a circular Gaussian bump for each
    centre ((j + 0.5) * 24 / n_centres) and width, averaged over each clock hour, then one flat
    profile. Returns (profiles, centres, widths); the flat profile has centre NaN, width inf."""
    centres = (np.arange(int(n_centres)) + 0.5) * HOURS / int(n_centres)
    points = np.arange(HOURS)[:, None] + (np.arange(12) + 0.5)[None, :] / 12  # 24 × 12 within-hour points
    rows, cs, ws = [], [], []
    for width in widths:
        for centre in centres:
            dist = np.abs((points - centre + HOURS / 2) % HOURS - HOURS / 2)
            density = np.exp(-0.5 * (dist / float(width)) ** 2).mean(axis=1)
            rows.append(density / density.sum())
            cs.append(centre)
            ws.append(float(width))
    rows.append(np.full(HOURS, 1.0 / HOURS))
    cs.append(np.nan)
    ws.append(np.inf)
    return np.asarray(rows), np.asarray(cs), np.asarray(ws)


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def _newton_direction(r_row, i_row, channel, n_channels, per_message, sums, grad_f, hess_f) -> np.ndarray:
    """Newton direction for (alpha per channel, one coefficient per feature, one for `per_message`)
    of a weighted logistic log-likelihood, from sums over (message, profile) cells.

    With residual = w (y - p) and info = w p (1 - p) per (message, profile) and features f of the
    same shape: `r_row`, `i_row` are the residual and info summed over the profiles (one per
    message), `sums[a]` the sum of info * f_a over the profiles (one per message), `grad_f[a]` the
    sum of residual * f_a and `hess_f[a, b]` that of info * f_a * f_b over all cells.
    `per_message` is one value per message (the same for every profile); alpha enters through
    each message's channel. A channel without messages keeps its value (unit curvature).
    """
    n_feat = len(sums)
    size = n_channels + n_feat + 1
    grad = np.zeros(size)
    hess = np.zeros((size, size))
    grad[:n_channels] = np.bincount(channel, weights=r_row, minlength=n_channels)
    hess[np.arange(n_channels), np.arange(n_channels)] = np.bincount(
        channel, weights=i_row, minlength=n_channels
    )
    sums = [*sums, i_row * per_message]
    for a in range(n_feat + 1):
        j = n_channels + a
        grad[j] = grad_f[a] if a < n_feat else float((r_row * per_message).sum())
        cross = np.bincount(channel, weights=sums[a], minlength=n_channels)
        hess[:n_channels, j] = hess[j, :n_channels] = cross
        for b in range(a, n_feat + 1):
            k = n_channels + b
            if b < n_feat:
                value = hess_f[a, b] if a < n_feat else float((sums[b] * per_message).sum())
            else:
                value = (
                    float((sums[a] * per_message).sum())
                    if a < n_feat
                    else float((i_row * per_message**2).sum())
                )
            hess[j, k] = hess[k, j] = value
    hess += 1e-6 * np.eye(size) + np.diag(np.where(np.diag(hess) <= 0, 1.0, 0.0))
    return np.linalg.solve(hess, grad)


class HabitMixture:
    """The habit-profile mixture of `SendTimeModel` (see the module docstring), mixed into it.
    `_fit_profiles` runs EM once the model has set its customers and their activity (`customer_ids_`,
    `n_active_`, `segment_`, `day_prob_`, `segment_day_prob_`, `channels_`); the model's grids
    read the fitted mixture through `_activity_mixture`, `_profile_lift` and `_log_day`."""

    def _fit_profiles(self, group_counts: np.ndarray, response: dict | None) -> None:
        """EM for the habit-profile mixture; activity background, channel-group hour offsets and
        the engagement model are re-estimated in each M-step. `group_counts`: active hours per
        channel group, customer and local hour (groups × n × 24)."""
        n, n_ch = len(self.customer_ids_), len(self.channels_)
        active = np.flatnonzero(self.n_active_ > 0)
        group_counts = group_counts[:, active]
        kernel = circular_kernel(self.hour_bandwidth)
        learn_width = self.profile_width is None
        self._set_profiles(INITIAL_WIDTH if learn_width else float(self.profile_width))
        n_profiles = len(self.profiles_)
        self.segment_weights_ = np.full((len(SEGMENTS), n_profiles), 1.0 / n_profiles)
        self.background_ = np.full(HOURS, 1.0 / HOURS)
        self.background_share_ = INITIAL_BACKGROUND_SHARE
        self.activity_offsets_ = np.zeros((len(group_counts), HOURS))
        group_totals = group_counts.sum(axis=(1, 2))
        reference = [g for g in range(len(group_totals)) if SEGMENTS[1 + g] in OPEN_ALL_HOURS]
        if not any(group_totals[g] > 0 for g in reference):  # no online activity: the busiest group
            reference = [int(np.argmax(group_totals))]
        self.coef_ = np.array([DEFAULT_COEF[f] for f in FEATURES])
        self.alpha_ = np.full(n_ch, _logit(DEFAULT_BASE_RATE))
        self.profile_residual_ = np.zeros(self.profiles_.shape)
        self.level_ = np.zeros((n, n_ch))
        self.day_residual_ = np.zeros((n, DAYS))
        self.channel_residual_ = np.zeros((n_ch, SLOTS))
        log_day = self._log_day(np.arange(n))
        segment_one_hot = np.eye(len(SEGMENTS))[self.segment_]
        active_groups = [g for g in range(len(group_counts)) if group_totals[g] > 0]
        # one sparse (active customers × groups·24) matrix: one product per E-step and per M-step
        active_counts = sparse.csr_matrix(
            group_counts[active_groups].transpose(1, 0, 2).reshape(len(active), len(active_groups) * HOURS)
        )

        if response is not None and len(np.unique(response["y"])) < 2:
            self.notes_.append("every message has the same outcome: timing is learned from activity alone")
            response = None
        if response is not None:
            # messages in customer order: the EM kernels sum each customer's run of messages
            order = np.argsort(response["row"], kind="stable")
            response = {key: values[order] for key, values in response.items()}
            response["starts"] = customer_starts(response["row"], n)
            response["log_day"] = log_day[response["row"], response["day"]]
            y = response["y"]
            sent = np.bincount(response["channel"], minlength=n_ch)
            rate = np.bincount(response["channel"], weights=y, minlength=n_ch) / np.maximum(sent, 1)
            rate = np.clip(rate, 1e-3, 1 - 1e-3)
            self.alpha_ = np.log(rate / (1 - rate))

        # activity first (cheap: customers × profiles × 24): the population's habit weights, the
        # background and the channel offsets settle on the customers whose hours are observed;
        # they are the starting prior of customers without activity, whose weak message evidence
        # would otherwise move EM away from the uniform start only very slowly
        # (the habit width is learned here, from activity alone, and then kept: the engagement
        # layers below are defined on the profiles' shapes)
        if active_groups:
            for _ in range(ACTIVITY_ITER):
                log_post = np.log(self.segment_weights_[self.segment_[active]])
                log_post += active_counts @ self._activity_log_likelihood(active_groups)
                posterior = np.exp(log_post - _logsumexp(log_post)[:, None])
                self._m_step_activity(active_counts, posterior, active_groups, reference, kernel, learn_width)
                self._m_step_segments(posterior, segment_one_hot[active])
        elif learn_width:
            self.notes_.append(
                f"no activity to learn the habit width from: the habit profiles keep {INITIAL_WIDTH:g} h"
            )
        self.profile_width_ = float(self.profile_widths_[0])

        previous = None
        self.n_iter_ = 0
        for _ in range(max(1, int(self.n_iter))):
            self.n_iter_ += 1
            # E-step: posterior over profiles given activity hours and message outcomes
            log_post = np.log(self.segment_weights_[self.segment_])
            if active_groups:
                log_post[active] += active_counts @ self._activity_log_likelihood(active_groups)
            if response is not None:
                # the engagement parameters stay as they are until the M-step's engagement step,
                # which reads the same per-message base and hour lift
                base = self._message_base(response)
                lift = np.ascontiguousarray(self._profile_lift().T)  # 24 × profiles
                add_message_log_likelihood(
                    response["starts"], base, response["hour"], response["y"], lift, log_post
                )
            total = _logsumexp(log_post)
            posterior = np.exp(log_post - total[:, None])
            log_likelihood = float(total.sum())
            converged = previous is not None and abs(log_likelihood - previous) < 1e-6 * abs(log_likelihood)
            previous = log_likelihood

            # M-step: segment weights, activity background and offsets, engagement model
            self._m_step_activity(active_counts, posterior[active], active_groups, reference, kernel)
            self._m_step_segments(posterior, segment_one_hot)
            if response is not None:
                self._m_step_engagement(response, posterior, kernel, base, lift)
            if converged:
                break
        self.posterior_ = posterior.astype(np.float32)
        self.hour_prob_ = None
        self.activity_strength_ = None
        if response is None:  # activity only: the grid is the activity probability of the slot
            counts = np.zeros((n, HOURS))
            counts[active] = group_counts.sum(axis=0)
            predictive = posterior @ self._activity_mixture()
            strength = dirichlet_prior_strength(counts[active], predictive[active])
            self.hour_prob_ = shrink_counts(counts, predictive, strength).astype(np.float32)
            self.activity_strength_ = float(strength)  # what live activity is weighed against

    def _m_step_segments(self, posterior: np.ndarray, segment_one_hot: np.ndarray) -> None:
        """Profile weights per segment: the segment's posterior counts plus SEGMENT_PRIOR_COUNT
        pseudo customers at the population's weights (a segment without customers in `posterior`
        takes the population's weights)."""
        population = posterior.sum(axis=0) + 1.0
        population /= population.sum()
        by_segment = segment_one_hot.T @ posterior + SEGMENT_PRIOR_COUNT * population
        self.segment_weights_ = by_segment / by_segment.sum(axis=1, keepdims=True)

    def _activity_mixture(self) -> np.ndarray:
        """Hour distribution of each profile's activity before channel offsets (profiles × 24):
        the habit, mixed with the background share of off-habit activity."""
        share = self.background_share_
        return (1.0 - share) * self.profiles_ + share * self.background_[None, :]

    def _activity_log_likelihood(self, groups: list[int]) -> np.ndarray:
        """log P(active in local hour h | profile k, channel group g), stacked as (groups·24) ×
        profiles: the activity mixture tilted by each group's hour offsets (e.g. a store's
        opening hours), renormalised per profile and group."""
        tilted = self._activity_mixture()[None, :, :] * np.exp(self.activity_offsets_[groups])[:, None, :]
        tilted = np.maximum(tilted, 1e-300)
        log_lik = np.log(tilted) - np.log(tilted.sum(axis=2, keepdims=True))  # groups × profiles × 24
        return log_lik.transpose(0, 2, 1).reshape(len(groups) * HOURS, -1)

    def _set_profiles(self, width: float) -> None:
        """Habit profiles with the narrowest width `width` (the others 2, 4, ... times as wide)."""
        widths = float(width) * 2.0 ** np.arange(max(1, int(self.n_widths)))
        self.profiles_, self.profile_centres_, self.profile_widths_ = habit_profiles(self.n_centres, widths)

    def _expected_activity_log_likelihood(self, width: float, by_profile: dict, groups: list[int]) -> float:
        """EM's expected activity log-likelihood sum W[k, g, h] log P_g(h | k) with habit profiles
        of width `width` (background, its share and the group offsets as they are)."""
        widths = float(width) * 2.0 ** np.arange(max(1, int(self.n_widths)))
        profiles = habit_profiles(self.n_centres, widths)[0]
        share = self.background_share_
        mixture = (1.0 - share) * profiles + share * self.background_[None, :]
        total = 0.0
        for g in groups:
            tilted = np.maximum(mixture * np.exp(self.activity_offsets_[g])[None, :], 1e-300)
            log_p = np.log(tilted) - np.log(tilted.sum(axis=1, keepdims=True))
            total += float((by_profile[g] * log_p).sum())
        return total

    def _m_step_width(self, by_profile: dict, groups: list[int]) -> None:
        """The habit width maximising the expected activity log-likelihood (a generalised EM
        step: the posterior over profiles stays the E-step's), searched on the log scale within
        WIDTH_BOUNDS."""
        from scipy.optimize import minimize_scalar

        found = minimize_scalar(
            lambda log_width: -self._expected_activity_log_likelihood(np.exp(log_width), by_profile, groups),
            bounds=tuple(np.log(WIDTH_BOUNDS)),
            method="bounded",
            options={"xatol": 1e-3},
        )
        width = float(np.exp(found.x))
        # keep the old width unless the new one is at least as likely (bounded search, no ascent guarantee)
        old = float(self.profile_widths_[0])
        if self._expected_activity_log_likelihood(width, by_profile, groups) >= (
            self._expected_activity_log_likelihood(old, by_profile, groups)
        ):
            self._set_profiles(width)

    def _m_step_activity(
        self, counts, posterior, groups: list[int], reference: list[int], kernel, learn_width: bool = False
    ) -> None:
        """Background share and shape (expected off-habit counts, smoothed), then Newton steps on
        each channel group's hour offsets (the reference groups' stay 0; ridge OFFSET_RIDGE), then
        (with `learn_width`) the habit width. `counts`: active customers × (groups·24) (sparse),
        the groups' hour counts side by side."""
        mixture = self._activity_mixture()
        weighted = np.asarray(counts.T @ posterior).T.reshape(posterior.shape[1], len(groups), HOURS)
        by_profile = {g: weighted[:, j] for j, g in enumerate(groups)}  # profiles × 24
        total = sum(m.sum() for m in by_profile.values())
        if total <= 0:
            return
        off_habit = self.background_share_ * self.background_[None, :] / np.maximum(mixture, 1e-300)
        background = sum((m * off_habit).sum(axis=0) for m in by_profile.values())
        self.background_share_ = float(np.clip(background.sum() / total, 1e-3, 0.9))
        smoothed = kernel @ (background + 1e-3 * total / HOURS)
        self.background_ = smoothed / smoothed.sum()
        mixture = self._activity_mixture()
        for g in groups:
            if g in reference:
                continue
            n_k = by_profile[g].sum(axis=1)
            observed = by_profile[g].sum(axis=0)
            offsets = self.activity_offsets_[g].copy()
            for _ in range(_OFFSET_STEPS):
                tilted = mixture * np.exp(offsets)[None, :]
                prob = tilted / tilted.sum(axis=1, keepdims=True)
                expected = n_k @ prob
                grad = observed - expected - OFFSET_RIDGE * offsets
                hess = (prob * n_k[:, None]).T @ prob - np.diag(expected) - OFFSET_RIDGE * np.eye(HOURS)
                step = np.linalg.solve(hess - 1e-9 * np.eye(HOURS), -grad)
                offsets = offsets + np.clip(step, -_MAX_OFFSET_STEP, _MAX_OFFSET_STEP)
            self.activity_offsets_[g] = offsets - offsets.mean()
        if learn_width:
            self._m_step_width(by_profile, groups)

    def _log_day(self, rows: np.ndarray, unknown: np.ndarray | None = None) -> np.ndarray:
        day = self.day_prob_[np.maximum(rows, 0)].copy()
        if unknown is not None and unknown.any():
            day[unknown] = self.segment_day_prob_[0]
        return np.clip(np.log(DAYS * day), -MAX_LOG_DENSITY, MAX_LOG_DENSITY)

    def _hour_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Activity shape of each profile: density relative to its peak, log density vs uniform."""
        relative = self.profiles_ / self.profiles_.max(axis=1, keepdims=True)
        density = np.maximum(HOURS * self.profiles_, np.exp(-MAX_LOG_DENSITY))  # no log(0) far from a bump
        log_density = np.clip(np.log(density), -MAX_LOG_DENSITY, MAX_LOG_DENSITY)
        return relative, log_density

    def _profile_lift(self) -> np.ndarray:
        """Engagement log-odds lift of each profile at each local hour (profiles × 24)."""
        relative, log_density = self._hour_features()
        return self.coef_[0] * relative + self.coef_[1] * log_density + self.profile_residual_

    def _message_base(self, response: dict) -> np.ndarray:
        """Per-message log-odds without the hour-profile lift."""
        rows, ch, day, hour = response["row"], response["channel"], response["day"], response["hour"]
        return (
            self.alpha_[ch]
            + self.level_[rows, ch]
            + self.coef_[2] * response["log_day"]
            + self.day_residual_[rows, day]
            + self.channel_residual_[ch, day * HOURS + hour]
        )

    def _m_step_engagement(
        self, response: dict, posterior: np.ndarray, kernel, base: np.ndarray, lift: np.ndarray
    ) -> None:
        """One pass over the engagement parameters, each a Newton step from the E-step's
        probabilities, updated in turn; the residuals carry each step's effect to the next
        (linearised: r -= info * change), so no layer re-absorbs what another just took.
        The sums over (message, profile) cells come from `em_kernels`, without any messages ×
        profiles array; `base` and `lift` (24 × profiles) are the E-step's, from which its
        probabilities came."""
        rows, ch, hours, days = (response[k] for k in ("row", "channel", "hour", "day"))
        starts, log_day = response["starts"], response["log_day"]
        n_ch = len(self.alpha_)
        relative, log_density = self._hour_features()
        features = [relative.T, log_density.T]  # 24 × profiles
        sums = engagement_sums(
            starts, base, hours, response["y"], ch, n_ch, log_day, lift, posterior, features
        )
        # alpha per channel and the coefficients: a Newton step on the expected log-likelihood
        step = _newton_direction(
            sums.r_row, sums.i_row, ch, n_ch, log_day, sums.feature_sums, sums.grad_f, sums.hess_f
        )
        # a damped step: where the outcomes are perfectly separated by the hour (every open near
        # the habit, none away from it) the likelihood has no maximum and plain Newton steps grow
        # without bound until the grid overflows; no step moves a log-odds by more than MAX_STEP
        step = np.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        largest = float(np.abs(step).max()) if step.size else 0.0
        if largest > MAX_STEP:
            step *= MAX_STEP / largest
        self.alpha_ = self.alpha_ + step[:n_ch]
        self.coef_ = self.coef_ + step[n_ch:]
        # each cell's residual after that step: r - info * (step of its channel + step of log_day
        # * log_day + the features' steps), summed per hour and profile
        by_hour = step[n_ch] * features[0] + step[n_ch + 1] * features[1]  # 24 × profiles
        r_hour = (
            sums.residual_cell
            - np.tensordot(step[:n_ch], sums.info_channel_cell[:n_ch], axes=1)
            - step[n_ch + 2] * sums.info_day_cell
            - sums.info_cell * by_hour
        )

        # what the activity shape does not explain, per profile and hour (shrunk, smoothed)
        r_cell = r_hour.T @ kernel.T  # profiles × 24
        i_cell = sums.info_cell.T @ kernel.T
        new = eb_newton_step(r_cell + i_cell * self.profile_residual_, i_cell)[0]
        moved = (new - self.profile_residual_).T  # 24 × profiles
        self.profile_residual_ = new
        level = step[:n_ch][ch] + step[n_ch + 2] * log_day
        r_msg = (
            sums.r_row
            - level * sums.i_row
            - step[n_ch] * sums.feature_sums[0]
            - step[n_ch + 1] * sums.feature_sums[1]
            - info_dot(starts, base, hours, lift, posterior, moved)
        )
        i_msg = sums.i_row

        # per-message layers: customer × channel level, customer × weekday, channel × slot
        for name, cell, shape in (
            ("level_", rows * n_ch + ch, self.level_.shape),
            ("day_residual_", rows * DAYS + days, self.day_residual_.shape),
            ("channel_residual_", ch * SLOTS + days * HOURS + hours, self.channel_residual_.shape),
        ):
            old = getattr(self, name).reshape(-1)
            size = old.size
            r_cell = np.bincount(cell, weights=r_msg, minlength=size)
            i_cell = np.bincount(cell, weights=i_msg, minlength=size)
            if name == "channel_residual_":  # neighbouring hours of the week share evidence
                week = circular_kernel(self.hour_bandwidth, SLOTS)
                r_cell = (r_cell.reshape(shape) @ week.T).reshape(-1)
                i_cell = (i_cell.reshape(shape) @ week.T).reshape(-1)
            new = eb_newton_step(r_cell + i_cell * old, i_cell)[0]
            r_msg = r_msg - i_msg * (new - old)[cell]
            setattr(self, name, new.reshape(shape))

    @property
    def base_logit_(self) -> float:
        return float(np.mean(self.alpha_)) if len(self.alpha_) else _logit(DEFAULT_BASE_RATE)
