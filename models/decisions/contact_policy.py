"""Eligibility and contact policy of the next-best-action engine: one TOML file, pure vectorised rules.

What the policy decides (`configs/contact_policy.toml` is the default file; every key is checked):

- consent: a customer may be messaged only on a channel of `channels` they are opted in to (the
  latest consent row per customer and channel wins; no row = not opted in);
- global control group: `share` of customers (default 5 %) is never contacted, so lift can be
  measured against them. Membership is a stable hash: sha256("<salt>:<customer_id>") read as a
  64-bit number / 2**64 in [0, 1), below `share`. No state to store, the same on every machine;
- frequency caps per customer, over all channels and per channel: no 24-hour window may hold more
  than `per_day` messages and no 7-day window more than `per_week`. A new send at time t is
  allowed when fewer than the cap of other contacts lie strictly within one window length before
  *or after* t: any window containing t then holds at most the cap (contacts scheduled by an
  earlier batch, which lie in the future, count too);
- cooldowns: no message within `after_purchase_hours` after the customer's last purchase, and none
  within `after_message_hours` of another message (either side);
- quiet hours in the customer's local time (default 21:00-08:00): `next_send_times` picks the best
  allowed hour slot from the send-time scores, never a quiet one;
- offer eligibility per offer: segments, excluded segments, value tiers, minimum spend, categories;
- economics: margin rate of a sale and the cost of a message per channel.

`ContactLedger` holds who was contacted on which channel when (from the messages history and from
decisions already made) and when each customer last bought, and answers the cap and cooldown
questions for a whole batch at once with sorted-array searches (a million customers in seconds).
`LayeredLedger` lays what the live store learned since training (contacts, purchases, consent
changes) over the fitted ledger without copying it. `audit_sends` re-checks finished decisions against every rule; the engine applies it as a last
guard and the tests use it to prove that no send breaks the policy.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import columns as c
from models.base import FEW_IDS, index_rows, isin_few, nan_to_num_few
from models.timestamps import NAT_US, US_PER_HOUR, US_PER_SECOND, to_us

DEFAULT_POLICY_FILE = Path(__file__).resolve().parents[2] / "configs" / "contact_policy.toml"
SEGMENTS: tuple[str, ...] = ("new", "active", "loyal", "champion", "at_risk", "dormant")
VALUE_TIERS: tuple[str, ...] = ("high", "medium", "low", "none")

HOURS_PER_WEEK = 168
_NO_KEYS = np.array([], dtype=np.int64)
_NO_KEYS.flags.writeable = False
_SECONDS_BITS = 34  # ledger keys: customer code << 34 | seconds since the epoch (good until 2514)


# ----------------------------------------------------------------------------------------------
# The policy
@dataclass(frozen=True)
class Caps:
    """Most messages in any 24-hour and any 7-day window; None = no cap."""

    per_day: int | None = None
    per_week: int | None = None


@dataclass(frozen=True)
class OfferRule:
    """Who may receive an offer. Empty tuples mean "no restriction"."""

    segments: tuple[str, ...] = ()
    exclude_segments: tuple[str, ...] = ()
    value_tiers: tuple[str, ...] = ()
    min_spend: float = 0.0
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContactPolicy:
    """The whole contact policy; `load_contact_policy` reads it from TOML (see the module docstring)."""

    channels: tuple[str, ...] = ("email", "sms", "push", "social")
    min_expected_gain: float = 0.0
    horizon_hours: int = 72
    items_per_message: int = 3
    control_share: float = 0.05
    control_salt: str = "omni-nba-control-v1"
    quiet_hours: tuple[int, int] | None = (21, 8)
    cooldown_after_purchase_hours: float = 48.0
    cooldown_after_message_hours: float = 24.0
    overall_caps: Caps = Caps(1, 3)
    channel_caps: dict[str, Caps] = field(default_factory=dict)
    capacity_per_day: dict[str, int] = field(default_factory=dict)
    margin_rate: float = 0.35
    message_cost: dict[str, float] = field(default_factory=dict)
    offer_rules: dict[str, OfferRule] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 <= self.control_share < 1.0:
            raise ValueError(f"control_group.share must be in [0, 1), got {self.control_share}")
        if self.horizon_hours < 1:
            raise ValueError("horizon_hours must be at least 1")
        if not 0.0 < self.margin_rate <= 1.0:
            raise ValueError(f"economics.margin_rate must be in (0, 1], got {self.margin_rate}")
        if self.quiet_hours is not None:
            start, end = self.quiet_hours
            if not (0 <= start <= 23 and 0 <= end <= 23):
                raise ValueError(f"quiet hours must be whole hours 0-23, got {self.quiet_hours}")
        for name, caps in [("overall", self.overall_caps), *self.channel_caps.items()]:
            for value in (caps.per_day, caps.per_week):
                if value is not None and value < 0:
                    raise ValueError(f"caps for {name} must be >= 0")
        unknown = set(self.channel_caps) - set(self.channels)
        if unknown:
            raise ValueError(f"caps for channels not in `channels`: {sorted(unknown)}")

    def caps_for(self, channel: str) -> Caps:
        return self.channel_caps.get(channel, Caps())

    def cost_of_message(self, channel: str) -> float:
        return float(self.message_cost.get(channel, 0.0))

    def to_dict(self) -> dict:
        """Plain JSON-able form (saved with the engine so a loaded engine applies the same policy)."""
        out = asdict(self)
        out["quiet_hours"] = list(self.quiet_hours) if self.quiet_hours is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ContactPolicy:
        """Inverse of `to_dict`."""
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        data["quiet_hours"] = tuple(data["quiet_hours"]) if data.get("quiet_hours") is not None else None
        data["overall_caps"] = Caps(**data["overall_caps"])
        data["channel_caps"] = {ch: Caps(**v) for ch, v in data["channel_caps"].items()}
        data["offer_rules"] = {
            offer: OfferRule(**{k: tuple(v) if isinstance(v, list) else v for k, v in rule.items()})
            for offer, rule in data["offer_rules"].items()
        }
        return cls(**data)


_TOP_KEYS = {
    "channels",
    "min_expected_gain",
    "horizon_hours",
    "items_per_message",
    "control_group",
    "quiet_hours",
    "cooldown",
    "caps",
    "capacity_per_day",
    "economics",
    "offers",
}
_RULE_KEYS = {"segments", "exclude_segments", "value_tiers", "min_spend", "categories"}


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _caps(section: dict, where: str) -> Caps:
    _check_keys(section, {"per_day", "per_week"}, where)
    return Caps(section.get("per_day"), section.get("per_week"))


def policy_from_toml_dict(raw: dict) -> ContactPolicy:
    """A `ContactPolicy` from the parsed TOML document (missing sections take the defaults)."""
    _check_keys(raw, _TOP_KEYS, "contact policy")
    default = ContactPolicy()
    kwargs: dict = {}
    if "channels" in raw:
        kwargs["channels"] = tuple(str(ch) for ch in raw["channels"])
    for key in ("min_expected_gain", "horizon_hours", "items_per_message"):
        if key in raw:
            kwargs[key] = raw[key]
    if "control_group" in raw:
        group = raw["control_group"]
        _check_keys(group, {"share", "salt"}, "[control_group]")
        kwargs["control_share"] = float(group.get("share", default.control_share))
        kwargs["control_salt"] = str(group.get("salt", default.control_salt))
    if "quiet_hours" in raw:
        quiet = raw["quiet_hours"]
        _check_keys(quiet, {"start", "end"}, "[quiet_hours]")
        kwargs["quiet_hours"] = (int(quiet["start"]), int(quiet["end"])) if quiet else None
    if "cooldown" in raw:
        cool = raw["cooldown"]
        _check_keys(cool, {"after_purchase_hours", "after_message_hours"}, "[cooldown]")
        if "after_purchase_hours" in cool:
            kwargs["cooldown_after_purchase_hours"] = float(cool["after_purchase_hours"])
        if "after_message_hours" in cool:
            kwargs["cooldown_after_message_hours"] = float(cool["after_message_hours"])
    if "caps" in raw:
        caps = dict(raw["caps"])
        per_channel = caps.pop("channels", {})
        kwargs["overall_caps"] = _caps(caps, "[caps]")
        kwargs["channel_caps"] = {ch: _caps(v, f"[caps.channels.{ch}]") for ch, v in per_channel.items()}
    if "capacity_per_day" in raw:
        kwargs["capacity_per_day"] = {ch: int(v) for ch, v in raw["capacity_per_day"].items()}
    if "economics" in raw:
        econ = raw["economics"]
        _check_keys(econ, {"margin_rate", "message_cost"}, "[economics]")
        if "margin_rate" in econ:
            kwargs["margin_rate"] = float(econ["margin_rate"])
        kwargs["message_cost"] = {ch: float(v) for ch, v in econ.get("message_cost", {}).items()}
    if "offers" in raw:
        rules = {}
        for offer_id, rule in raw["offers"].items():
            _check_keys(rule, _RULE_KEYS, f"[offers.{offer_id}]")
            for key in ("segments", "exclude_segments"):
                bad = set(rule.get(key, ())) - set(SEGMENTS)
                if bad:
                    raise ValueError(f"[offers.{offer_id}] {key}: unknown segment(s) {sorted(bad)}")
            bad = set(rule.get("value_tiers", ())) - set(VALUE_TIERS)
            if bad:
                raise ValueError(f"[offers.{offer_id}] value_tiers: unknown tier(s) {sorted(bad)}")
            rules[str(offer_id)] = OfferRule(
                segments=tuple(rule.get("segments", ())),
                exclude_segments=tuple(rule.get("exclude_segments", ())),
                value_tiers=tuple(rule.get("value_tiers", ())),
                min_spend=float(rule.get("min_spend", 0.0)),
                categories=tuple(rule.get("categories", ())),
            )
        kwargs["offer_rules"] = rules
    return ContactPolicy(**kwargs)


def load_contact_policy(path: str | Path | None = None) -> ContactPolicy:
    """Reads the policy TOML (default `configs/contact_policy.toml`); ValueError on unknown keys."""
    path = Path(path) if path is not None else DEFAULT_POLICY_FILE
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    return policy_from_toml_dict(raw)


# ----------------------------------------------------------------------------------------------
# Pure, vectorised rules
def control_hash(customer_ids, salt: str) -> np.ndarray:
    """sha256("<salt>:<customer_id>")'s first 8 bytes as a number in [0, 1), per customer."""
    ids = np.asarray(customer_ids, dtype=object)
    prefix = f"{salt}:".encode()
    raw = np.fromiter(
        (
            int.from_bytes(hashlib.sha256(prefix + str(cid).encode()).digest()[:8], "big")
            for cid in ids.tolist()
        ),
        dtype=np.uint64,
        count=len(ids),
    )
    return raw.astype(np.float64) / 2.0**64


