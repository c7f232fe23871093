"""The data contract: which tables exist, their columns, types, keys and references.

This module only *describes* the contract; `features.validation` checks a folder of tables
against it and `features.io` loads them. `docs/data-contract.md` is the human-readable twin of
this file: keep them in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from features import columns as c

DEFAULT_CHANNELS: tuple[str, ...] = (
    "store",
    "web",
    "app",
    "email",
    "sms",
    "push",
    "social",
    "call_center",
)

# Event types the feature builders know how to weigh. Others are accepted (reported as a warning)
# and ignored by the interaction matrix, because retailers log many more kinds of event.
KNOWN_EVENT_TYPES: tuple[str, ...] = (
    "view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "wishlist",
    "purchase",
    "return",
)

OFFER_KINDS: tuple[str, ...] = ("discount", "bogo", "free_shipping", "content")

# Column kinds: how a column is parsed and checked.
ID = "id"  # string identifier (numbers are read as strings, never as floats)
STR = "str"
TIMESTAMP = "timestamp"  # must be timezone-aware; stored as UTC
FLOAT = "float"
INT = "int"
BOOL = "bool"
CHANNEL_KIND = "channel"  # a string from ContractConfig.channels
CHANNEL_LIST = "channel_list"  # comma-separated names from ContractConfig.channels (or a list column)
TIMEZONE_KIND = "timezone"  # an IANA time-zone name
ATTRIBUTE = "attribute"  # a free customer attribute: numbers stay numbers, anything else is text

# Customers columns named `attr.<name>` (features.columns.ATTRIBUTE_PREFIX) are free customer
# attributes (age, income band, gender, ...): kept and typed (ATTRIBUTE), may be missing.
ATTRIBUTE_PREFIX = c.ATTRIBUTE_PREFIX


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str
    required: bool = True  # the column must be present
    nullable: bool = False  # its values may be missing
    min_value: float | None = None  # lower bound for numbers (inclusive unless min_exclusive)
    default: object = None  # value used when an optional column is absent (or, if nullable, empty)
    min_exclusive: bool = False  # the bound itself is not allowed (e.g. a duration must be > 0)


@dataclass(frozen=True)
class Reference:
    """`table.column` values must exist in `target_table.target_column` (when that table is present)."""

    column: str
    target_table: str
    target_column: str
    # "error": a value found nowhere breaks the contract. "warning": it is kept (e.g. a customer
    # missing from a customers table that lists only some customers) and counted in one warning.
    severity: str = "error"
    # other (table, column) pairs whose values also count as known (when those tables are present)
    also_in: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...] = ()
    references: tuple[Reference, ...] = ()
    required: bool = False
    allow_extra_columns: bool = True  # free attributes are kept as they are
    # columns whose name starts with this prefix are typed free attributes (kind ATTRIBUTE)
    attribute_prefix: str | None = None

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


@dataclass(frozen=True)
class ContractConfig:
    """What a deployment may change about the contract without touching code."""

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    event_types: tuple[str, ...] = KNOWN_EVENT_TYPES
    offer_kinds: tuple[str, ...] = OFFER_KINDS
    extra: dict = field(default_factory=dict)


EVENTS = TableSpec(
    name="events",
    required=True,
    columns=(
        ColumnSpec(c.CUSTOMER_ID, ID),
        ColumnSpec(c.TS, TIMESTAMP),
        ColumnSpec(c.CHANNEL, CHANNEL_KIND),
        ColumnSpec(c.EVENT_TYPE, STR),
        ColumnSpec(c.PRODUCT_ID, ID, required=False, nullable=True),
        ColumnSpec(c.QUANTITY, FLOAT, required=False, nullable=True, default=1.0),
        ColumnSpec(c.AMOUNT, FLOAT, required=False, nullable=True, default=0.0),
        ColumnSpec(c.ORDER_ID, ID, required=False, nullable=True),
        ColumnSpec(c.STORE_ID, ID, required=False, nullable=True),
    ),
    # Customer ids in events may be canonical ids or source ids that `identities` stitches; a
    # customers table may list only some customers (see features.validation). A product master may
    # miss some products sold: they are kept, and completed on load as a derived products table
    # would have them (features.io.load_tables).
    references=(Reference(c.PRODUCT_ID, "products", c.PRODUCT_ID, severity="warning"),),
)

MESSAGES = TableSpec(
    name="messages",
    columns=(
        ColumnSpec(c.MESSAGE_ID, ID),
        ColumnSpec(c.CUSTOMER_ID, ID),
        ColumnSpec(c.CHANNEL, CHANNEL_KIND),
        ColumnSpec(c.SENT_TS, TIMESTAMP),
        ColumnSpec(c.CAMPAIGN_ID, ID, required=False, nullable=True),
        ColumnSpec(c.OFFER_ID, ID, required=False, nullable=True),
        ColumnSpec(c.OPENED_TS, TIMESTAMP, required=False, nullable=True),
        ColumnSpec(c.CLICKED_TS, TIMESTAMP, required=False, nullable=True),
        ColumnSpec(c.CONVERTED_TS, TIMESTAMP, required=False, nullable=True),
        ColumnSpec(c.REVENUE, FLOAT, required=False, nullable=True, min_value=0.0),
    ),
    primary_key=(c.MESSAGE_ID,),
    references=(
        # a message to a customer the customers table does not list: still a customer (see events)
        Reference(c.CUSTOMER_ID, "customers", c.CUSTOMER_ID, severity="warning"),
        Reference(c.OFFER_ID, "offers", c.OFFER_ID),
    ),
)

CUSTOMERS = TableSpec(
    name="customers",
    columns=(
        ColumnSpec(c.CUSTOMER_ID, ID),
        ColumnSpec(c.TIMEZONE, TIMEZONE_KIND, required=False, default="UTC"),
        ColumnSpec(c.SIGNUP_TS, TIMESTAMP, required=False, nullable=True),
        ColumnSpec(c.SEGMENT, STR, required=False, nullable=True),  # the retailer's own segment
    ),
    primary_key=(c.CUSTOMER_ID,),
    attribute_prefix=ATTRIBUTE_PREFIX,
)

IDENTITIES = TableSpec(
    name="identities",
    columns=(
        ColumnSpec(c.SOURCE_SYSTEM, STR),
        ColumnSpec(c.SOURCE_ID, ID),
        ColumnSpec(c.CUSTOMER_ID, ID),
    ),
    primary_key=(c.SOURCE_SYSTEM, c.SOURCE_ID),
    references=(Reference(c.CUSTOMER_ID, "customers", c.CUSTOMER_ID),),
)

CONSENT = TableSpec(
    name="consent",
    columns=(
        ColumnSpec(c.CUSTOMER_ID, ID),
        ColumnSpec(c.CHANNEL, CHANNEL_KIND),
        ColumnSpec(c.OPTED_IN, BOOL),
        ColumnSpec(c.UPDATED_TS, TIMESTAMP),
    ),
    # several rows per (customer, channel) are a history: the latest updated_ts wins.
    # An opt-in or opt-out for a customer known nowhere is an error: a mistyped id would leave the
    # real customer's choice unapplied. Customers of events and messages count as known.
    references=(
        Reference(
            c.CUSTOMER_ID,
            "customers",
            c.CUSTOMER_ID,
            also_in=(("events", c.CUSTOMER_ID), ("messages", c.CUSTOMER_ID)),
        ),
    ),
)

PRODUCTS = TableSpec(
    name="products",
    columns=(
        ColumnSpec(c.PRODUCT_ID, ID),
        # an empty category is "unknown" (counted in a warning)
        ColumnSpec(c.CATEGORY, STR, nullable=True, default="unknown"),
        # a missing price is filled on load from the product's purchases in events (features.io)
        ColumnSpec(c.PRICE, FLOAT, required=False, nullable=True, min_value=0.0),
        ColumnSpec(c.BRAND, STR, required=False, nullable=True),
        ColumnSpec(c.REPLENISHMENT_DAYS, FLOAT, required=False, nullable=True, min_value=1.0),
        ColumnSpec(c.IS_ACTIVE, BOOL, required=False, default=True),
        # where the product may be offered (models.recs.rules.channel_eligibility); empty = everywhere
        ColumnSpec(c.CHANNELS, CHANNEL_LIST, required=False, nullable=True),
        ColumnSpec(c.STORE_ONLY, BOOL, required=False, nullable=True, default=False),
        ColumnSpec(c.ONLINE_ONLY, BOOL, required=False, nullable=True, default=False),
    ),
    primary_key=(c.PRODUCT_ID,),
)

OFFERS = TableSpec(
    name="offers",
    columns=(
        ColumnSpec(c.OFFER_ID, ID),
        ColumnSpec(c.KIND, STR),
        ColumnSpec(c.VALUE, FLOAT, min_value=0.0),
        ColumnSpec(c.COST, FLOAT, min_value=0.0),  # currency per redemption
        # validity in days: a message carrying the offer counts a conversion within this many days
        ColumnSpec(c.DURATION_DAYS, FLOAT, required=False, nullable=True, min_value=0.0, min_exclusive=True),
    ),
    primary_key=(c.OFFER_ID,),
)

TABLES: dict[str, TableSpec] = {
    t.name: t for t in (EVENTS, MESSAGES, CUSTOMERS, IDENTITIES, CONSENT, PRODUCTS, OFFERS)
}

# File names a table may have inside a data folder, in order of preference.
FILE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".csv.gz")
