"""The customers, all of them at once (a few hundred bytes each): lifecycle, taste, shopping
habits, message responsiveness, conversion truth, source-system ids and consent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ._ids import format_ids, scramble
from ._parameters import (
    ACTIVITY_LOG_SD,
    APP,
    ARM_PERSUASION,
    CATEGORIES,
    CATEGORY_APPEAL,
    CONSENT_SHARE,
    DORMANT_GAP_DAYS,
    HAS_APP_SHARE,
    HOLDOUT_SHARE,
    LAPSING_GAP_DAYS,
    LIFECYCLE_SHARE,
    LIFECYCLES,
    LOST_CAUSE,
    MAX_SESSIONS_PER_YEAR,
    MESSAGE_CHANNELS,
    MESSAGE_INTENSITY_SHAPE,
    MESSAGES_PER_YEAR,
    N_STYLES,
    NEW_SIGNUP_DAYS,
    NO_CONSENT_SHARE,
    OPT_OUT_SHARE,
    PERSUADABLE,
    PREFERRED_HOUR_MIXTURE,
    PREFERRED_HOUR_WIDTH,
    RESPONSIVENESS_SD,
    SEGMENT_ACTIVITY_FACTOR,
    SEGMENT_P_BASE,
    SESSIONS_PER_YEAR,
    SHOP_MIX_ALPHA,
    SOCIAL_SHOP,
    STORE,
    STORES_PER_ZONE,
    SURE_THING,
    TASTE_CONCENTRATION,
    TIMEZONE_SHARE,
    TIMEZONES,
    TREATMENTS,
    WEB,
    WEEKEND_PREF_SD,
)
from ._time import INT64_MAX, US_PER_DAY, US_PER_HOUR, Window


@dataclass
class Population:
    n: int
    tz: np.ndarray
    lifecycle: np.ndarray
    signup_us: np.ndarray
    act_start_day: np.ndarray  # first local day index of activity
    act_end_day: np.ndarray  # exclusive
    taste: np.ndarray  # (n, categories)
    style: np.ndarray
    price_sensitivity: np.ndarray
    price_bin: np.ndarray
    sessions_per_year: np.ndarray
    shop_mix: np.ndarray  # (n, shop channels)
    has_app: np.ndarray
    has_loyalty: np.ndarray
    has_email: np.ndarray
    responsiveness: np.ndarray  # (n, message channels)
    pref_hour: np.ndarray
    pref_width: np.ndarray
    weekend_pref: np.ndarray
    replenishment_loyalty: np.ndarray
    holdout: np.ndarray
    segment: np.ndarray
    p_base: np.ndarray
    uplift: np.ndarray  # (n, treatments)
    home_store: np.ndarray
    message_intensity: np.ndarray
    consent_opted: np.ndarray  # (n, message channels) initial answer
    consent_us: np.ndarray  # when it was given
    opt_out_us: np.ndarray  # INT64_MAX when never
    ids: pa.Array  # canonical ids, then loyalty ids, then device ids (nulls where none)
    email_ids: pa.Array

    @staticmethod
    def make(
        n: int,
        window: Window,
        rng: np.random.Generator,
        rng_ids: np.random.Generator,
        rng_consent: np.random.Generator,
    ) -> Population:
        # the draws follow one fixed order: each step consumes `rng` after the previous one
        tz = rng.choice(len(TIMEZONES), size=n, p=TIMEZONE_SHARE).astype(np.int8)
        lifecycle = rng.choice(len(LIFECYCLES), size=n, p=LIFECYCLE_SHARE).astype(np.int8)
        signup_us, act_start_day, act_end_day = _signup_and_activity(lifecycle, window, rng)
        taste = _tastes(n, rng)
        style = rng.integers(0, N_STYLES, n)
        price_sensitivity = rng.beta(1.6, 1.6, n)
        price_bin = np.minimum((price_sensitivity * 3).astype(np.int64), 2)
        activity_z = rng.standard_normal(n)
        segment = _uplift_segments(lifecycle, price_sensitivity, activity_z, rng)
        sessions_per_year = np.minimum(
            SESSIONS_PER_YEAR * np.exp(ACTIVITY_LOG_SD * activity_z) * SEGMENT_ACTIVITY_FACTOR[segment],
            MAX_SESSIONS_PER_YEAR,
        )

        shop_mix = rng.dirichlet(SHOP_MIX_ALPHA, size=n)
        has_app = rng.random(n) < HAS_APP_SHARE
        shop_mix[~has_app, WEB] += shop_mix[~has_app, APP]
        shop_mix[~has_app, APP] = 0.0
        # who is known to which source system (store shoppers mostly carry a loyalty card)
        has_loyalty = rng_ids.random(n) < np.clip(0.35 + 1.0 * shop_mix[:, STORE], 0, 0.95)
        has_email = rng_ids.random(n) < 0.88

        responsiveness = _responsiveness(shop_mix, rng)
        pref_hour, pref_width, weekend_pref = _preferred_times(n, rng)
        replenishment_loyalty = rng.beta(2.0, 3.0, n)
        holdout = rng.random(n) < HOLDOUT_SHARE
        home_store = (tz.astype(np.int64) * STORES_PER_ZONE + rng.integers(0, STORES_PER_ZONE, n)).astype(
            np.int16
        )
        message_intensity = rng.gamma(MESSAGE_INTENSITY_SHAPE, MESSAGES_PER_YEAR / MESSAGE_INTENSITY_SHAPE, n)
        p_base, uplift = _conversion_truth(segment, price_sensitivity, rng)
        ids, email_ids = _source_ids(n, has_loyalty, has_app, has_email)
        consent_opted, consent_us, opt_out_us = _consent(
            shop_mix, has_app, has_email, signup_us, window, rng_consent
        )

        return Population(
            n=n,
            tz=tz,
            lifecycle=lifecycle,
            signup_us=signup_us,
            act_start_day=act_start_day,
            act_end_day=act_end_day,
            taste=taste,
            style=style,
            price_sensitivity=price_sensitivity,
            price_bin=price_bin,
            sessions_per_year=sessions_per_year,
            shop_mix=shop_mix,
            has_app=has_app,
            has_loyalty=has_loyalty,
            has_email=has_email,
            responsiveness=responsiveness,
            pref_hour=pref_hour,
            pref_width=pref_width,
            weekend_pref=weekend_pref,
            replenishment_loyalty=replenishment_loyalty,
            holdout=holdout,
            segment=segment,
            p_base=p_base,
            uplift=uplift,
            home_store=home_store,
            message_intensity=message_intensity,
            consent_opted=consent_opted,
            consent_us=consent_us,
            opt_out_us=opt_out_us,
            ids=ids,
            email_ids=email_ids,
        )


def _signup_and_activity(
    lifecycle: np.ndarray, window: Window, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signup instant and the local days of activity [start, end): the lifecycle says how long ago
    a customer stopped shopping and when they signed up (days before the end)."""
    n = lifecycle.size
    gap_days = np.zeros(n, dtype=np.int64)
    lapsing, dormant = lifecycle == 2, lifecycle == 3
    gap_days[lapsing] = rng.integers(*LAPSING_GAP_DAYS, lapsing.sum(), endpoint=True)
    gap_days[dormant] = rng.integers(*DORMANT_GAP_DAYS, dormant.sum(), endpoint=True)
    signup_days_before = np.select(
        [lifecycle == 0, lifecycle == 1],
        [rng.uniform(*NEW_SIGNUP_DAYS, n), rng.uniform(NEW_SIGNUP_DAYS[1] + 15, 1500, n)],
        gap_days + rng.uniform(30, 1300, n),
    )
    signup_us = window.end_us - np.round(signup_days_before * US_PER_DAY).astype(np.int64)
    signup_day = np.floor_divide(signup_us - window.start_us, US_PER_DAY)
    act_start_day = np.maximum(0, signup_day + 1)
    act_end_day = window.days - gap_days
    return signup_us, act_start_day, act_end_day


