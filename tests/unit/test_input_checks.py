"""features.input_checks: one check for a channel name and one for a time, and the HTTP request
schemas refusing with the very same sentence the command line exits with."""

import re
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from pydantic import ValidationError

from features.contract import DEFAULT_CHANNELS
from features.input_checks import (
    MESSAGE_CHANNELS,
    aware_time,
    check_channel,
    check_channels,
    naive_time_message,
)
from serving.schemas import EventRequest, NextBestActionRequest, RecommendRequest, SendTimeRequest


def test_known_channel_passes_and_unknown_names_the_field_and_the_known_ones():
    assert check_channel("web") == "web"
    with pytest.raises(ValueError) as info:
        check_channel("fax", field="--channel")
    assert (
        str(info.value) == f"--channel: unknown channel 'fax'; known channels: {', '.join(DEFAULT_CHANNELS)}"
    )
    with pytest.raises(ValueError, match="known channels: email, sms, push, social"):
        check_channel("web", MESSAGE_CHANNELS)
    with pytest.raises(ValueError, match="unknown channel 3"):
        check_channel(3)


def test_channel_lists_take_repeats_and_commas_and_check_each():
    assert check_channels(["email,sms", "email", " push "], MESSAGE_CHANNELS) == ("email", "sms", "push")
    assert check_channels([], MESSAGE_CHANNELS) == ()
    with pytest.raises(ValueError, match="unknown channel 'web'"):
        check_channels(["email,web"], MESSAGE_CHANNELS)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-07-01T09:00:00+02:00", pd.Timestamp("2026-07-01T07:00:00Z")),
        ("2026-07-01T09:00:00Z", pd.Timestamp("2026-07-01T09:00:00Z")),
        ("2026-07-01 09:00+00:00", pd.Timestamp("2026-07-01T09:00:00Z")),
        (datetime(2026, 7, 1, 9, tzinfo=timezone(timedelta(hours=-5))), pd.Timestamp("2026-07-01T14:00:00Z")),
    ],
)
def test_aware_times_become_utc(value, expected):
    got = aware_time(value, "--now")
    assert got == expected and str(got.tz) == "UTC"


@pytest.mark.parametrize(
    "value, message",
    [
        ("2026-07-01T09:00", re.escape("--now: give a time zone, e.g. 2026-07-01T09:00:00+00:00")),
        (datetime(2026, 7, 1, 9), "--now: give a time zone"),
        ("tomorrow", "--now: 'tomorrow' is not an ISO 8601 time"),
        ("01/07/2026 09:00+00:00", "is not an ISO 8601 time"),
        ("9999-12-31T00:00:00+00:00", "outside the years 1970-2200"),
        (12, "expected an ISO 8601 time"),
    ],
)
def test_naive_unreadable_or_implausible_times_are_refused_naming_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        aware_time(value, "--now")


@pytest.mark.parametrize(
    "model, body, field",
    [
        (SendTimeRequest, {"customer_id": "x", "channel": "email", "after": "2026-07-01T09:00"}, "after"),
        (NextBestActionRequest, {"customer_id": "x", "now": "2026-07-01T09:00"}, "now"),
        (
            EventRequest,
            {
                "customer_id": "x",
                "event_type": "view",
                "channel": "web",
                "product_id": "p",
                "ts": "2026-07-01T09:00",
            },
            "ts",
        ),
    ],
)
def test_http_time_fields_refuse_naive_times_with_the_command_lines_sentence(model, body, field):
    with pytest.raises(ValidationError) as info:
        model(**body)
    error = info.value.errors()[0]
    assert error["loc"] == (field,)
    assert naive_time_message(field, "2026-07-01T09:00") in error["msg"]


@pytest.mark.parametrize(
    "model, body, known",
    [
        (RecommendRequest, {"customer_id": "x", "channel": "fax"}, DEFAULT_CHANNELS),
        (NextBestActionRequest, {"customer_id": "x", "channel": "fax"}, DEFAULT_CHANNELS),
        (SendTimeRequest, {"customer_id": "x", "channel": "fax"}, MESSAGE_CHANNELS),
    ],
)
def test_http_channel_fields_refuse_unknown_channels_with_the_command_lines_sentence(model, body, known):
    with pytest.raises(ValidationError) as info:
        model(**body)
    error = info.value.errors()[0]
    assert error["loc"] == ("channel",)
    with pytest.raises(ValueError) as cli:
        check_channel("fax", known, "channel")
    assert str(cli.value) in error["msg"]


def test_http_fields_still_take_what_they_took():
    assert SendTimeRequest(customer_id="x", channel="sms", after="2026-07-01T09:00:00Z").after.hour == 9
    assert SendTimeRequest(customer_id="x", channel="sms", after=1_782_896_400).after.tzinfo is not None
    assert NextBestActionRequest(customer_id="x").channel is None
    schema = RecommendRequest.model_json_schema()["properties"]["channel"]
    assert schema["enum"] == list(DEFAULT_CHANNELS)  # OpenAPI still lists the channels