def in_control_group(customer_ids, policy: ContactPolicy) -> np.ndarray:
    """True for customers of the global control group (never contacted)."""
    if policy.control_share <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    return control_hash(customer_ids, policy.control_salt) < policy.control_share


def is_quiet_hour(local_hours, quiet_hours: tuple[int, int] | None) -> np.ndarray:
    """True for local hours inside the quiet window [start, end), which may cross midnight."""
    hours = np.asarray(local_hours)
    if quiet_hours is None or quiet_hours[0] == quiet_hours[1]:
        return np.zeros(hours.shape, dtype=bool)
    start, end = quiet_hours
    if start < end:
        return (hours >= start) & (hours < end)
    return (hours >= start) | (hours < end)


def local_hour_and_weekday(ts_us: np.ndarray, timezones) -> tuple[np.ndarray, np.ndarray]:
    """Local hour (0-23) and weekday (0 = Monday) of UTC instants (int64 µs), one IANA zone each.

    Converted zone by zone with real DST rules; NaT rows get hour -1.
    """
    ts_us = np.asarray(ts_us, dtype=np.int64)
    zones = np.asarray(timezones, dtype=object)
    if len(ts_us) <= FEW_IDS:
        few = _few_local_hours(ts_us, zones)
        if few is not None:
            return few
    hours = np.full(len(ts_us), -1, dtype=np.int64)
    weekdays = np.full(len(ts_us), -1, dtype=np.int64)
    valid = ts_us != NAT_US
    for zone in _distinct(zones[valid]):
        sel = np.flatnonzero(valid & (zones == zone))
        t = ts_us[sel]
        if isinstance(zone, str) and not (t % US_PER_HOUR).any():
            # whole UTC hours (every send time is one): the zone's cached hour table
            h = t // US_PER_HOUR
            table = _local_hours(zone, int(h.min()), int(h.max()))
            if table is not None:
                hours[sel] = table[0][h - h.min()]
                weekdays[sel] = table[1][h - h.min()]
                continue
        local = pd.DatetimeIndex(t.astype("datetime64[us]")).tz_localize("UTC").tz_convert(zone)
        hours[sel] = local.hour
        weekdays[sel] = local.day_of_week
    return hours, weekdays


