"""Column names of the data contract and of derived tables, in one place.

Every module refers to columns through these constants (as microsoft/recommenders does), so a
renamed column is a one-line change and a typo is an ImportError instead of a silent KeyError.
"""

# events
CUSTOMER_ID = "customer_id"
TS = "ts"
CHANNEL = "channel"
EVENT_TYPE = "event_type"
PRODUCT_ID = "product_id"
QUANTITY = "quantity"
AMOUNT = "amount"
ORDER_ID = "order_id"
STORE_ID = "store_id"

# messages
MESSAGE_ID = "message_id"
SENT_TS = "sent_ts"
CAMPAIGN_ID = "campaign_id"
OFFER_ID = "offer_id"
OPENED_TS = "opened_ts"
CLICKED_TS = "clicked_ts"
CONVERTED_TS = "converted_ts"
REVENUE = "revenue"

# customers
TIMEZONE = "timezone"
SIGNUP_TS = "signup_ts"

# identities
SOURCE_SYSTEM = "source_system"
SOURCE_ID = "source_id"

# consent
OPTED_IN = "opted_in"
UPDATED_TS = "updated_ts"

# products
CATEGORY = "category"
PRICE = "price"
BRAND = "brand"
REPLENISHMENT_DAYS = "replenishment_days"
IS_ACTIVE = "is_active"

# offers
KIND = "kind"
VALUE = "value"
COST = "cost"  # currency per redemption (what a campaign system records)
DURATION_DAYS = "duration_days"  # optional validity: the conversion window of a message carrying it

# derived tables (features, recommendations)
WEIGHT = "weight"
RANK = "rank"
SCORE = "score"
REASON = "reason"
LOCAL_HOUR = "local_hour"
LOCAL_WEEKDAY = "local_weekday"

# optional products columns: where a product may be offered
CHANNELS = "channels"  # comma-separated channels the product is sold on
STORE_ONLY = "store_only"
ONLINE_ONLY = "online_only"

# derived customer attributes
SEGMENT = "segment"
# customers columns named `attr.<name>` are free customer attributes (age, income, ...), imported
# with `omni import --map customers.attr.<name>=Column`; models may read them as features
ATTRIBUTE_PREFIX = "attr."
