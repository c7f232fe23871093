"""Local time of the send-time model: a 168-slot weekly grid, `slot = weekday * 24 + hour`
(weekday 0 = Monday), in the customer's IANA time zone with real daylight-saving rules (UTC when
the zone is unknown); quiet hours (local hours without sends, which may cross midnight); and the
candidate send moments after a time, stepped in absolute time across daylight-saving changes.
"""

from __future__ import annotations

import zoneinfo

import numpy as np
import pandas as pd

from features.customer_features import local_time_parts

HOURS = 24
DAYS = 7
SLOTS = DAYS * HOURS
DEFAULT_QUIET_HOURS: tuple[int, int] = (21, 8)  # no sends from 21:00 to 07:59 local


def slot_index(weekdays, hours) -> np.ndarray:
    """Slot 0-167 of a local weekday (0 = Monday) and hour."""
    return np.asarray(weekdays, dtype=np.int64) * HOURS + np.asarray(hours, dtype=np.int64)


def local_slots(ts: pd.Series, timezones: pd.Series) -> np.ndarray:
    """Local slot of UTC timestamps, one IANA zone per row (DST exact; missing zone = UTC)."""
    hours, weekdays = local_time_parts(ts.reset_index(drop=True), timezones.reset_index(drop=True))
    return slot_index(weekdays, hours)


def is_quiet(hours, quiet_hours: tuple[int, int] | None) -> np.ndarray:
    """True for local hours inside the quiet window [start, end), which may cross midnight.

    (21, 8) is quiet from 21:00 to 07:59; (1, 5) from 01:00 to 04:59; None or start == end: never.
    """
    hours = np.asarray(hours)
    if quiet_hours is None:
        return np.zeros(hours.shape, dtype=bool)
    start, end = (int(h) for h in quiet_hours)
    if not (0 <= start <= 23 and 0 <= end <= 23):
        raise ValueError(f"quiet hours must be whole hours 0-23, got {quiet_hours}")
    if start == end:
        return np.zeros(hours.shape, dtype=bool)
    if start < end:
        return (hours >= start) & (hours < end)
    return (hours >= start) | (hours < end)  # crosses midnight


def parse_quiet_hours(text: str | None) -> tuple[int, int] | None:
    """'21-8' -> (21, 8); 'none', '' or None -> None (no quiet hours). ValueError otherwise."""
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    parts = text.replace(":00", "").split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"quiet hours must look like 21-8 (local START-END hours) or 'none', got {text!r}")
    quiet = (int(parts[0]), int(parts[1]))
    is_quiet(np.arange(HOURS), quiet)  # validates the range
    return quiet


def valid_timezone(name) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def circular_distance(a, b) -> np.ndarray:
    """Hours between local hours on the 24-hour circle (0-12)."""
    return np.abs((np.asarray(a) - np.asarray(b) + HOURS // 2) % HOURS - HOURS // 2)


def local_hour_starts(
    after: pd.Timestamp, zone: str, horizon_hours: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate send moments in `zone` from `after` (UTC) on: the starts of the local clock
    hours (the current hour counts from `after` itself), `horizon_hours` of them, stepped in
    absolute time, so a local hour skipped by daylight saving never appears and a repeated one
    appears twice. Returns their UTC times (naive datetime64[us]), local slots and local hours."""
    local_after = after.tz_convert(zone)
    hour_start = after - pd.Timedelta(
        minutes=local_after.minute,
        seconds=local_after.second,
        microseconds=local_after.microsecond,
        nanoseconds=local_after.nanosecond,
    )
    candidates = pd.date_range(hour_start, periods=int(horizon_hours), freq="h", unit="us")
    local = candidates.tz_convert(zone)
    times = candidates.tz_localize(None).to_numpy().astype("datetime64[us]")
    times[0] = np.datetime64(after.tz_localize(None).as_unit("us").to_datetime64(), "us")
    return times, slot_index(local.day_of_week, local.hour), np.asarray(local.hour)
