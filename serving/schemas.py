"""Typed requests and responses of the HTTP API (pydantic): what channel systems send and get back.

Validation lives here, not in the service: an invalid request never reaches a model, and BentoML
answers it with HTTP 400 and pydantic's error list, which names the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from features.contract import DEFAULT_CHANNELS
from features.input_checks import MESSAGE_CHANNELS, aware_time, check_channel
from features.live_store import CONSENT, MESSAGE_SENT, POSTED_EVENT_TYPES, PRODUCT_EVENTS


def _channel_of(known: tuple[str, ...]):
    """A channel field checked by `features.input_checks.check_channel`, the check every `omni`
    option uses too (one message: the field and the known channels); OpenAPI still lists them."""

    def check(value: object, info: ValidationInfo) -> str:
        return check_channel(value, known, info.field_name)

    return Annotated[str, BeforeValidator(check), WithJsonSchema({"type": "string", "enum": list(known)})]


def _aware(value: object, info: ValidationInfo) -> object:
    """A time field: an ISO 8601 string or datetime must carry its zone (`features.input_checks.
    aware_time`, as on the command line); epoch seconds are UTC already and pass as they are."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    return aware_time(value, info.field_name).to_pydatetime()


ChannelName = _channel_of(DEFAULT_CHANNELS)
MessageChannel = _channel_of(MESSAGE_CHANNELS)
AwareTime = Annotated[datetime, BeforeValidator(_aware)]
EventType = Literal[POSTED_EVENT_TYPES]  # type: ignore[valid-type]
CustomerId = Field(
    min_length=1,
    max_length=128,
    description="The canonical customer id or any source id linked to it (identities, events); answers "
    "name the canonical id.",
)
ProductIds = list[str]


def plausible_time(value: datetime | None, name: str) -> datetime | None:
    """Times outside 1970-2200 are client bugs (and overflow pandas' nanosecond timestamps)."""
    if value is not None and not (1970 <= value.year <= 2200):
        raise ValueError(f"{name}: {value.isoformat()} is outside the years 1970-2200")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Request):
    categories: list[str] | None = Field(None, max_length=100, description="Only these categories.")
    exclude_categories: list[str] = Field(default_factory=list, max_length=100)
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    max_per_category: int | None = Field(None, ge=1, le=100, description="Diversity cap.")

    @model_validator(mode="after")
    def price_range_is_a_range(self) -> Filters:
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min: {self.price_min} is above price_max {self.price_max}")
        return self


_EXCLUDE_PURCHASED = (
    "Only products the customer never bought (purchases posted to /v1/events since training count "
    "too). By default the list holds as many already-bought products as the data say it should."
)


class RecommendRequest(_Request):
    customer_id: str = CustomerId
    channel: ChannelName = Field(description="Channel asking.")
    k: int = Field(10, ge=1, le=100, description="How many products.")
    context_items: list[str] = Field(
        default_factory=list, max_length=100, description="Products viewed or carted in the current session."
    )
    exclude: list[str] = Field(default_factory=list, max_length=1000, description="Products never to return.")
    filters: Filters | None = None
    exclude_purchased: bool = Field(False, description=_EXCLUDE_PURCHASED)


class RecommendedItem(BaseModel):
    product_id: str
    score: float
    reason: str


class RecommendResponse(BaseModel):
    request_id: str
    customer_id: str
    channel: str
    cold_start: bool = Field(description="True when the customer has no history: popular items are returned.")
    items: list[RecommendedItem]
    model_versions: dict[str, str]


class SimilarItemsRequest(_Request):
    product_ids: list[str] = Field(
        min_length=1, max_length=100, description="The products of a product page or a cart."
    )
    k: int = Field(10, ge=1, le=100, description="How many products.")
    channel: ChannelName | None = Field(None, description="Channel asking (only what it sells).")
    filters: Filters | None = None


class SimilarItemsResponse(BaseModel):
    request_id: str
    items: list[RecommendedItem] = Field(description="Never one of the given products.")
    model_versions: dict[str, str]


class RecommendBatchRequest(_Request):
    customer_ids: list[str] = Field(min_length=1, max_length=1000)
    channel: ChannelName
    k: int = Field(10, ge=1, le=100)
    exclude_purchased: bool = Field(False, description=_EXCLUDE_PURCHASED)


class RecommendBatchResponse(BaseModel):
    request_id: str
    results: list[RecommendResponse]
    model_versions: dict[str, str]


class ChannelRequest(_Request):
    customer_id: str = CustomerId


class RankedChannel(BaseModel):
    channel: str
    rank: int
    probability: float = Field(description="Calibrated probability that a message is opened or clicked.")
    conversion_probability: float


class ChannelResponse(BaseModel):
    request_id: str
    customer_id: str
    channels: list[RankedChannel]
    fallback: bool = Field(description="Too little message history: estimates come from similar customers.")
    no_channel_reason: str | None = Field(None, description="Why no channel may be used, when none may.")
    model_versions: dict[str, str]


