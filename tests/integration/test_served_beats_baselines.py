"""What the recommender family serves beats ALS and popularity on generated data, on the time split
`omni train` evaluates it on (the products new to each customer, later purchases as truth).

3,000 customers: on the session's 800 the test window holds too few new purchases to tell the
models apart (a served list chosen on validation can trail there by chance); at this size the
served order and the ranker lead ALS and popularity by more than a point of nDCG@10 for every
seed tried (7, 11, 42).
"""

import pytest

from features.identity import stitch_identities
from features.io import load_tables
from features.synthetic import generate
from training.config import RecsConfig
from training.recs_training import train_two_stage


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("served-vs-baselines")
    generate(3000, seed=7, out_dir=out)
    _model, metrics, _info = train_two_stage(stitch_identities(load_tables(out)), RecsConfig(refit=False))
    return metrics


@pytest.mark.parametrize("model", ["served", "ranker"])
def test_served_order_and_ranker_beat_als_and_popularity(evaluation, model):
    ndcg = {name: scores["ndcg@10"] for name, scores in evaluation.items()}
    assert ndcg[model] > ndcg["als"] + 0.005, ndcg
    assert ndcg[model] > ndcg["popularity"] + 0.005, ndcg
