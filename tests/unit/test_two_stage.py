"""The two-stage recommender end to end on a tiny world whose right answers are known by construction.

The world: tribe A (customers a0..a17) buys toys on the web, tribe B (b0..b17) buys books in the
store. Each customer buys five of their tribe's six products, one every 25 days, so the sixth is
the one to recommend. A lamp always comes with a bulb in one order (bought together). Everybody buys
soap (replenished every 10 days) at a customer-specific offset. A discontinued toy was bought by
every A customer (popular, inactive); a new toy has no history at all; one book is sold in the
store only and one toy online only. The customers table gives each tribe a segment, plus a known
customer without any event.
"""

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from features.io import load_tables
from models.recs.rules import ONLINE_ONLY, PRODUCT_CHANNELS
from models.recs.two_stage import TwoStageRecommender
from training.config import RecsConfig
from training.recs_training import train_two_stage

END = pd.Timestamp("2026-03-01", tz="UTC")
N_PER_TRIBE = 18
REASON_KINDS = ("personal", "popular", "replenish", "buy_again", "similar_to", "bought_together")
FAST = dict(
    factors=8,
    iterations=10,
    regularization=0.01,
    ease_l2=5.0,
    label_days=28,
    n_estimators=30,
    min_child_samples=5,
    num_leaves=7,
    num_threads=1,
    random_state=0,
)


def _world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = []

    def add(customer, product, event_type, day, channel, order=None, quantity=1.0, price=10.0):
        rows.append((customer, product, event_type, day, channel, order, quantity, quantity * price))

    for tribe, prefix, channel, price in (("a", "toy", "web", 10.0), ("b", "book", "store", 20.0)):
        for u in range(N_PER_TRIBE):
            cid = f"{tribe}{u}"
            missing = u % 6
            items = [f"{prefix}{i}" for i in range(6) if i != missing]
            items = items[u % 5 :] + items[: u % 5]  # every customer in another order
            for j, pid in enumerate(items):
                day = 30 + 25 * j + (u % 4)  # the fifth at days 130-133: in the label window
                add(cid, pid, "view", day - 0.01, channel)
                add(cid, pid, "purchase", day, channel, f"{cid}-{j}", price=price)
            for d in range(2 + u % 10, 150, 10):  # soap every 10 days
                add(cid, "soap", "purchase", d, channel, f"{cid}-soap-{d}", price=3.0)
            if tribe == "a":
                add(cid, "toy_old", "purchase", 1, channel, f"{cid}-old", price=price)
            if u % 3 == 0:  # lamp + bulb in one order
                add(cid, "lamp", "purchase", 40 + u, channel, f"{cid}-lamp", price=30.0)
                add(cid, "bulb", "purchase", 40 + u, channel, f"{cid}-lamp", price=2.0)
    events = pd.DataFrame(
        rows,
        columns=[
            "customer_id",
            "product_id",
            "event_type",
            "day",
            "channel",
            "order_id",
            "quantity",
            "amount",
        ],
    )
    events["ts"] = END - pd.Timedelta(days=150) + pd.to_timedelta(events.pop("day"), unit="D")
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)

    products = pd.DataFrame(
        [(f"toy{i}", "toys", 10.0 + i, np.nan) for i in range(6)]
        + [(f"book{i}", "books", 20.0 + i, np.nan) for i in range(6)]
        + [
            ("soap", "home", 3.0, 10.0),
            ("lamp", "home", 30.0, np.nan),
            ("bulb", "home", 2.0, np.nan),
            ("toy_old", "toys", 10.0, np.nan),
            ("toy_new", "toys", 11.0, np.nan),
        ],
        columns=["product_id", "category", "price", "replenishment_days"],
    )
    products["is_active"] = products["product_id"] != "toy_old"
    products[PRODUCT_CHANNELS] = np.where(products["product_id"] == "book5", "store", None)
    products[ONLINE_ONLY] = products["product_id"] == "toy5"
    customers = pd.DataFrame(
        {
            "customer_id": [f"a{u}" for u in range(N_PER_TRIBE)]
            + [f"b{u}" for u in range(N_PER_TRIBE)]
            + ["b_fan"],
            "segment": ["toy_fans"] * N_PER_TRIBE + ["book_fans"] * N_PER_TRIBE + ["book_fans"],
        }
    )
    return events, products, customers


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def model(world):
    events, products, customers = world
    return TwoStageRecommender(**FAST).fit(events, products, customers)


def _category(model, pid):
    return model.categories_[model.item_category_[model.product_index_[pid]]]