def _tastes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Peaked Dirichlet shares over the categories (normalised gamma draws)."""
    taste = rng.gamma(
        TASTE_CONCENTRATION * CATEGORY_APPEAL * len(CATEGORIES) / CATEGORY_APPEAL.sum(),
        size=(n, len(CATEGORIES)),
    )
    taste += 1e-12
    taste /= taste.sum(axis=1, keepdims=True)
    return taste


def _uplift_segments(lifecycle, price_sensitivity, activity_z, rng: np.random.Generator) -> np.ndarray:
    """The uplift segment: a multinomial logit of latent traits (Gumbel-max sampling)."""
    scores = np.stack(
        [
            -0.3 + 1.2 * activity_z + 0.8 * (lifecycle == 1) - 1.0 * price_sensitivity,
            0.0 + 2.5 * (price_sensitivity - 0.5) + 0.3 * (lifecycle == 0),
            -0.6 - 0.8 * activity_z + 1.5 * (lifecycle == 3) + 0.6 * (lifecycle == 2),
            np.full(lifecycle.size, -1.9),
        ],
        axis=1,
    )
    return np.argmax(scores + rng.gumbel(size=scores.shape), axis=1).astype(np.int8)


def _responsiveness(shop_mix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Responsiveness per message channel, correlated with how they shop."""
    responsiveness = RESPONSIVENESS_SD * rng.standard_normal((shop_mix.shape[0], len(MESSAGE_CHANNELS)))
    responsiveness[:, 0] += 1.2 * (shop_mix[:, WEB] - 0.35)
    responsiveness[:, 1] += 1.2 * (shop_mix[:, STORE] - 0.35)
    responsiveness[:, 2] += 2.0 * (shop_mix[:, APP] - 0.25)
    responsiveness[:, 3] += 3.0 * (shop_mix[:, SOCIAL_SHOP] - 0.04)
    return responsiveness


