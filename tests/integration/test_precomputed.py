"""Lists computed ahead (`models.recs.precomputed`) give exactly the live single-request answer.

The store keeps a short head (`length` = 6 here, so that large k, channels that sell few of the
stored items and the reserved new-product places all come up) and must either answer as the live
path does, item, score and reason alike, or hand the request to the live path.
"""

import numpy as np
import pytest

from models.recs import rules
from models.recs._single_request import ranked_one
from models.recs.precomputed import PrecomputedLists
from models.recs.two_stage import PRECOMPUTED_FOLDER, TwoStageRecommender

CHANNELS = (None, "web", "store", "app", "email", "sms", "not-a-channel")


@pytest.fixture(scope="module")
def fitted(small_recommender):
    return small_recommender


@pytest.fixture(scope="module")
def served(fitted, tmp_path_factory):
    """The fitted model saved, given lists of head 6, and loaded as the service loads it."""
    folder = fitted.save(tmp_path_factory.mktemp("served") / "model")
    PrecomputedLists(length=6).fit(fitted).save(folder / PRECOMPUTED_FOLDER)
    return TwoStageRecommender.load(folder)


def test_stored_answers_are_the_live_answers(fitted, served):
    assert served.precomputed_ is not None and fitted.precomputed_ is None
    rng = np.random.default_rng(0)
    customers = rng.choice(fitted.customer_ids_, min(400, len(fitted.customer_ids_)), replace=False)
    answered = fallen_back = 0
    for i, cid in enumerate(customers.tolist()):
        channel = CHANNELS[i % len(CHANNELS)]
        for k in (1, 3, 6, 9):
            live = fitted.recommend(cid, k, channel=channel)
            assert served.recommend(cid, k, channel=channel) == live, (cid, k, channel)
            row = served.customer_index_[cid]
            hit = served.precomputed_.lookup(served, row, rules.channel_column(served.channels_, channel), k)
            answered += hit is not None
            fallen_back += hit is None and bool(served.customer_has_history_[row])
    # both branches ran: the store answered and the live path took over when the head was short
    assert answered > 100 and fallen_back > 10


def test_reserved_new_product_places_are_kept_beyond_the_head(fitted, served):
    """A new product ranked far below the head still takes its reserved place, as live."""
    lists = served.precomputed_
    beyond = 0
    for entry in range(lists.n_customers):
        lo, hi = int(lists.indptr_[entry]), int(lists.indptr_[entry + 1])
        beyond += int(np.asarray(lists.reserved_[lo:hi])[int(lists.n_head_[entry]) :].sum())
    assert beyond > 0
    for cid in fitted.customer_ids_[fitted.customer_has_history_][:200].tolist():
        live = fitted.recommend(cid, 6)
        assert served.recommend(cid, 6) == live


def test_requests_with_more_than_customer_channel_and_k_take_the_live_path(fitted, served):
    cid = str(fitted.customer_ids_[np.flatnonzero(fitted.customer_has_history_)[0]])
    first = served.recommend(cid, 5).product_ids
    # an exclusion, a session item, a filter or a time: the stored list cannot know them
    assert first[0] not in served.recommend(cid, 5, exclude=[first[0]]).product_ids
    for kwargs in (
        {"exclude": [first[0]]},
        {"context_items": [first[1]]},
        {"filters": {"max_per_category": 1}},
        {"now": fitted.as_of_ + np.timedelta64(30, "D")},
    ):
        assert served.recommend(cid, 5, **kwargs) == fitted.recommend(cid, 5, **kwargs)


def _candidates(lists, row: int) -> np.ndarray:
    entry = int(lists.entry_of_row_[row])
    return np.asarray(lists.candidates_[lists.candidate_indptr_[entry] : lists.candidate_indptr_[entry + 1]])


def test_exclusions_outside_the_candidates_are_answered_from_the_store(fitted, served):
    """An excluded product none of the customer's sources proposed changes nothing, so the stored
    list answers; one that is a candidate takes the live path. Both give the live answer."""
    lists = served.precomputed_
    rng = np.random.default_rng(1)
    stored = np.flatnonzero(lists.entry_of_row_ >= 0)
    n_items = len(fitted.product_ids_)
    answered = fallen_back = 0
    for i, row in enumerate(rng.choice(stored, min(150, len(stored)), replace=False).tolist()):
        cid, own = str(fitted.customer_ids_[row]), _candidates(lists, row)
        # the stored candidates are the live path's, whole
        ranked = ranked_one(fitted, cid, (), (), rules.Filters(), 0.0)
        assert np.array_equal(own, np.sort(ranked.items))
        outside = np.setdiff1d(np.arange(n_items), own)
        if not len(outside):
            continue
        channel = CHANNELS[i % len(CHANNELS)]
        channel_col = rules.channel_column(served.channels_, channel)
        for positions in (
            rng.choice(outside, min(2, len(outside)), replace=False),  # none a candidate
            rng.choice(own, 1),  # the customer's own candidate
            np.concatenate([rng.choice(outside, 1), rng.choice(own, 1)]),
        ):
            exclude = [*fitted.product_ids_[positions].tolist(), "not-a-product"]
            live = fitted.recommend(cid, 5, exclude=exclude, channel=channel)
            assert served.recommend(cid, 5, exclude=exclude, channel=channel) == live, (cid, exclude)
            hit = lists.lookup(served, row, channel_col, 5, np.unique(positions))
            if np.isin(positions, own).any():
                assert hit is None
                fallen_back += 1
            answered += hit is not None
    assert answered > 50 and fallen_back > 100