def _few_local_hours(ts_us: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`local_hour_and_weekday` of a request's few instants, each read from its zone's cached
    hour table in Python; None when one is not a whole UTC hour in a named zone (the general
    path converts those)."""
    hours, weekdays = [], []
    for t, zone in zip(ts_us.tolist(), zones.tolist(), strict=True):
        if t == NAT_US:
            hours.append(-1)
            weekdays.append(-1)
            continue
        if not isinstance(zone, str) or t % US_PER_HOUR:
            return None
        h = t // US_PER_HOUR
        hour, weekday = _local_hours(zone, h, h)
        hours.append(int(hour[0]))
        weekdays.append(int(weekday[0]))
    return np.array(hours, dtype=np.int64), np.array(weekdays, dtype=np.int64)


def _str_ids(customer_ids) -> np.ndarray:
    """Customer ids as an object array of str (`pd.Series(ids).astype(str)`; a request's ids,
    already strings, without the Series)."""
    ids = np.asarray(customer_ids, dtype=object)
    if len(ids) <= FEW_IDS and all(type(cid) is str for cid in ids.tolist()):
        return ids.copy()
    return pd.Series(ids).astype(str).to_numpy()


def _distinct(values: np.ndarray) -> list:
    """The distinct values (`pd.unique`; a request's one or two without pandas' set-up)."""
    if len(values) <= FEW_IDS:
        return list(dict.fromkeys(values.tolist()))
    return list(pd.unique(values))


_ZONE_CHUNK_HOURS = 1024  # UTC hours per cached piece of a zone's hour table (~6 weeks)
_ZONE_TABLE_MAX_HOURS = 200_000  # longer spans are converted directly


@functools.lru_cache(maxsize=2048)
def _zone_chunk(zone: str, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Local hour and weekday of the UTC hour starts of one piece of time, in `zone` (pandas' own
    conversion, real DST rules): computed once per zone and piece, not per request."""
    hours_utc = np.arange(chunk * _ZONE_CHUNK_HOURS, (chunk + 1) * _ZONE_CHUNK_HOURS, dtype=np.int64)
    local = (
        pd.DatetimeIndex((hours_utc * US_PER_HOUR).astype("datetime64[us]"))
        .tz_localize("UTC")
        .tz_convert(zone)
    )
    hour = np.asarray(local.hour, dtype=np.int64)
    weekday = np.asarray(local.day_of_week, dtype=np.int64)
    hour.flags.writeable = False
    weekday.flags.writeable = False
    return hour, weekday


def _local_hours(zone: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Local hour and weekday of the UTC hour starts lo..hi (hours since the epoch) in `zone`,
    from the cached pieces; None for a span too long to cache."""
    if hi - lo > _ZONE_TABLE_MAX_HOURS:
        return None
    first, last = lo // _ZONE_CHUNK_HOURS, hi // _ZONE_CHUNK_HOURS
    pieces = [_zone_chunk(zone, k) for k in range(first, last + 1)]
    start, stop = lo - first * _ZONE_CHUNK_HOURS, hi - first * _ZONE_CHUNK_HOURS + 1
    if len(pieces) == 1:
        return pieces[0][0][start:stop], pieces[0][1][start:stop]
    hour = np.concatenate([piece[0] for piece in pieces])[start:stop]
    weekday = np.concatenate([piece[1] for piece in pieces])[start:stop]
    return hour, weekday


def _next_send_time_of_one(
    after: int, deadline: int, zone: str, slot_scores: np.ndarray | None, quiet_hours
) -> np.ndarray | None:
    """`next_send_times` of one customer (a request): the same hours, scores and ties, on
    one-dimensional arrays; None for a span longer than the cached zone tables."""
    out = np.full(1, NAT_US, dtype=np.int64)
    if after == NAT_US or deadline == NAT_US:
        return out
    first_hour, last_hour = -(-after // US_PER_HOUR), deadline // US_PER_HOUR
    if last_hour < first_hour:
        return out
    table = _local_hours(zone, first_hour, last_hour)
    if table is None:  # a span too long for the cached tables: the general path converts it
        return None
    hour, weekday = table
    if slot_scores is None:
        score = np.zeros(len(hour))
    else:
        score = np.asarray(slot_scores[0], dtype=np.float64)[weekday * 24 + hour]
    score = np.where(is_quiet_hour(hour, quiet_hours), -np.inf, score)
    best = int(np.argmax(score))
    if np.isfinite(score[best]):
        out[0] = (first_hour + best) * US_PER_HOUR
    return out


def offer_eligibility(
    offer_ids, segments, value_tiers, monetary, bought_categories, rules: dict[str, OfferRule]
) -> np.ndarray:
    """(n, n_offers) booleans: may customer i receive offer j under `rules`?

    `bought_categories`: per customer, the set (or list) of categories they have bought in.
    """
    segments = np.asarray(segments, dtype=object)
    tiers = np.asarray(value_tiers, dtype=object)
    monetary = nan_to_num_few(monetary)
    out = np.ones((len(segments), len(offer_ids)), dtype=bool)
    for j, offer in enumerate(offer_ids):
        rule = rules.get(str(offer))
        if rule is None:
            continue
        ok = np.ones(len(segments), dtype=bool)
        if rule.segments:
            ok &= isin_few(segments, rule.segments)
        if rule.exclude_segments:
            ok &= ~isin_few(segments, rule.exclude_segments)
        if rule.value_tiers:
            ok &= isin_few(tiers, rule.value_tiers)
        if rule.min_spend > 0:
            ok &= monetary >= rule.min_spend
        if rule.categories:
            wanted = set(rule.categories)
            ok &= np.fromiter((bool(wanted & set(cats)) for cats in bought_categories), bool, len(segments))
        out[:, j] = ok
    return out


def next_send_times(
    after_us,
    deadline_us,
    timezones,
    slot_scores: np.ndarray | None,
    quiet_hours: tuple[int, int] | None,
    chunk: int = 50_000,
) -> np.ndarray:
    """The best whole-hour send moment in [after, deadline] outside quiet hours, per customer.

    Candidates are the UTC hour starts from `after` (rounded up) to `deadline`; each is labelled
    with its local weekday and hour in the customer's zone (real DST rules, built per zone from
    the UTC instants, so a skipped local hour never appears). `slot_scores` (n, 168), indexed by
    local weekday * 24 + hour, ranks them (None: the earliest allowed). Ties go to the earliest.
    Returns int64 µs since the epoch, NaT (int64 min) where no allowed hour exists.
    """
    after = np.asarray(after_us, dtype=np.int64)
    deadline = np.asarray(deadline_us, dtype=np.int64)
    zones = np.asarray(timezones, dtype=object)
    n = len(after)
    if n == 1 and isinstance(zones[0], str):
        one = _next_send_time_of_one(int(after[0]), int(deadline[0]), zones[0], slot_scores, quiet_hours)
        if one is not None:
            return one
    out = np.full(n, NAT_US, dtype=np.int64)
    first_hour = -(-after // US_PER_HOUR)  # ceil to the next hour start (µs → hours since epoch)
    last_hour = deadline // US_PER_HOUR
    span = last_hour - first_hour + 1
    live = (after != NAT_US) & (deadline != NAT_US) & (span > 0)
    if not live.any():
        return out
    width = int(span[live].max())
    steps = np.arange(width, dtype=np.int64)
    for zone in _distinct(zones[live]):
        members = np.flatnonzero(live & (zones == zone))
        lo, hi = int(first_hour[members].min()), int(first_hour[members].max()) + width
        table = _local_hours(str(zone), lo, hi)
        if table is None:
            hours_utc = np.arange(lo, hi + 1, dtype=np.int64)
            local = (
                pd.DatetimeIndex((hours_utc * US_PER_HOUR).astype("datetime64[us]"))
                .tz_localize("UTC")
                .tz_convert(str(zone))
            )
            table = (np.asarray(local.hour, dtype=np.int64), np.asarray(local.day_of_week, dtype=np.int64))
        local_slot = table[1] * 24 + table[0]
        quiet = is_quiet_hour(table[0], quiet_hours)
        for start in range(0, len(members), chunk):
            rows = members[start : start + chunk]
            offset = (first_hour[rows] - lo)[:, None] + steps[None, :]
            allowed = ~quiet[offset] & (steps[None, :] < span[rows, None])
            if slot_scores is None:
                score = np.zeros(offset.shape)
            else:
                score = np.asarray(slot_scores[rows], dtype=np.float64)[
                    np.arange(len(rows))[:, None], local_slot[offset]
                ]
            score = np.where(allowed, score, -np.inf)
            best = np.argmax(score, axis=1)
            found = np.isfinite(score[np.arange(len(rows)), best])
            chosen = (first_hour[rows] + best) * US_PER_HOUR
            out[rows[found]] = chosen[found]
    return out


# ----------------------------------------------------------------------------------------------
# The ledger


class ContactLedger:
    """Contacts (customer, channel, time) and last purchases, for bulk cap and cooldown checks.

    Built from the messages history (`from_history`) and extended with decisions (`record`), so
    caps hold across batches and within one. Counting is by sorted int64 keys
    (customer code << 34 | seconds), so each question is two `searchsorted` calls per customer.
    """

    def __init__(self):
        self._ids: list[np.ndarray] = []
        self._channels: list[np.ndarray] = []
        self._ts: list[np.ndarray] = []
        self.last_purchase_ = pd.Series(dtype="int64")  # customer_id -> µs
        self._last_purchase_of: tuple[pd.Series, dict] | None = None
        self._code_of: dict[str, int] | None = None
        self._index_ready = False

    @classmethod
    def from_history(
        cls, messages: pd.DataFrame | None = None, events: pd.DataFrame | None = None, as_of=None
    ) -> ContactLedger:
        """Contacts from `messages.sent_ts` and last purchases from `events`, both before `as_of`."""
        ledger = cls()
        if messages is not None and len(messages):
            rows = messages if as_of is None else messages.loc[messages[c.SENT_TS] < as_of]
            ledger.record(rows[c.CUSTOMER_ID], rows[c.CHANNEL], rows[c.SENT_TS])
        if events is not None and len(events):
            buys = events.loc[events[c.EVENT_TYPE] == "purchase"]
            if as_of is not None:
                buys = buys.loc[buys[c.TS] < as_of]
            last = buys.groupby(buys[c.CUSTOMER_ID].astype(str), sort=False)[c.TS].max()
            ledger.last_purchase_ = pd.Series(to_us(last), index=last.index.astype(str))
        return ledger

    def record(self, customer_ids, channels, ts) -> None:
        """Adds contacts (e.g. the sends of a batch); later questions count them."""
        ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str).to_numpy()
        if len(ids) == 0:
            return
        self._ids.append(ids)
        self._channels.append(pd.Series(np.asarray(channels, dtype=object)).astype(str).to_numpy())
        self._ts.append(to_us(ts))
        self._index_ready = False

    def contacts(self) -> pd.DataFrame:
        """All recorded contacts: customer_id, channel, ts (UTC)."""
        if not self._ids:
            return pd.DataFrame(
                {c.CUSTOMER_ID: [], c.CHANNEL: [], c.TS: pd.Series([], dtype="datetime64[us, UTC]")}
            )
        ts = np.concatenate(self._ts)
        return pd.DataFrame(
            {
                c.CUSTOMER_ID: np.concatenate(self._ids),
                c.CHANNEL: np.concatenate(self._channels),
                c.TS: pd.DatetimeIndex(ts.astype("datetime64[us]")).tz_localize("UTC"),
            }
        )

    def _build_index(self) -> None:
        if self._index_ready:
            return
        if self._ids:
            ids = np.concatenate(self._ids)
            channels = np.concatenate(self._channels)
            ts = np.concatenate(self._ts)
        else:
            ids, channels, ts = (np.array([], dtype=object),) * 2 + (np.array([], dtype=np.int64),)
        codes, uniques = pd.factorize(ids)
        self._customer_index = pd.Index(uniques)
        seconds = np.maximum(ts // US_PER_SECOND, 0)
        key = (codes.astype(np.int64) << _SECONDS_BITS) | seconds
        order = np.argsort(key, kind="stable")
        self._all_keys = key[order]
        # the channel of each of `_all_keys`, as a small code: a request reads one customer's
        # contacts once (`_contacts_of`) and answers every window from them
        channel_codes, channel_names = pd.factorize(channels)
        self._all_channel_codes = channel_codes.astype(np.int16)[order]
        self._channel_names = [str(ch) for ch in channel_names]
        # each channel's keys, sorted: those of `_all_keys` with its code (no sort of their own)
        self._channel_keys = {
            name: self._all_keys[self._all_channel_codes == j] for j, name in enumerate(self._channel_names)
        }
        # where each customer's keys start in `_all_keys` (customer codes are 0..n-1)
        self._key_starts = np.searchsorted(self._all_keys >> _SECONDS_BITS, np.arange(len(uniques) + 1))
        self._last_contacts = None  # (code, `_contacts_of` answer): a decision asks several times
        self._code_of = None  # built on the first small question
        self._index_ready = True

    def _codes(self, customer_ids) -> np.ndarray:
        self._build_index()
        ids = np.asarray(customer_ids, dtype=object)
        if len(ids) <= FEW_IDS:
            # a request asks about a few customers: a dict look-up, not a pandas Index per question
            if self._code_of is None:
                self._code_of = {cid: i for i, cid in enumerate(self._customer_index.astype(str).tolist())}
            return index_rows(self._code_of, ids)
        ids = pd.Index(pd.Series(ids).astype(str))
        return self._customer_index.get_indexer(ids).astype(np.int64)

    def count_near(self, customer_ids, ts_us, window_hours: float, channel: str | None = None) -> np.ndarray:
        """Contacts of each customer strictly within `window_hours` before or after `ts_us` (µs)."""
        return self.counts_near(customer_ids, ts_us, [(window_hours, channel)])[:, 0]

    def counts_near(self, customer_ids, ts_us, windows) -> np.ndarray:
        """`count_near` for each (window_hours, channel or None) of `windows`: (customers × windows).
        One question for the several caps of a decision: the customers are looked up once."""
        codes = self._codes(customer_ids)
        t = np.asarray(ts_us, dtype=np.int64) // US_PER_SECOND
        out = np.zeros((len(codes), len(windows)), dtype=np.int64)
        if len(codes) <= FEW_IDS:
            # a request: the customer's few contacts read once, every window counted on them in
            # Python (the same seconds and bounds as below; tiny numpy calls per window cost more)
            seconds = (t if t.shape == codes.shape else np.broadcast_to(t, codes.shape)).tolist()
            widths = [int(round(window_hours * 3600)) for window_hours, _ in windows]
            for i, (code, s) in enumerate(zip(codes.tolist(), seconds, strict=True)):
                if code < 0:
                    continue
                by_channel = self._contacts_of(code)
                for j, (w, (_, channel)) in enumerate(zip(widths, windows, strict=True)):
                    found = by_channel.get(channel)
                    if found:
                        lo, hi = max(s - w + 1, 0), max(s + w - 1, 0)
                        out[i, j] = bisect.bisect_right(found, hi) - bisect.bisect_left(found, lo)
            return out
        for j, (window_hours, channel) in enumerate(windows):
            keys = self._all_keys if channel is None else self._channel_keys.get(channel, _NO_KEYS)
            w = int(round(window_hours * 3600))
            lo = (codes << _SECONDS_BITS) | np.maximum(t - w + 1, 0)
            hi = (codes << _SECONDS_BITS) | np.maximum(t + w - 1, 0)
            counts = np.searchsorted(keys, hi, side="right") - np.searchsorted(keys, lo, side="left")
            out[:, j] = np.where(codes >= 0, counts, 0)
        return out

    def _contacts_of(self, code: int) -> dict[str | None, list[int]]:
        """One customer's contacts (sorted seconds): all of them under None, and per channel."""
        last = self._last_contacts
        if last is not None and last[0] == code:
            return last[1]
        start, end = int(self._key_starts[code]), int(self._key_starts[code + 1])
        out: dict[str | None, list[int]] = {}
        if start < end:
            mask = (1 << _SECONDS_BITS) - 1
            seconds = (self._all_keys[start:end] & mask).tolist()
            names = self._channel_names
            out[None] = seconds
            for second, channel in zip(seconds, self._all_channel_codes[start:end].tolist(), strict=True):
                out.setdefault(names[channel], []).append(second)
        # one tuple, replaced whole: a thread reading it sees one customer's answer or another's
        self._last_contacts = (code, out)
        return out

    def last_contact_before(self, customer_ids, ts_us) -> np.ndarray:
        """µs of each customer's last contact before `ts_us` (NaT = int64 min when none)."""
        codes = self._codes(customer_ids)
        t = np.asarray(ts_us, dtype=np.int64) // US_PER_SECOND
        if len(codes) <= FEW_IDS and t.shape == codes.shape and (t >= 0).all():
            # a request: the customer's contacts read once (see `counts_near`)
            out = np.full(len(codes), NAT_US, dtype=np.int64)
            for i, (code, s) in enumerate(zip(codes.tolist(), t.tolist(), strict=True)):
                seconds = self._contacts_of(code).get(None) if code >= 0 else None
                if seconds:
                    before = bisect.bisect_left(seconds, s)
                    if before:
                        out[i] = seconds[before - 1] * US_PER_SECOND
            return out
        pos = np.searchsorted(self._all_keys, (codes << _SECONDS_BITS) | t, side="left")
        start = np.searchsorted(self._all_keys, codes << _SECONDS_BITS, side="left")
        has = (codes >= 0) & (pos > start)
        out = np.full(len(codes), NAT_US, dtype=np.int64)
        mask = (1 << _SECONDS_BITS) - 1
        out[has] = (self._all_keys[pos[has] - 1] & mask) * US_PER_SECOND
        return out

    def last_purchase(self, customer_ids) -> np.ndarray:
        """µs of each customer's last purchase (NaT = int64 min when none)."""
        ids = np.asarray(customer_ids, dtype=object)
        last = self.last_purchase_
        if len(ids) <= FEW_IDS:
            # `last_purchase_` may be replaced (fit, load): the dict is rebuilt when it is
            if self._last_purchase_of is None or self._last_purchase_of[0] is not last:
                values = dict(
                    zip(last.index.astype(str).tolist(), last.to_numpy(np.int64).tolist(), strict=True)
                )
                self._last_purchase_of = (last, values)
            values = self._last_purchase_of[1]
            return np.array([values.get(str(cid), NAT_US) for cid in ids.tolist()], dtype=np.int64)
        return pd.Series(ids).astype(str).map(last).fillna(NAT_US).astype(np.int64).to_numpy()

    def consent_matrix(self, customer_ids, channels, consent: np.ndarray) -> np.ndarray:
        """`consent` (n, len(channels)) as the ledger knows it: the history's, unchanged."""
        return consent

    def bought_since_training(self, customer_ids) -> np.ndarray:
        """Whether each customer bought since training: the history alone knows of nothing."""
        return np.zeros(len(customer_ids), dtype=bool)

    def products_bought_since_training(self, customer_id: str) -> frozenset[str]:
        return frozenset()


class LayeredLedger:
    """The ledger a model was fitted with, plus what happened since (the live store's contacts,
    purchases and consent changes), answering the same questions as `ContactLedger`.

    The fitted ledger is never copied or changed: a request layers a few live rows over it at the
    cost of those rows, and contacts recorded here go to the live layer only.
    """

    def __init__(
        self,
        base: ContactLedger,
        contacts: pd.DataFrame | None = None,
        last_purchases: pd.DataFrame | None = None,
        consent: pd.DataFrame | None = None,
        purchased: dict[str, frozenset[str]] | None = None,
    ) -> None:
        """`contacts`: customer_id, channel, ts; `last_purchases`: customer_id, ts (purchases posted
        since training); `consent`: customer_id, channel, opted_in (the latest change of each
        pair); `purchased`: customer_id → the products those purchases were of."""
        self.base = base
        self.live = ContactLedger()
        if contacts is not None and len(contacts):
            self.live.record(contacts[c.CUSTOMER_ID], contacts[c.CHANNEL], contacts[c.TS])
        if last_purchases is not None and len(last_purchases):
            self.live.last_purchase_ = pd.Series(
                to_us(last_purchases[c.TS]), index=last_purchases[c.CUSTOMER_ID].astype(str).to_numpy()
            )
        self.purchased_ = dict(purchased or {})
        self.consent_ = {}
        if consent is not None and len(consent):
            self.consent_ = {
                (str(cid), str(ch)): bool(v)
                for cid, ch, v in zip(
                    consent[c.CUSTOMER_ID], consent[c.CHANNEL], consent[c.OPTED_IN], strict=True
                )
            }

    @classmethod
    def of_customer(
        cls,
        base: ContactLedger,
        customer_id: str,
        contacts: list[tuple[str, float]],
        last_purchase: float | None,
        consent: dict[str, bool],
        purchased: list[str] | tuple[str, ...] = (),
    ) -> ContactLedger | LayeredLedger:
        """One customer's live rows (contacts as (channel, epoch seconds), the newest purchase in
        epoch seconds, consent per channel, the products bought) over `base`; `base` itself when
        there are none."""
        if not contacts and last_purchase is None and not consent:
            return base
        cid = str(customer_id)
        return cls(
            base,
            contacts=pd.DataFrame(
                {
                    c.CUSTOMER_ID: [cid] * len(contacts),
                    c.CHANNEL: [ch for ch, _ in contacts],
                    c.TS: pd.to_datetime([ts for _, ts in contacts], unit="s", utc=True),
                }
            ),
            last_purchases=None
            if last_purchase is None
            else pd.DataFrame(
                {c.CUSTOMER_ID: [cid], c.TS: pd.to_datetime([last_purchase], unit="s", utc=True)}
            ),
            consent=pd.DataFrame(
                {
                    c.CUSTOMER_ID: [cid] * len(consent),
                    c.CHANNEL: list(consent),
                    c.OPTED_IN: list(consent.values()),
                }
            ),
            purchased={cid: frozenset(purchased)} if purchased else None,
        )

    def record(self, customer_ids, channels, ts) -> None:
        self.live.record(customer_ids, channels, ts)

    def contacts(self) -> pd.DataFrame:
        return pd.concat([self.base.contacts(), self.live.contacts()], ignore_index=True)

    def count_near(self, customer_ids, ts_us, window_hours: float, channel: str | None = None) -> np.ndarray:
        return self.counts_near(customer_ids, ts_us, [(window_hours, channel)])[:, 0]

    def counts_near(self, customer_ids, ts_us, windows) -> np.ndarray:
        return self.base.counts_near(customer_ids, ts_us, windows) + self.live.counts_near(
            customer_ids, ts_us, windows
        )

    def last_contact_before(self, customer_ids, ts_us) -> np.ndarray:
        return np.maximum(
            self.base.last_contact_before(customer_ids, ts_us),
            self.live.last_contact_before(customer_ids, ts_us),
        )

    def last_purchase(self, customer_ids) -> np.ndarray:
        return np.maximum(self.base.last_purchase(customer_ids), self.live.last_purchase(customer_ids))

    def bought_since_training(self, customer_ids) -> np.ndarray:
        """Whether each customer has a purchase posted since training (the live layer's)."""
        return self.live.last_purchase(customer_ids) != NAT_US

    def products_bought_since_training(self, customer_id: str) -> frozenset[str]:
        return self.purchased_.get(str(customer_id), frozenset())

    def consent_matrix(self, customer_ids, channels, consent: np.ndarray) -> np.ndarray:
        """`consent` with the live opt-ins and opt-outs applied (they are newer than any history)."""
        if not self.consent_:
            return consent
        out = np.array(consent, dtype=bool, copy=True)
        for i, cid in enumerate(np.asarray(customer_ids, dtype=object).tolist()):
            for j, ch in enumerate(channels):
                value = self.consent_.get((str(cid), ch))
                if value is not None:
                    out[i, j] = value
        return out


# what the engine decides under: the fitted ledger, or the fitted ledger with live rows laid over it
Ledger = ContactLedger | LayeredLedger


# ----------------------------------------------------------------------------------------------
# Checking finished decisions
AUDIT_COLUMNS: tuple[str, ...] = (
    "control_group",
    "no_consent",
    "quiet_hours",
    "cooldown_after_purchase",
    "cooldown_after_message",
    "over_cap_overall",
    "over_cap_channel",
)


def audit_sends(
    customer_ids,
    channels,
    send_at_us,
    timezones,
    consented: np.ndarray,
    ledger: Ledger,
    policy: ContactPolicy,
) -> pd.DataFrame:
    """One row per send, one boolean column per rule it breaks (`AUDIT_COLUMNS`; all False = ok).

    `consented` (n,) says whether the customer is opted in to that send's channel. The ledger must
    not yet contain these sends: each is checked against the contacts *already* there.
    """
    return pd.DataFrame(
        audit_columns(customer_ids, channels, send_at_us, timezones, consented, ledger, policy)
    )


def audit_columns(
    customer_ids,
    channels,
    send_at_us,
    timezones,
    consented: np.ndarray,
    ledger: Ledger,
    policy: ContactPolicy,
    control: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`audit_sends` as {rule: booleans} in `AUDIT_COLUMNS` order, without the frame (a request).
    `control`: `in_control_group` of these customers when the caller has it already."""
    ids = _str_ids(customer_ids)
    channels = np.asarray(channels, dtype=object).astype(str)
    send = np.asarray(send_at_us, dtype=np.int64)
    hours, _ = local_hour_and_weekday(send, timezones)
    out = {
        "control_group": in_control_group(ids, policy)
        if control is None
        else np.asarray(control, dtype=bool),
        "no_consent": ~np.asarray(consented, dtype=bool) | ~isin_few(channels, policy.channels),
        "quiet_hours": is_quiet_hour(hours, policy.quiet_hours) | (send == NAT_US),
    }
    last_buy = ledger.last_purchase(ids)
    cool_buy = int(policy.cooldown_after_purchase_hours * US_PER_HOUR)
    out["cooldown_after_purchase"] = (last_buy != NAT_US) & (send < last_buy + cool_buy) & (send >= last_buy)
    # the cooldown and the overall caps: one question to the ledger
    windows = [(policy.cooldown_after_message_hours, None)] if policy.cooldown_after_message_hours > 0 else []
    caps = [(cap, hours) for cap, hours in cap_windows(policy.overall_caps) if cap is not None]
    counts = ledger.counts_near(ids, send, windows + [(hours, None) for _, hours in caps])
    out["cooldown_after_message"] = counts[:, 0] > 0 if windows else np.zeros(len(ids), dtype=bool)
    over = np.zeros(len(ids), dtype=bool)
    for j, (cap, _) in enumerate(caps, start=len(windows)):
        over |= counts[:, j] >= cap
    out["over_cap_overall"] = over
    over = np.zeros(len(ids), dtype=bool)
    for ch in _distinct(channels):
        caps = [(cap, hours) for cap, hours in cap_windows(policy.caps_for(ch)) if cap is not None]
        if not caps:
            continue
        sel = channels == ch
        counts = ledger.counts_near(ids[sel], send[sel], [(hours, ch) for _, hours in caps])
        for j, (cap, _) in enumerate(caps):
            over[sel] |= counts[:, j] >= cap
    out["over_cap_channel"] = over
    return out


def cap_windows(caps: Caps) -> tuple[tuple[int | None, int], tuple[int | None, int]]:
    """(cap, window in hours) of a `Caps`: per day, per week."""
    return ((caps.per_day, 24), (caps.per_week, 168))