def _bought(events, cid):
    return set(events.loc[(events.customer_id == cid) & (events.event_type == "purchase"), "product_id"])


def test_a_customer_gets_the_missing_product_of_their_tribe(model, world):
    events = world[0]
    assert model.ranker_ is not None  # the label window had purchases: a learned ranker
    hits = 0
    for u in range(N_PER_TRIBE):
        for tribe, prefix in (("a", "toy"), ("b", "book")):
            got = model.recommend(f"{tribe}{u}", k=3)
            assert not got.cold_start
            hits += f"{prefix}{u % 6}" in got.product_ids
            assert not (_bought(events, f"{tribe}{u}") - {"soap"}) & set(got.product_ids)
    assert hits >= 0.8 * 2 * N_PER_TRIBE


def test_every_item_has_a_reason_and_lists_are_deterministic(model):
    for cid in ("a1", "b2", "stranger"):
        first = model.recommend(cid, k=8)
        assert len(first.reasons) == len(first.product_ids) == len(first.scores)
        assert all(r.split(":")[0] in REASON_KINDS for r in first.reasons)
        assert first.scores == sorted(first.scores, reverse=True)
        again = model.recommend(cid, k=8)
        assert (again.product_ids, again.scores, again.reasons) == (
            first.product_ids,
            first.scores,
            first.reasons,
        )


def test_inactive_products_never_come_back(model):
    for cid in ("a0", "b0", "b7", "stranger", "b_fan"):
        assert "toy_old" not in model.recommend(cid, k=20).product_ids


def test_due_replenishment_comes_back_with_its_reason(model):
    soap = model.product_index_["soap"]
    ages = {cid: model.last_age_days_[model.customer_index_[cid], soap] for cid in ("a0", "a8", "a9")}
    # a0 bought soap ~8 days ago (cycle 10: due from 8), a9 one day ago
    due = [cid for cid, age in ages.items() if age >= 0.8 * 10]
    fresh = [cid for cid, age in ages.items() if age < 0.8 * 10]
    assert due and fresh
    for cid in due:
        got = model.recommend(cid, k=20)
        assert "soap" in got.product_ids
        assert got.reasons[got.product_ids.index("soap")] == "replenish"
        off = model.recommend(cid, k=20, filters={"exclude_purchased": True})
        assert "soap" not in off.product_ids
    for cid in [*due, *fresh]:
        # the list of products never bought holds none of the customer's purchases
        bought = set(model.product_ids_[model.last_age_days_[model.customer_index_[cid]].indices])
        new_only = model.recommend(cid, k=20, filters={"exclude_purchased": True}).product_ids
        assert new_only and not bought & set(new_only)


def test_exclude_category_price_and_diversity_rules(model):
    got = model.recommend("a1", k=5, exclude=["toy1"])
    assert "toy1" not in got.product_ids
    books = model.recommend("a1", k=5, filters={"categories": ["books"]})
    assert books.product_ids and all(_category(model, p) == "books" for p in books.product_ids)
    no_toys = model.recommend("a1", k=10, filters={"exclude_categories": ["toys"]})
    assert no_toys.product_ids and all(_category(model, p) != "toys" for p in no_toys.product_ids)
    cheap = model.recommend("a1", k=10, filters={"price_min": 2.5, "price_max": 12.0})
    prices = dict(zip(model.product_ids_, model.item_price_, strict=True))
    assert cheap.product_ids and all(2.5 <= prices[p] <= 12.0 for p in cheap.product_ids)
    capped = model.recommend("a1", k=6, filters={"max_per_category": 1})
    cats = [_category(model, p) for p in capped.product_ids]
    assert len(cats) == len(set(cats)) >= 2
    cold_capped = model.recommend("stranger", k=6, filters={"max_per_category": 1})
    cats = [_category(model, p) for p in cold_capped.product_ids]
    assert len(cats) == len(set(cats)) >= 2


def test_same_order_on_every_channel_minus_what_is_not_sold_there(model):
    for cid in ("a0", "a5", "b5", "b11"):
        everywhere = model.recommend(cid, k=40).product_ids
        for channel in ("web", "store", "app"):
            col = model.channels_.index(channel)
            eligible = [p for p in everywhere if model.channel_ok_[model.product_index_[p], col]]
            got = model.recommend(cid, k=6, channel=channel).product_ids
            # the place reserved for a new product may hold one that ranks lower
            reserved = [p for p in got if p not in eligible[:6]]
            assert all(model.item_is_new_[model.product_index_[p]] for p in reserved)
            assert [p for p in got if p not in reserved] == eligible[: 6 - len(reserved)]
    # the store-only book never on the web, the online-only toy never in the store
    for cid in [f"b{u}" for u in range(0, N_PER_TRIBE, 6)]:  # customers missing book5... and others
        assert "book5" not in model.recommend(cid, k=20, channel="web").product_ids
    for cid in [f"a{u}" for u in range(N_PER_TRIBE)]:
        assert "toy5" not in model.recommend(cid, k=20, channel="store").product_ids
    assert "toy5" in model.recommend("a5", k=3, channel="web").product_ids  # its missing toy, online