def _preferred_times(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preferred local hour (a mixture of morning, lunch and evening peaks), its width, and the
    weekend preference."""
    means, sds, weights = (np.array(v) for v in zip(*PREFERRED_HOUR_MIXTURE, strict=True))
    component = rng.choice(len(weights), size=n, p=weights / weights.sum())
    pref_hour = (means[component] + sds[component] * rng.standard_normal(n)) % 24.0
    pref_width = rng.uniform(*PREFERRED_HOUR_WIDTH, n)
    weekend_pref = WEEKEND_PREF_SD * rng.standard_normal(n)
    return pref_hour, pref_width, weekend_pref


def _conversion_truth(
    segment: np.ndarray, price_sensitivity: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """p_base and the uplift per treatment (given open), by segment."""
    n = segment.size
    p_lo = np.array([r[0] for r in SEGMENT_P_BASE])[segment]
    p_hi = np.array([r[1] for r in SEGMENT_P_BASE])[segment]
    p_base = p_lo + (p_hi - p_lo) * rng.random(n)
    persuasion = ARM_PERSUASION[None, :]
    noise = np.exp(0.25 * rng.standard_normal((n, len(TREATMENTS))))
    uplift = np.select(
        [
            (segment == PERSUADABLE)[:, None],
            (segment == SURE_THING)[:, None],
            (segment == LOST_CAUSE)[:, None],
        ],
        [
            (0.05 + 0.55 * price_sensitivity[:, None]) * persuasion * noise,
            0.01 * persuasion * (rng.random((n, 1)) - 0.5),
            0.01 * persuasion * noise,
        ],
        # sleeping dogs: being contacted at all pushes them away; offers soften it a little
        -(0.06 + 0.08 * rng.random((n, 1))) * (1.0 - 0.3 * persuasion),
    )
    return p_base, uplift


def _source_ids(n: int, has_loyalty, has_app, has_email) -> tuple[pa.Array, pa.Array]:
    """The canonical, loyalty and device ids end to end (nulls where none), and the email ids:
    unique per source system by construction (bijections of the customer number)."""
    number = np.arange(n, dtype=np.uint64)
    width = max(7, len(str(n)))
    canonical = format_ids("C", number + 1, width)
    loyalty = format_ids("L", scramble(number, 32, 2654435761, 104729), 10, valid=has_loyalty)
    device = format_ids("D", scramble(number, 48, 0x5DEECE66D, 0xB5AD4ECEDA1), 12, base=16, valid=has_app)
    email = format_ids(
        "E", scramble(number, 64, 0x9E3779B97F4A7C15, 0x632BE59BD9B4E019), 16, base=16, valid=has_email
    )
    return pa.concat_arrays([canonical, loyalty, device]), email


def _consent(
    shop_mix, has_app, has_email, signup_us, window: Window, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consent per message channel, given at signup, and the instant of a later opt-out
    (INT64_MAX when never)."""
    n, m = signup_us.size, len(MESSAGE_CHANNELS)
    share = np.stack(
        [
            np.full(n, CONSENT_SHARE["email"]) * has_email,
            np.full(n, CONSENT_SHARE["sms"]) + 0.25 * shop_mix[:, STORE],
            np.full(n, CONSENT_SHARE["push"]) * has_app,
            np.full(n, CONSENT_SHARE["social"]) + 1.5 * shop_mix[:, SOCIAL_SHOP],
        ],
        axis=1,
    )
    consent_opted = rng.random((n, m)) < share
    consent_opted[rng.random(n) < NO_CONSENT_SHARE] = False
    consent_us = signup_us[:, None] + rng.integers(0, 2 * US_PER_HOUR, (n, m))
    consent_us = np.minimum(consent_us, window.end_us - 1)
    opt_out_from = np.maximum(consent_us, window.start_us) + US_PER_DAY
    opt_out_span = window.end_us - US_PER_DAY - opt_out_from
    opts_out = consent_opted & (rng.random((n, m)) < OPT_OUT_SHARE) & (opt_out_span > 0)
    opt_out_us = np.full((n, m), INT64_MAX, dtype=np.int64)
    offsets = (rng.random((n, m)) * np.maximum(opt_out_span, 0)).astype(np.int64)
    opt_out_us[opts_out] = (opt_out_from + offsets)[opts_out]
    return consent_opted, consent_us, opt_out_us
