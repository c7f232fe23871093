"""Time in the generator: instants are int64 microseconds since the epoch (UTC), local wall-clock
times are the same numbers read in a customer's IANA zone, and `Window` is the history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ._parameters import TIMEZONES

US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR
INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Window:
    """The history: `days` local calendar days ending with `end`. Instants are int64 µs since the
    epoch (UTC); `local_midnight_us[d]` is local day d's midnight as a wall-clock number."""

    start_us: int
    end_us: int  # exclusive
    days: int
    local_midnight_us: np.ndarray
    weekday: np.ndarray  # 0 = Monday
    season: np.ndarray  # shopping intensity multiplier, mean 1
    season_max: float

    @staticmethod
    def make(end: str, days: int) -> Window:
        end_day = pd.Timestamp(end)
        if end_day.tzinfo is not None:
            end_day = end_day.tz_convert("UTC").tz_localize(None)
        end_day = end_day.normalize()
        first_day = end_day - pd.Timedelta(days=days - 1)
        dates = pd.date_range(first_day, periods=days, freq="D", unit="us")
        midnight = dates.asi8.astype(np.int64)
        start_us = int(midnight[0])
        end_us = int(midnight[-1]) + US_PER_DAY
        month, dom = dates.month.to_numpy(), dates.day.to_numpy()
        season = np.ones(days)
        # holiday peak (late November to Christmas), January sales, quiet February
        season[((month == 11) & (dom >= 20)) | ((month == 12) & (dom <= 24))] = 1.5
        season[(month == 1) & (dom <= 10)] = 1.2
        season[month == 2] = 0.85
        season /= season.mean()
        return Window(
            start_us=start_us,
            end_us=end_us,
            days=days,
            local_midnight_us=midnight,
            weekday=dates.day_of_week.to_numpy().astype(np.int8),
            season=season,
            season_max=float(season.max()),
        )


def local_to_utc(local_us: np.ndarray, tz_codes: np.ndarray) -> np.ndarray:
    """Wall-clock local times (µs) in each row's zone → UTC µs. Non-existent times (spring
    forward) move forward; ambiguous ones (fall back) take standard time."""
    out = np.empty(local_us.shape, dtype=np.int64)
    for code, zone in enumerate(TIMEZONES):
        sel = np.flatnonzero(tz_codes == code)
        if sel.size == 0:
            continue
        naive = pd.DatetimeIndex(local_us[sel].astype("datetime64[us]"))
        aware = naive.tz_localize(zone, ambiguous=np.zeros(sel.size, dtype=bool), nonexistent="shift_forward")
        out[sel] = aware.as_unit("us").asi8
    return out


def hours_to_us(hours: np.ndarray) -> np.ndarray:
    return np.round(hours * US_PER_HOUR).astype(np.int64)


def ts_array(us: np.ndarray, null=None) -> pa.Array:
    """µs instants as an Arrow `timestamp[us, tz=UTC]` column (null where `null`)."""
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.timestamp("us", tz="UTC"), mask=null)