def test_context_items_shift_the_list_at_once(model):
    new_only = {"exclude_purchased": True}
    plain = model.recommend("b1", k=5, filters=new_only)
    assert plain.product_ids[0] == "book1"  # the book b1 has not bought yet
    got = model.recommend("b1", k=5, context_items=["toy2", "toy3"], filters=new_only)
    assert not got.cold_start
    assert _category(model, got.product_ids[0]) == "toys"  # the session moves toys to the top
    assert not {"toy2", "toy3"} & set(got.product_ids)  # what is in the session is not repeated
    toy_reasons = [
        r for p, r in zip(got.product_ids, got.reasons, strict=True) if _category(model, p) == "toys"
    ]
    assert any(
        r in ("similar_to:toy2", "similar_to:toy3", "bought_together:toy2", "bought_together:toy3")
        for r in toy_reasons
    )


def test_new_customer_with_context_gets_what_goes_with_it(model):
    got = model.recommend("stranger", k=3, context_items=["lamp"])
    assert not got.cold_start
    assert got.product_ids[0] == "bulb"
    assert got.reasons[0] in ("bought_together:lamp", "similar_to:lamp")


def test_cold_start_gets_popular_items_for_segment_and_channel(model):
    stranger_store = model.recommend("stranger", k=3, channel="store")
    assert stranger_store.cold_start and stranger_store.reasons == ["popular"] * 3
    assert "soap" in stranger_store.product_ids  # what everyone buys
    store_cats = [_category(model, p) for p in model.recommend("stranger", k=4, channel="store").product_ids]
    web_cats = [_category(model, p) for p in model.recommend("stranger", k=4, channel="web").product_ids]
    assert store_cats.count("books") > store_cats.count("toys")
    assert web_cats.count("toys") > web_cats.count("books")
    fan = model.recommend("b_fan", k=4)  # known customer without events: the segment decides
    assert fan.cold_start
    fan_cats = [_category(model, p) for p in fan.product_ids]
    assert fan_cats.count("books") > fan_cats.count("toys")


def test_a_product_without_history_can_be_recommended(model):
    assert model.item_is_new_[model.product_index_["toy_new"]]
    # k=2: the missing toy first, then the slot reserved for a new product in a favourite category
    shown = [
        cid
        for cid in (f"a{u}" for u in range(N_PER_TRIBE))
        if "toy_new" in model.recommend(cid, k=2).product_ids
    ]
    assert len(shown) == N_PER_TRIBE
    got = model.recommend("a0", k=2)
    assert got.product_ids[1] == "toy_new" and got.reasons[1] == "personal"
    book_people = [
        cid
        for cid in (f"b{u}" for u in range(N_PER_TRIBE))
        if "toy_new" in model.recommend(cid, k=2).product_ids
    ]
    assert not book_people  # it follows the customer's categories: no toys for book people


def test_save_and_load_give_identical_lists(model, tmp_path):
    model.save(tmp_path / "two_stage")
    loaded = TwoStageRecommender.load(tmp_path / "two_stage")
    for kwargs in (
        dict(customer_id="a3"),
        dict(customer_id="b4", channel="web"),
        dict(customer_id="x", context_items=["lamp"]),
    ):
        a, b = model.recommend(k=6, **kwargs), loaded.recommend(k=6, **kwargs)
        assert (a.product_ids, a.reasons) == (b.product_ids, b.reasons)
        assert np.allclose(a.scores, b.scores)
    assert not list((tmp_path / "two_stage").glob("*.pkl"))


