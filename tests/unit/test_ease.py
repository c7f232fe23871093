"""EASE on tiny data whose right answer is known by construction."""

import numpy as np
import pytest
import scipy.sparse as sp

from models.base import top_k
from models.recs.ease import EASEScorer


def _two_groups(n_users_per_group: int = 60, group_size: int = 4, seed: int = 0) -> sp.csr_matrix:
    """Users 0..n-1 consume only items of group A (0..3), the rest only group B (4..7).

    Each user takes each item of their group with probability 3/4 (at least two of them), so
    items co-occur often inside a group and never across groups.
    """
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(2 * n_users_per_group):
        first = 0 if user < n_users_per_group else group_size
        take = rng.random(group_size) < 0.75
        while take.sum() < 2:
            take = rng.random(group_size) < 0.75
        chosen = np.flatnonzero(take) + first
        rows += [user] * len(chosen)
        cols += list(chosen)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(2 * n_users_per_group, 2 * group_size))


def test_weights_shape_dtype_and_zero_diagonal():
    model = EASEScorer(l2=1.0).fit(_two_groups())
    assert model.B_.shape == (8, 8)
    assert model.B_.dtype == np.float32
    assert np.all(np.diag(model.B_) == 0)


def test_no_weight_across_disjoint_groups():
    model = EASEScorer(l2=1.0).fit(_two_groups())
    # XᵀX + λI is block-diagonal, hence so are its inverse and B.
    assert np.allclose(model.B_[:4, 4:], 0, atol=1e-6)
    assert np.allclose(model.B_[4:, :4], 0, atol=1e-6)
    assert (model.B_[:4, :4][~np.eye(4, dtype=bool)] > 0).all()


def test_user_of_group_a_gets_group_a_first_even_if_unseen():
    model = EASEScorer(l2=1.0).fit(_two_groups())
    new_user = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    scores = model.score(new_user, np.array([-1]))
    idx, _ = top_k(scores, 4, exclude=new_user.toarray() > 0)
    assert set(idx[0, :2]) == {2, 3}  # the unseen group-A items rank above every group-B item
    assert scores.shape == (1, 8)
    assert scores[0, 2] > 0 and np.allclose(scores[0, 4:], 0, atol=1e-6)


def test_matches_columnwise_ridge_regression():
    """Each column of B is the ridge regression of that item on all the others (Steck 2019)."""
    rng = np.random.default_rng(3)
    x = (rng.random((40, 6)) < 0.4).astype(np.float64)
    lam = 2.5
    model = EASEScorer(l2=lam).fit(sp.csr_matrix(x))
    for j in range(6):
        others = [i for i in range(6) if i != j]
        xo = x[:, others]
        w = np.linalg.solve(xo.T @ xo + lam * np.eye(5), xo.T @ x[:, j])
        assert np.allclose(model.B_[others, j], w, atol=1e-5)


def test_binarize_ignores_weights_unless_disabled():
    x = _two_groups()
    weighted = x.copy()
    weighted.data = np.linspace(1, 5, weighted.nnz)
    b_bin = EASEScorer(l2=1.0).fit(x).B_
    assert np.allclose(EASEScorer(l2=1.0).fit(weighted).B_, b_bin)
    assert not np.allclose(EASEScorer(l2=1.0, binarize=False).fit(weighted).B_, b_bin)


def test_score_ignores_user_index_and_handles_empty_rows():
    x = _two_groups()
    model = EASEScorer(l2=1.0, random_state=7).fit(x)
    assert np.allclose(model.score(x[:3], np.arange(3)), model.score(x[:3]))
    assert np.allclose(model.score(sp.csr_matrix((1, 8))), 0)


def test_refuses_catalogues_above_max_items():
    with pytest.raises(ValueError, match="max_items"):
        EASEScorer(max_items=5).fit(_two_groups())


def test_rejects_wrong_width_and_bad_l2():
    model = EASEScorer(l2=1.0).fit(_two_groups())
    with pytest.raises(ValueError, match="columns"):
        model.score(sp.csr_matrix((1, 7)))
    with pytest.raises(ValueError, match="l2"):
        EASEScorer(l2=0).fit(_two_groups())