class SendTimeRequest(_Request):
    customer_id: str = CustomerId
    channel: MessageChannel
    after: AwareTime | None = Field(None, description="Earliest send moment (default: now).")
    quiet_hours: str | None = Field(
        None,
        pattern=r"^(none|\d{1,2}-\d{1,2})$",
        description="Local START-END or none (default: the contact policy's quiet hours, as for "
        "next-best-action).",
    )

    @field_validator("quiet_hours")
    @classmethod
    def quiet_hours_are_hours(cls, value: str | None) -> str | None:
        from models.engagement.local_time import parse_quiet_hours

        if value is not None:
            parse_quiet_hours(value)  # ValueError (→ HTTP 400) unless both ends are hours 0-23
        return value

    @field_validator("after")
    @classmethod
    def after_is_plausible(cls, value: datetime | None) -> datetime | None:
        return plausible_time(value, "after")


class SendTimeResponse(BaseModel):
    request_id: str
    customer_id: str
    channel: str
    timezone: str
    best_weekday: int = Field(description="0 = Monday, local time.")
    best_hour_local: int
    next_send_utc: datetime | None = Field(
        description="None when the customer did not consent to the channel."
    )
    no_consent: bool = Field(False, description="True: the customer may not be messaged on this channel now.")
    scores: list[float] = Field(description="168 scores, index = local weekday * 24 + hour.")
    fallback: bool
    model_versions: dict[str, str]


class EventRequest(_Request):
    customer_id: str = CustomerId
    event_type: EventType = Field(
        description="Behaviour (view, add_to_cart, remove_from_cart, purchase, return, message_open, "
        "message_click), a message a channel system sent on its own (message_sent: counts toward caps "
        "and cooldowns at once) or a consent change (consent, with opted_in)."
    )
    channel: ChannelName
    product_id: str | None = Field(None, min_length=1, max_length=128)
    ts: AwareTime | None = Field(None, description="When it happened (default: now).")
    campaign_id: str | None = Field(None, min_length=1, max_length=128, description="message_sent only.")
    offer_id: str | None = Field(None, min_length=1, max_length=128, description="message_sent only.")
    opted_in: bool | None = Field(None, description="consent only: true = opt-in, false = opt-out.")
    source_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Another id of the same customer (e.g. the app's device id when customer_id is the "
        "loyalty card): linked to the customer, so later calls may use either.",
    )

    @field_validator("ts")
    @classmethod
    def ts_is_plausible(cls, value: datetime | None) -> datetime | None:
        return plausible_time(value, "ts")

    @model_validator(mode="after")
    def product_events_name_a_product(self) -> EventRequest:
        if self.event_type in PRODUCT_EVENTS and self.product_id is None:
            raise ValueError(f"product_id: a {self.event_type} event must name the product")
        if self.event_type == CONSENT and self.opted_in is None:
            raise ValueError("opted_in: a consent event must say opted_in true or false")
        if self.event_type != CONSENT and self.opted_in is not None:
            raise ValueError(f"opted_in: only a consent event carries it, not {self.event_type}")
        for name in ("campaign_id", "offer_id"):
            if self.event_type != MESSAGE_SENT and getattr(self, name) is not None:
                raise ValueError(f"{name}: only a message_sent event carries it, not {self.event_type}")
        return self


class EventResponse(BaseModel):
    request_id: str
    accepted: bool
    customer_id: str
    session_items: list[str] = Field(description="The customer's session items after this event.")


class PingResponse(BaseModel):
    ok: bool = True


class ProfileRequest(_Request):
    customer_id: str = CustomerId


class ProfileResponse(BaseModel):
    request_id: str
    customer_id: str
    known: bool = Field(description="False for a customer the models were not trained on.")
    profile: dict = Field(description='Each field as {"value": ..., "derived_from": "..."}.')
    model_versions: dict[str, str]


class NextBestActionRequest(_Request):
    customer_id: str = CustomerId
    channel: ChannelName | None = Field(None, description="Channel asking (informational).")
    now: AwareTime | None = Field(None, description="Decision time (default: now).")
    commit: bool = Field(
        False,
        description="True: a contact decided here is written to the shared contact ledger before the "
        "answer returns, so caps and cooldowns count it on every channel system and worker.",
    )

    @field_validator("now")
    @classmethod
    def now_is_plausible(cls, value: datetime | None) -> datetime | None:
        return plausible_time(value, "now")


class NextBestActionResponse(BaseModel):
    request_id: str
    customer_id: str
    action: str
    channel: str | None = None
    send_at: str | None = Field(None, description="UTC, ISO 8601.")
    offer_id: str | None = None
    product_ids: list[str]
    expected_gain: dict = Field(
        description="value = uplift × margin − offer cost − contact cost, with its parts."
    )
    reasons: list[str]
    committed: bool = Field(False, description="True: this contact is in the ledger (commit was asked).")
    model_versions: dict[str, str]


class StockItem(_Request):
    product_id: str = Field(min_length=1, max_length=128)
    in_stock: bool


class InventoryRequest(_Request):
    items: list[StockItem] = Field(min_length=1, max_length=10_000)


class InventoryResponse(BaseModel):
    request_id: str
    accepted: int = Field(description="Products whose stock was recorded.")
    out_of_stock: int = Field(description="Products out of stock now, in all.")