def test_batch_frame_for_all_customers(model):
    frame = model.recommendations_frame(k=4, chunk=7)
    assert list(frame.columns) == [c.CUSTOMER_ID, c.RANK, c.PRODUCT_ID, c.SCORE, c.REASON]
    assert set(frame[c.CUSTOMER_ID]) == set(model.customer_ids_)
    assert frame.groupby(c.CUSTOMER_ID)[c.RANK].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()
    one = model.recommend("a2", k=4)
    rows = frame[frame[c.CUSTOMER_ID] == "a2"]
    assert rows[c.PRODUCT_ID].tolist() == one.product_ids and rows[c.REASON].tolist() == one.reasons
    # a long request list is scored in chunks, with the same answers
    ids = (list(model.customer_ids_) + ["stranger"]) * 8
    many = model.recommend_many(
        ids, k=3, context_items=[["lamp"] if i % 5 == 0 else [] for i in range(len(ids))]
    )
    assert len(many) == len(ids) > 256
    assert many[-1].product_ids == model.recommend("stranger", k=3).product_ids
    assert many[5 * 60].product_ids == model.recommend(ids[300], k=3, context_items=["lamp"]).product_ids


def test_plain_transaction_log_without_products_table(world, tmp_path):
    events = world[0]
    log = events.loc[
        events.event_type == "purchase", ["customer_id", "ts", "product_id", "quantity", "amount"]
    ].copy()
    log["channel"] = "store"
    log["event_type"] = "purchase"
    folder = tmp_path / "log"
    folder.mkdir()
    log.to_parquet(folder / "events.parquet", index=False)
    tables = load_tables(folder)
    assert "products" in tables.derived
    model = TwoStageRecommender(**FAST).fit(tables)
    assert model.categories_ == ("unknown",)
    assert model.cycles_estimated_ and np.isfinite(model.item_cycle_days_[model.product_index_["soap"]])
    out = tmp_path / "recs.parquet"
    model.recommendations_frame(k=3).to_parquet(out, index=False)
    frame = pd.read_parquet(out)
    assert frame[c.CUSTOMER_ID].nunique() == log["customer_id"].nunique()
    assert frame[c.REASON].str.split(":").str[0].isin(REASON_KINDS).all()


def test_training_helper_reports_the_served_order_beside_every_baseline(world):
    from features.io import Tables

    events, products, customers = world
    tables = Tables(events=events, products=products, customers=customers)
    config = RecsConfig(test_days=28, two_stage={k: v for k, v in FAST.items() if k != "random_state"})
    model, metrics, info = train_two_stage(tables, config)
    names = {"served", "popularity", "repeat", "als", "ease", "ranker"}
    assert set(metrics) == names
    for values in metrics.values():
        for name in ("map", "ndcg@10", "precision@10", "recall@10", "coverage", "cold_start_share"):
            assert 0.0 <= values[name] <= 1.0
    assert set(info["all_purchases"]) == names
    assert set(info["served"]) == {"all", "new"}  # what the split model chose on its validation window
    assert 0.0 <= info["served_rebuy_share"] <= 1.0
    assert model.as_of_ > pd.Timestamp(info["split_time"])  # refitted on everything for serving
    assert "refit" in info["seconds"]


def test_fast_top_n_paths_agree_with_the_plain_one():
    import scipy.sparse as sp

    from models.base import top_k
    from models.recs._top_k import top_n_sparse, top_shared

    rng = np.random.default_rng(0)
    n_items = 700
    vectors = np.round(rng.random((3, n_items)), 1)  # many ties
    vectors[vectors < 0.2] = 0.0
    key_of_row = rng.integers(0, 3, 40)
    block = rng.random((40, n_items)) < 0.05
    block[:4, : n_items - 30] = True  # rows that block most of the pool: the fallback path
    for n in (5, 50):
        fast = top_shared(key_of_row, vectors, block, n)
        dense = np.where(block | (vectors[key_of_row] <= 0), -np.inf, vectors[key_of_row])
        assert np.array_equal(fast, top_k(dense, n)[0])
        sparse = sp.csr_matrix(vectors[key_of_row])
        assert np.array_equal(top_n_sparse(sparse, block, n), top_k(dense, n)[0])
        # float32 scores take the one-key sort: same order, ties to the lower index
        single = sp.csr_matrix(vectors[key_of_row].astype(np.float32))
        dense32 = np.where(block | (single.toarray() <= 0), -np.inf, single.toarray())
        assert np.array_equal(top_n_sparse(single, block, n), top_k(dense32, n)[0])


def _batch_of_one(model, cid, k, exclude=(), context_items=(), **kwargs):
    """The batch path for one request: what `recommend` answered before its single-request path."""
    return model.recommend_many(
        [cid], k, exclude=[list(exclude)], context_items=[list(context_items)], **kwargs
    )[0]


