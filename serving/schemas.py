"""Typed requests and responses of the HTTP API (pydantic): what channel systems send and get back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.contract import DEFAULT_CHANNELS

Id = Field(min_length=1, max_length=128)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=128, description="Canonical customer id.")
    channel: str = Field(description=f"Channel asking: one of {', '.join(DEFAULT_CHANNELS)}.")
    k: int = Field(10, ge=1, le=100, description="How many products.")
    context_items: list[str] = Field(
        default_factory=list, max_length=100, description="Products viewed or carted in the current session."
    )
    exclude: list[str] = Field(default_factory=list, max_length=1000, description="Products never to return.")

    @field_validator("channel")
    @classmethod
    def known_channel(cls, value: str) -> str:
        if value not in DEFAULT_CHANNELS:
            raise ValueError(f"unknown channel {value!r}; expected one of {', '.join(DEFAULT_CHANNELS)}")
        return value


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
