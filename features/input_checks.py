"""The checks every way into the project shares for a channel name and a point in time.

The `omni` options (`--channel`, `--now`, `--after`) and the HTTP request fields (`channel`,
`now`, `after`, `ts`) call these two functions, so an unknown channel or a time without a zone is
refused with the same sentence whichever door it came through: the command line exits 2 with it,
the service answers HTTP 400 with it (pydantic puts the field's name in front).

Times must carry their zone, as in the data contract: "09:00" means a different moment for every
customer, and guessing UTC has sent messages in the middle of the night.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd

from features.contract import DEFAULT_CHANNELS

# the channels a message can be sent on (the contact policy's default channels, the service's
# send-time route); shop channels (store, web, app, call_center) are where customers come to us
MESSAGE_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "social")
# a time outside these years is a client's bug, and overflows nanosecond timestamps
EARLIEST_YEAR, LATEST_YEAR = 1970, 2200
TIME_EXAMPLE = "2026-07-01T09:00:00+00:00"


def check_channel(value: object, known: Iterable[str] = DEFAULT_CHANNELS, field: str = "channel") -> str:
    """`value` when it is one of `known` channels; else ValueError naming `field` and the known ones."""
    names = tuple(str(x) for x in known)
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"{field}: unknown channel {value!r}; known channels: {', '.join(names)}")
    return value


def check_channels(
    values: Iterable[object], known: Iterable[str] = DEFAULT_CHANNELS, field: str = "channel"
) -> tuple[str, ...]:
    """`check_channel` on each value; the distinct ones in their first order (comma-separated
    values are split, so `--channel email,sms` and `--channel email --channel sms` mean the same)."""
    known = tuple(known)
    out: dict[str, None] = {}
    for value in values:
        parts = value.split(",") if isinstance(value, str) else [value]
        for part in parts:
            part = part.strip() if isinstance(part, str) else part
            if part != "":
                out[check_channel(part, known, field)] = None
    return tuple(out)


def naive_time_message(field: str, value: object) -> str:
    return f"{field}: give a time zone, e.g. {TIME_EXAMPLE} or 2026-07-01T09:00:00Z ({value!s} has none)"


def aware_time(value: object, field: str = "ts") -> pd.Timestamp:
    """`value` (an ISO 8601 string, a datetime or a pandas Timestamp) as a UTC Timestamp. ValueError
    naming `field` when it is not a time, has no time zone, or lies outside 1970-2200."""
    if isinstance(value, str):
        text = value.strip()
        try:
            # Python's ISO 8601 reader: strict (no "tomorrow", no day/month guessing), and "Z" is UTC
            parsed: datetime = datetime.fromisoformat(
                text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            )
        except ValueError:
            raise ValueError(f"{field}: {value!r} is not an ISO 8601 time, e.g. {TIME_EXAMPLE}") from None
    elif isinstance(value, datetime):  # pd.Timestamp is a datetime too
        parsed = value
    else:
        raise ValueError(
            f"{field}: expected an ISO 8601 time such as {TIME_EXAMPLE}, got {type(value).__name__}"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(naive_time_message(field, value))
    if not EARLIEST_YEAR <= parsed.year <= LATEST_YEAR:
        raise ValueError(f"{field}: {parsed.isoformat()} is outside the years {EARLIEST_YEAR}-{LATEST_YEAR}")
    return pd.Timestamp(parsed).tz_convert("UTC")