def test_single_request_path_gives_the_batch_answer(model):
    # every rule and source of the tiny world: segments, store-only and online-only products, the new
    # product's slot, due soap, the lamp and its bulb, customers without events and unknown ones
    variants = [
        dict(k=10),
        dict(k=4, channel="web"),
        dict(k=6, channel="store"),
        dict(k=5, channel="nowhere"),
        dict(k=8, context_items=["lamp", "toy2"]),
        dict(k=8, context_items=["not-a-product"]),
        dict(k=6, exclude=["toy1", "book2", "not-a-product"]),
        dict(k=10, filters={"categories": ["books", "home"], "max_per_category": 2}),
        dict(k=10, filters={"price_min": 2.5, "price_max": 12.0}, channel="web"),
        dict(k=10, filters={"exclude_purchased": True}),
        dict(k=20, now=model.as_of_ + pd.Timedelta(days=9)),
    ]
    for cid in [*model.customer_ids_.tolist(), "stranger"]:
        for kwargs in variants:
            assert model.recommend(cid, **kwargs) == _batch_of_one(model, cid, **kwargs), (cid, kwargs)


def test_the_refit_on_its_own_thread_is_the_sequential_refit(world, monkeypatch):
    from contextlib import nullcontext

    import training.recs_training as recs
    from features.io import Tables

    events, products, customers = world
    tables = Tables(events=events, products=products, customers=customers)
    config = RecsConfig(test_days=28, two_stage={k: v for k, v in FAST.items() if k != "random_state"})
    threaded, threaded_metrics, _ = train_two_stage(tables, config)
    monkeypatch.setattr(recs, "fit_pool", lambda workers, rows=None: nullcontext(None))  # one thread
    alone, alone_metrics, _ = train_two_stage(tables, config)

    def scores(metrics):  # everything but the seconds each model took
        return {m: {k: v for k, v in values.items() if k != "seconds"} for m, values in metrics.items()}

    assert scores(threaded_metrics) == scores(alone_metrics)
    ids = alone.customer_ids_[::7].tolist()
    for a, b in zip(alone.recommend_many(ids, 10), threaded.recommend_many(ids, 10), strict=True):
        assert (a.product_ids, a.scores) == (b.product_ids, b.scores)


def test_both_list_kinds_from_one_candidate_set_equal_each_kind_alone(model):
    """The evaluation scores both protocols from one set of candidates: the list without bought
    products is the default candidates less the re-buys, item for item, score for score."""
    ids = [*model.customer_ids_.tolist(), "stranger"]
    models = ("served", "ranker", "repeat", "als", "popularity")
    both = model.compare_kinds(ids, 6, models, explained=("served",))
    alone = {
        "all": model.compare_many(ids, 6, models, explained=("served",)),
        "new": model.compare_many(ids, 6, models, filters={"exclude_purchased": True}, explained=("served",)),
    }
    assert both == alone
    assert both["new"]["served"] == model.recommend_many(ids, 6, filters={"exclude_purchased": True})


def test_customers_who_come_in_bursts_are_chosen_on_purchases_held_out_at_random():
    """Raters of a film site come once: too few come back within a label window, so the
    rankers learn and the served orders are chosen on purchases held out at random instead."""
    from features.io import Tables

    rng = np.random.default_rng(0)
    rows = []
    for u in range(300):
        tribe = "toy" if u % 2 else "book"
        day = END - pd.Timedelta(days=float(rng.uniform(1, 200)))
        for i in rng.choice(8, 5, replace=False):
            rows.append((f"u{u}", f"{tribe}{i}", "purchase", day + pd.Timedelta(minutes=float(i)), "web"))
    events = pd.DataFrame(rows, columns=["customer_id", "product_id", "event_type", "ts", "channel"])
    model = TwoStageRecommender(**FAST).fit(Tables(events=events))
    info = model.training_info_
    assert "held out at random" in info["label_window"]
    assert info["validation_customers"] > 0 and set(info["served"]) == {"all", "new"}
    got = model.recommend("u1", k=3, filters={"exclude_purchased": True}).product_ids
    assert got and all(p.startswith("toy") for p in got)  # the tribe's other toys


def test_similar_items_go_with_the_given_products_and_never_are_them(model):
    got = model.similar_items(["lamp"], k=3)
    assert got.product_ids[0] == "bulb" and "lamp" not in got.product_ids
    assert got.reasons[0] in ("bought_together:lamp", "similar_to:lamp")
    # the same list a stranger with the product in the session gets, without it
    stranger = model.recommend("someone-new", k=3, exclude=["lamp"], context_items=["lamp"])
    assert got.product_ids == stranger.product_ids and got.reasons == stranger.reasons
    unknown = model.similar_items(["no-such-product"], k=3)
    assert len(unknown.product_ids) == 3 and "no-such-product" not in unknown.product_ids