def test_lists_without_candidates_send_exclusions_to_the_live_path(fitted, tmp_path):
    """Lists stored before the candidates were (format 1) still answer plain requests."""
    import json

    PrecomputedLists(length=5, max_customers=30).fit(fitted).save(tmp_path / "lists")
    meta = json.loads((tmp_path / "lists" / "precomputed.json").read_text())
    (tmp_path / "lists" / "precomputed.json").write_text(json.dumps({**meta, "format_version": 1}))
    for name in ("candidate_indptr", "candidates"):
        (tmp_path / "lists" / f"{name}.npy").unlink()
    old = PrecomputedLists.load(tmp_path / "lists", fitted)
    row = int(np.flatnonzero(old.entry_of_row_ >= 0)[0])
    assert old.lookup(fitted, row, None, 3) is not None
    assert old.lookup(fitted, row, None, 3, np.array([0])) is None


def test_unknown_and_cold_customers_are_not_stored(fitted, served):
    assert served.recommend("never-seen", 5) == fitted.recommend("never-seen", 5)
    cold = np.flatnonzero(~fitted.customer_has_history_)
    assert (served.precomputed_.entry_of_row_[cold] == -1).all()


def test_max_customers_keeps_the_most_recently_active(fitted):
    lists = PrecomputedLists(length=3, max_customers=25).fit(fitted)
    stored = np.flatnonzero(lists.entry_of_row_ >= 0)
    assert len(stored) == 25
    ages = fitted.last_age_days_
    newest = np.array(
        [
            ages.data[ages.indptr[r] : ages.indptr[r + 1]].min()
            if ages.indptr[r + 1] > ages.indptr[r]
            else np.inf
            for r in range(ages.shape[0])
        ]
    )
    others = np.setdiff1d(np.flatnonzero(fitted.customer_has_history_), stored)
    assert newest[stored].max() <= newest[others].min()


def test_lists_of_another_model_are_refused(fitted, generated_tables, tmp_path):
    other = TwoStageRecommender(
        factors=16, iterations=5, n_estimators=20, ease_l2=50.0, num_threads=1, random_state=1
    ).fit(generated_tables)
    folder = fitted.save(tmp_path / "model")
    PrecomputedLists(length=3).fit(other).save(folder / PRECOMPUTED_FOLDER)
    with pytest.raises(ValueError, match="another model"):
        TwoStageRecommender.load(folder)


def test_save_replaces_whole_and_loads_memory_mapped(fitted, tmp_path):
    lists = PrecomputedLists(length=4, max_customers=50).fit(fitted)
    lists.save(tmp_path / "lists")
    PrecomputedLists(length=2, max_customers=10).fit(fitted).save(tmp_path / "lists")
    loaded = PrecomputedLists.load(tmp_path / "lists", fitted)
    assert loaded.length == 2 and loaded.n_customers == 10
    assert isinstance(loaded.items_, np.memmap)
    assert [p.name for p in tmp_path.iterdir()] == ["lists"]  # no temporary folder left behind


def test_parts_from_other_processes_assemble_into_the_same_lists(fitted, tmp_path):
    from training.build import PrecomputeSettings, precompute_lists

    whole = PrecomputedLists(length=5).fit(fitted)
    folder = fitted.save(tmp_path / "model")
    n = precompute_lists(folder, PrecomputeSettings(max_customers=None, length=5, workers=2))
    split = PrecomputedLists.load(folder / PRECOMPUTED_FOLDER, fitted)
    assert n == whole.n_customers
    names = ("entry_of_row_", "indptr_", "n_head_", "complete_", "items_", "scores_", "reserved_")
    for name in (*names, "candidate_indptr_", "candidates_"):
        assert np.array_equal(np.asarray(getattr(split, name)), getattr(whole, name)), name
    # reason codes are renumbered when parts are joined: compare the strings
    assert [split.reasons_[c] for c in split.reason_codes_.tolist()] == [
        whole.reasons_[c] for c in whole.reason_codes_.tolist()
    ]
