"""The business rules of product lists (models/recs/rules.py), each on arrays whose answer is known by construction."""

import numpy as np
import pandas as pd
import pytest

from models.recs import rules
from models.recs.rules import Filters

CATEGORIES = ("books", "food", "toys")
# items:            0        1       2       3       4       5
ITEM_CATEGORY = np.array([0, 1, 2, 2, 0, 1])
ITEM_PRICE = np.array([5.0, 2.0, 30.0, np.nan, 12.0, 8.0])


def test_filters_from_a_request_dict():
    f = Filters.from_dict({"categories": ["toys"], "price_max": 20, "max_per_category": 2})
    assert f.include_categories == ("toys",) and f.price_max == 20.0 and f.max_per_category == 2
    assert Filters.from_dict(None) == Filters()
    assert Filters.from_dict({"categories": None, "price_min": 1}) == Filters(price_min=1.0)

    class RequestFilters:  # what a pydantic model offers
        def model_dump(self):
            return {
                "categories": ["toys"],
                "exclude_categories": [],
                "price_min": None,
                "max_per_category": 3,
            }

    assert Filters.from_dict(RequestFilters()) == Filters(include_categories=("toys",), max_per_category=3)
    assert Filters.from_dict(f) is f
    with pytest.raises(ValueError, match="unknown filter"):
        Filters.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="above price_max"):
        Filters.from_dict({"price_min": 10, "price_max": 5})
    with pytest.raises(ValueError, match="at least 1"):
        Filters.from_dict({"max_per_category": 0})


def test_category_include_and_exclude():
    include = rules.filter_mask(
        ITEM_CATEGORY, ITEM_PRICE, CATEGORIES, Filters(include_categories=("toys", "food"))
    )
    assert include.tolist() == [False, True, True, True, False, True]
    exclude = rules.filter_mask(ITEM_CATEGORY, ITEM_PRICE, CATEGORIES, Filters(exclude_categories=("books",)))
    assert exclude.tolist() == [False, True, True, True, False, True]
    unknown = rules.filter_mask(
        ITEM_CATEGORY, ITEM_PRICE, CATEGORIES, Filters(include_categories=("garden",))
    )
    assert not unknown.any()
    assert rules.filter_mask(ITEM_CATEGORY, ITEM_PRICE, CATEGORIES, Filters()).all()


def test_price_range_is_inclusive_and_unknown_prices_fail_it():
    mask = rules.filter_mask(ITEM_CATEGORY, ITEM_PRICE, CATEGORIES, Filters(price_min=5.0, price_max=12.0))
    assert mask.tolist() == [True, False, False, False, True, True]  # item 3 has no price


def test_ids_mask_ignores_unknown_ids():
    index = {"a": 0, "b": 1, "c": 2}
    assert rules.ids_mask(3, index, ["c", "zzz"]).tolist() == [False, False, True]
    assert not rules.ids_mask(3, index, None).any()


def test_replenishable_items_are_due_from_a_share_of_their_cycle():
    ages = np.array([9.0, 2.0, 40.0, 40.0])  # days since each bought item was bought
    cycles = np.array([10.0, 10.0, 30.0, np.nan])  # the last item is not replenishable
    ratio = rules.replenishment_ratio(ages, cycles)
    due = rules.is_due(ratio, due_from=0.8)
    assert due.tolist() == [True, False, True, False]


def test_exclude_purchased_filter_is_read_from_a_request():
    assert not rules.Filters.from_dict(None).exclude_purchased
    assert rules.Filters.from_dict({"exclude_purchased": True}).exclude_purchased


def test_channel_eligibility_from_the_optional_products_columns():
    products = pd.DataFrame(
        {
            "product_id": ["p0", "p1", "p2", "p3", "p4"],
            "channels": ["web, app", None, "", "store", None],
            "store_only": [False, True, False, False, None],
            "online_only": [False, False, True, False, False],
        }
    )
    channels = ("store", "web", "app")
    ok = rules.channel_eligibility(products, np.array(["p0", "p1", "p2", "p3", "p4", "p_unlisted"]), channels)
    # columns: store, web, app, and "a channel the model does not know"
    assert ok.tolist() == [
        [False, True, True, False],  # listed channels only
        [True, False, False, False],  # store only
        [False, True, True, False],  # online only
        [True, False, False, False],  # channels = store
        [True, True, True, True],  # no restriction
        [True, True, True, True],  # not in the products table
    ]
    assert rules.channel_column(channels, None) is None
    assert rules.channel_column(channels, "web") == 1
    assert rules.channel_column(channels, "carrier-pigeon") == 3
    assert rules.channel_eligibility(None, np.array(["x"]), channels).all()
    as_list = pd.DataFrame({"product_id": ["p0"], "channels": [["app"]]})
    assert rules.channel_eligibility(as_list, np.array(["p0"]), channels).tolist() == [
        [False, False, True, False]
    ]
    # as read from a CSV: every value is text
    text = pd.DataFrame(
        {"product_id": ["p0", "p1"], "store_only": ["false", "TRUE"], "online_only": ["0", ""]}
    )
    ok = rules.channel_eligibility(text, np.array(["p0", "p1"]), channels)
    assert ok.tolist() == [[True, True, True, True], [True, False, False, False]]
    no_columns = pd.DataFrame({"product_id": ["x"], "category": ["toys"]})
    assert rules.channel_eligibility(no_columns, np.array(["x"]), channels).all()


def test_per_category_cap_is_greedy_from_the_top():
    ranked_categories = np.array([0, 0, 1, 0, 2, 1, 1])
    assert rules.cap_per_category(np.arange(7), ranked_categories, 1, 10).tolist() == [0, 2, 4]
    assert rules.cap_per_category(np.arange(7), ranked_categories, 2, 4).tolist() == [0, 1, 2, 4]
    assert rules.cap_per_category(np.arange(7), ranked_categories, None, 3).tolist() == [0, 1, 2]


def test_reserved_slot_brings_a_new_product_in_at_the_end():
    ranked_categories = np.array([0, 0, 1, 1, 2, 2])
    reserved = np.array([False, False, False, False, False, True])
    got = rules.select_positions(ranked_categories, 3, None, reserved, n_reserved_slots=1)
    assert got.tolist() == [0, 1, 5]  # the best two, then the reserved one (still in ranked order)
    already = rules.select_positions(ranked_categories, 6, None, reserved, n_reserved_slots=1)
    assert already.tolist() == [0, 1, 2, 3, 4, 5]
    assert rules.select_positions(ranked_categories, 3, None, reserved, n_reserved_slots=0).tolist() == [
        0,
        1,
        2,
    ]


def test_reserved_slot_respects_the_category_cap():
    ranked_categories = np.array([0, 1, 2, 0])
    reserved = np.array([False, False, False, True])  # a new product of category 0
    got = rules.select_positions(ranked_categories, 3, 1, reserved, n_reserved_slots=1)
    # category 0 is full with position 0: the new one cannot come in without breaking the cap
    assert got.tolist() == [0, 1, 2]
    got = rules.select_positions(ranked_categories, 3, 2, reserved, n_reserved_slots=1)
    assert got.tolist() == [0, 1, 3]
