"""The product recommender that is trained, registered and served: ids, rules and a fallback around a scorer.

`ProductRecommender` owns everything a request needs and nothing else: the id ↔ index maps, the
customer's past interactions (for fold-in and for taking bought items out), which products are
active, the personal scorer (ALS) and the popularity fallback. It saves to and loads from a plain
folder (npz, npy, json), never pickle, so a model artefact cannot run code when it is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.interactions import InteractionMatrix
from models.base import read_model_meta, top_k
from models.recs import ALS_DEFAULTS
from models.recs.als import ALSScorer
from models.recs.popularity import PopularityScorer

FORMAT_VERSION = 1


@dataclass
class Recommendation:
    product_ids: list[str]
    scores: list[float]
    cold_start: bool  # the customer has no history: popular items (or items near the context)
    reasons: list[str] = field(default_factory=list)


class ProductRecommender:
    """ALS personal scores with a popularity fallback and business exclusions.

    Parameters are the ALS hyper-parameters; `fit` takes an `InteractionMatrix` and the set of
    inactive product ids. Fitted attributes end in `_`.
    """

    def __init__(
        self,
        factors: int = ALS_DEFAULTS["factors"],
        regularization: float = ALS_DEFAULTS["regularization"],
        alpha: float = ALS_DEFAULTS["alpha"],
        iterations: int = ALS_DEFAULTS["iterations"],
        random_state: int = 0,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state

    def als_params(self) -> dict:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
        }

    def fit(
        self,
        interactions: InteractionMatrix,
        inactive_product_ids: np.ndarray | None = None,
        show_progress: bool = False,
        fitted_als: tuple[ALSScorer, np.ndarray] | None = None,
    ) -> ProductRecommender:
        """`fitted_als`: (an `ALSScorer` with this recommender's parameters, fitted on these same
        interactions with rows for the given customer ids, a superset of the interactions' own,
        e.g. with empty rows for customers without events) is reused instead of fitting ALS again."""
        self.product_ids_ = np.asarray(interactions.product_ids, dtype=str)
        self.customer_ids_ = np.asarray(interactions.customer_ids, dtype=str)
        self.user_items_ = interactions.matrix.tocsr().astype(np.float32)
        self.purchased_ = interactions.purchased.tocsr().astype(bool)
        inactive = set(
            np.asarray(inactive_product_ids if inactive_product_ids is not None else [], dtype=str)
        )
        self.active_ = np.array([pid not in inactive for pid in self.product_ids_.tolist()], dtype=bool)
        if fitted_als is None:
            self.als_ = ALSScorer(**self.als_params()).fit(self.user_items_, show_progress=show_progress)
        else:
            self.als_ = self._shared_als(*fitted_als)
        self.popularity_ = PopularityScorer().fit(self.user_items_)
        self._index()
        return self

    def _shared_als(self, als: ALSScorer, als_customer_ids: np.ndarray) -> ALSScorer:
        params = {name: getattr(als, name) for name in self.als_params()}
        if params != self.als_params():
            raise ValueError(f"fitted_als has parameters {params}, this recommender {self.als_params()}")
        if als.n_items_ != len(self.product_ids_):
            raise ValueError(
                f"fitted_als has {als.n_items_} items, the interactions {len(self.product_ids_)}"
            )
        index = pd.Index(np.asarray(als_customer_ids, dtype=str))
        rows = index.get_indexer(self.customer_ids_)
        if len(index) != als.model_.user_factors.shape[0] or (rows < 0).any():
            raise ValueError("fitted_als must have a row for every customer of the interactions")
        return als.rows_of(rows)

    def _index(self) -> None:
        self.customer_index_ = {cid: i for i, cid in enumerate(self.customer_ids_.tolist())}
        self.product_index_ = {pid: i for i, pid in enumerate(self.product_ids_.tolist())}

    # ------------------------------------------------------------------ scoring
    def _rows(self, customer_ids: list[str], context_items: list[list[str]] | None):
        """Interaction rows and model indices for a batch of customers (+ optional session items)."""
        idx = np.array([self.customer_index_.get(cid, -1) for cid in customer_ids], dtype=np.int64)
        n_items = len(self.product_ids_)
        known = (idx >= 0).astype(np.float32)
        # gather each customer's stored row (row 0 as a placeholder for unknown ones, then zeroed)
        if self.user_items_.shape[0] and n_items:
            rows = (sp.diags(known) @ self.user_items_[np.where(idx >= 0, idx, 0)]).tocsr()
        else:
            rows = sp.csr_matrix((len(customer_ids), n_items), dtype=np.float32)
        rows.eliminate_zeros()
        if context_items and any(context_items):
            extra_r, extra_c = [], []
            for r, items in enumerate(context_items):
                for pid in items or ():
                    j = self.product_index_.get(pid)
                    if j is not None:
                        extra_r.append(r)
                        extra_c.append(j)
            if extra_r:
                # session items count like a cart add (weight 3) on top of the stored history
                ctx = sp.csr_matrix(
                    (np.full(len(extra_r), 3.0, np.float32), (extra_r, extra_c)), shape=rows.shape
                )
                rows = (rows + ctx).tocsr()
                # a known customer with new context is folded in again, so the list moves at once
                idx = np.where(np.asarray(ctx.sum(axis=1)).ravel() > 0, -1, idx)
        return rows, idx

    def recommend_many(
        self,
        customer_ids: list[str],
        k: int = 10,
        exclude: list[list[str]] | None = None,
        context_items: list[list[str]] | None = None,
        model: str = "als",
    ) -> list[Recommendation]:
        """Top-k products for each customer, bought and inactive products taken out.

        `model="popularity"` scores everyone by popularity (the baseline), with the same exclusions.
        """
        if model not in ("als", "popularity"):
            raise ValueError(f"unknown model {model!r}: expected 'als' or 'popularity'")
        customer_ids = [str(cid) for cid in customer_ids]
        rows, idx = self._rows(customer_ids, context_items)
        has_signal = np.asarray(rows.getnnz(axis=1)) > 0
        use_personal = model == "als" and has_signal.any()
        personal = self.als_.score(rows[has_signal], idx[has_signal]) if use_personal else None
        scores = np.tile(self.popularity_.item_scores_, (len(customer_ids), 1))
        if personal is not None:
            scores[has_signal] = personal
        mask = np.tile(~self.active_, (len(customer_ids), 1))
        known = np.flatnonzero(idx >= 0)
        if known.size:
            mask[known] |= self.purchased_[idx[known]].toarray()
        for r, items in enumerate(exclude or []):
            for pid in items or ():
                j = self.product_index_.get(pid)
                if j is not None:
                    mask[r, j] = True
        top_idx, top_scores = top_k(scores, k, mask)
        out = []
        for r in range(len(customer_ids)):
            valid = top_idx[r] >= 0
            cold = not bool(has_signal[r])
            reason = "personal" if (model == "als" and not cold) else "popular"
            out.append(
                Recommendation(
                    product_ids=self.product_ids_[top_idx[r][valid]].tolist(),
                    scores=[round(float(s), 6) for s in top_scores[r][valid]],
                    cold_start=cold,
                    reasons=[reason] * int(valid.sum()),
                )
            )
        return out

    def recommend(self, customer_id: str, k: int = 10, exclude=None, context_items=None) -> Recommendation:
        return self.recommend_many(
            [customer_id],
            k,
            exclude=[list(exclude or [])],
            context_items=[list(context_items or [])],
        )[0]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "product_ids.npy", self.product_ids_.astype(str), allow_pickle=False)
        np.save(folder / "customer_ids.npy", self.customer_ids_.astype(str), allow_pickle=False)
        np.save(folder / "active.npy", self.active_, allow_pickle=False)
        np.save(folder / "popularity.npy", self.popularity_.item_scores_, allow_pickle=False)
        sp.save_npz(folder / "user_items.npz", self.user_items_)
        sp.save_npz(folder / "purchased.npz", self.purchased_)
        self.als_.save(folder / "als.npz")
        meta = {"format_version": FORMAT_VERSION, "params": self.als_params()}
        (folder / "recommender.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ProductRecommender:
        folder = Path(folder)
        meta = read_model_meta(folder, "recommender.json", "recommender", (FORMAT_VERSION,))
        rec = cls(**meta["params"])
        rec.product_ids_ = np.load(folder / "product_ids.npy", allow_pickle=False)
        rec.customer_ids_ = np.load(folder / "customer_ids.npy", allow_pickle=False)
        rec.active_ = np.load(folder / "active.npy", allow_pickle=False)
        rec.popularity_ = PopularityScorer()
        rec.popularity_.item_scores_ = np.load(folder / "popularity.npy", allow_pickle=False)
        rec.user_items_ = sp.load_npz(folder / "user_items.npz").tocsr()
        rec.purchased_ = sp.load_npz(folder / "purchased.npz").tocsr()
        rec.als_ = ALSScorer.load(folder / "als.npz", **meta["params"])
        rec._index()
        return rec
