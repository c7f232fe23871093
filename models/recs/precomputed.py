"""Ranked lists computed ahead of the requests, for the plain request of a known customer.

Most recommendation requests ask for a known customer's list with nothing else: no session items,
no exclusions, no filters, and no event since the model was trained. The answer to such a request
depends on the model only, so it can be computed once, offline (`omni build`), instead of on every
request: a request then costs an array look-up instead of the two stages (about 1.5 ms of CPU on
this project's 20,000-customer model, twice that inside a loaded server).

What is stored is each customer's ranked candidate list (`models.recs._single_request.ranked_one`)
before the list rules: the best `length` candidates, plus every later candidate that may take a
place reserved for new products, with their ranker scores and reasons. A request then runs the same
rules as the live path (`models.recs._top_k.select`: channel eligibility, the reserved places), so
the answer is the live answer item for item, score for score and reason for reason (tests compare
them for every customer, channel and several k). When the stored head holds fewer eligible items than the request
needs (a large k, a channel that sells few of them), or the request has anything beyond customer,
channel and k, the recommender takes the live path.

Exclusions (the request's `exclude`, products out of stock) are answered from the store too when
none of them is among the customer's candidates: every candidate source takes its top products in
a fixed order (score, then catalogue position), so leaving out a product none of them proposed
leaves every source's list, and so every candidate's features, score and reason, as they were. The
store keeps each customer's candidates (sorted catalogue positions) to tell; an exclusion that is
a candidate takes the live path. Without this, one product out of stock sent every request of every
customer down the live path.

The arrays are written as plain .npy files and read memory-mapped, so the workers of one server
share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from models.recs import rules
from models.recs._single_request import ranked_one, ranked_reasons
from models.recs._top_k import reserved_candidates

FORMAT_VERSION = 2
_ARRAYS = ("entry_of_row", "indptr", "n_head", "complete", "items", "scores", "reserved", "reason_codes")
# each customer's candidates, sorted (format 2): lists of format 1 answer no exclusion
_CANDIDATE_ARRAYS = ("candidate_indptr", "candidates")


def model_fingerprint(recommender) -> str:
    """What ties stored lists to the model they were computed from: its ids, cut-off, ranker and
    served order."""
    digest = hashlib.sha256()
    digest.update(str(recommender.as_of_).encode())
    for ids in (recommender.customer_ids_, recommender.product_ids_):
        digest.update(str(len(ids)).encode())
        digest.update("\x1f".join(map(str, ids)).encode())
    ranker = getattr(recommender, "ranker_", None)
    if ranker is not None:
        digest.update(ranker.booster_.model_to_string(num_iteration=ranker.best_iteration_).encode())
    # the stored lists are the served default list: its order decides them as much as the ranker
    served = getattr(recommender, "served_", {}).get("all")
    if served is not None:
        digest.update(repr(served.as_dict()).encode())
    return digest.hexdigest()


def _joined(parts: list[dict], key: str, dtype) -> np.ndarray:
    return (
        np.concatenate([np.asarray(p[key], dtype=dtype) for p in parts])
        if parts
        else np.zeros(0, dtype=dtype)
    )


class PrecomputedLists:
    """Known customers' ranked lists, computed once from a fitted `TwoStageRecommender`.

    - `length`: candidates kept per customer from the top (requests with k up to about this many
      are answered from the store);
    - `max_customers`: at most this many customers (the most recently active first: those with the
      most recent purchase, then the rest in catalogue order); None = every customer with history.
    """

    def __init__(self, length: int = 50, max_customers: int | None = None):
        self.length = length
        self.max_customers = max_customers

    # ------------------------------------------------------------------ building
    def fit(
        self, recommender, show_progress: bool = False, parts: list[dict] | None = None
    ) -> PrecomputedLists:
        """Computes the lists of `customers(recommender)`, or assembles them from `parts`
        (`compute_part` over consecutive slices of those rows, e.g. in other processes)."""
        started = time.perf_counter()
        if parts is None:
            parts = [self.compute_part(recommender, self.customers(recommender), show_progress)]
        reasons: dict[str, int] = {}
        entry_of_row = np.full(len(recommender.customer_ids_), -1, dtype=np.int32)
        rows = np.concatenate([p["rows"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        entry_of_row[rows] = np.arange(len(rows), dtype=np.int32)
        sizes = np.concatenate([p["sizes"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        self.entry_of_row_ = entry_of_row
        self.indptr_ = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_head_ = _joined(parts, "n_head", np.int32)
        self.complete_ = _joined(parts, "complete", bool)
        self.items_ = _joined(parts, "items", np.int32)
        self.scores_ = _joined(parts, "scores", np.float64)
        self.reserved_ = _joined(parts, "reserved", bool)
        # each part numbers its own reason strings: renumber them into one table
        renumbered = [
            np.array([reasons.setdefault(r, len(reasons)) for r in p["reasons"]], dtype=np.int32)[p["codes"]]
            for p in parts
        ]
        self.reason_codes_ = np.concatenate(renumbered) if renumbered else np.zeros(0, dtype=np.int32)
        n_candidates = np.concatenate([p["n_candidates"] for p in parts]) if parts else np.zeros(0, np.int64)
        self.candidate_indptr_ = np.concatenate([[0], np.cumsum(n_candidates)]).astype(np.int64)
        self.candidates_ = _joined(parts, "candidates", _position_dtype(len(recommender.product_ids_)))
        self.reasons_ = list(reasons)
        self.fingerprint_ = model_fingerprint(recommender)
        self.build_seconds_ = time.perf_counter() - started + sum(p["seconds"] for p in parts)
        return self

    def compute_part(self, recommender, rows: np.ndarray, show_progress: bool = False) -> dict:
        """The stored entries of customers `rows` (plain arrays, cheap to send between processes);
        customers that turn out cold are left out."""
        from tqdm.auto import tqdm

        if self.length < 1:
            raise ValueError(f"length must be at least 1, got {self.length}")
        started = time.perf_counter()
        plain = rules.Filters()
        reason_code: dict[str, int] = {}
        kept_rows, sizes, n_head, complete = [], [], [], []
        candidates, n_candidates = [], []
        position_dtype = _position_dtype(len(recommender.product_ids_))
        items, scores, reserved, codes = [], [], [], []
        for row in tqdm(
            np.asarray(rows).tolist(), desc="precompute", unit="customer", disable=not show_progress
        ):
            ranked = ranked_one(recommender, str(recommender.customer_ids_[row]), (), (), plain, 0.0)
            if not hasattr(ranked, "items"):  # a cold-start customer: that path is already cheap
                continue
            is_reserved = reserved_candidates(
                recommender, ranked.items, ranked.local, ranked.pairs, recommender.new_slots_["all"]
            )
            keep = np.arange(len(ranked.items)) < self.length
            if is_reserved is not None:
                keep |= is_reserved
            keep = np.flatnonzero(keep)
            kept_items = ranked.items[keep]
            reasons = ranked_reasons(recommender, ranked, ranked.local[keep], kept_items)
            kept_rows.append(row)
            sizes.append(len(keep))
            n_head.append(min(self.length, len(ranked.items)))
            complete.append(len(ranked.items) <= self.length)
            items.append(kept_items.astype(np.int32))
            scores.append(ranked.scores[keep].astype(np.float64))
            reserved.append(np.zeros(len(keep), dtype=bool) if is_reserved is None else is_reserved[keep])
            codes.append(
                np.array([reason_code.setdefault(r, len(reason_code)) for r in reasons], dtype=np.int32)
            )
            candidates.append(np.sort(ranked.items).astype(position_dtype))
            n_candidates.append(len(ranked.items))
        return {
            "rows": np.asarray(kept_rows, dtype=np.int64),
            "sizes": np.asarray(sizes, dtype=np.int64),
            "n_head": np.asarray(n_head, dtype=np.int32),
            "complete": np.asarray(complete, dtype=bool),
            "items": np.concatenate(items) if items else np.zeros(0, dtype=np.int32),
            "scores": np.concatenate(scores) if scores else np.zeros(0),
            "reserved": np.concatenate(reserved) if reserved else np.zeros(0, dtype=bool),
            "codes": np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32),
            "candidates": np.concatenate(candidates) if candidates else np.zeros(0, dtype=position_dtype),
            "n_candidates": np.asarray(n_candidates, dtype=np.int64),
            "reasons": list(reason_code),
            "seconds": time.perf_counter() - started,
        }

    def customers(self, recommender) -> np.ndarray:
        """Rows of the customers to store: with history, most recent purchase first."""
        rows = np.flatnonzero(recommender.customer_has_history_)
        ages = recommender.last_age_days_
        newest = np.full(ages.shape[0], np.inf)  # days since the last purchase
        has = np.diff(ages.indptr) > 0
        if has.any():
            newest[has] = np.minimum.reduceat(ages.data, ages.indptr[:-1][has])
        rows = rows[np.lexsort((rows, newest[rows]))]
        if self.max_customers is not None:
            rows = rows[: max(0, int(self.max_customers))]
        return np.sort(rows)

    # ------------------------------------------------------------------ answering
    def lookup(self, recommender, row: int, channel_col: int | None, k: int, excluded=None):
        """The stored answer for customer `row` (a `Recommendation`), or None when the store
        cannot give the live path's answer (not stored, too few eligible items stored, or one of
        the `excluded` catalogue positions is among the customer's candidates)."""
        from models.recs.baselines import Recommendation

        entry = int(self.entry_of_row_[row]) if 0 <= row < len(self.entry_of_row_) else -1
        if entry < 0:
            return None
        if excluded is not None and len(excluded):
            if self.candidates_ is None:
                return None
            lo, hi = int(self.candidate_indptr_[entry]), int(self.candidate_indptr_[entry + 1])
            own = np.asarray(self.candidates_[lo:hi])
            at = np.minimum(np.searchsorted(own, excluded), max(len(own) - 1, 0))
            if len(own) and (own[at] == excluded).any():
                return None
        lo, hi = int(self.indptr_[entry]), int(self.indptr_[entry + 1])
        items = np.asarray(self.items_[lo:hi])
        reserved = np.asarray(self.reserved_[lo:hi])
        positions = np.arange(len(items))
        if channel_col is not None:
            ok = recommender.channel_ok_[items, channel_col]
            if not self.complete_[entry] and int(ok[: self.n_head_[entry]].sum()) < k:
                return None
            positions = np.flatnonzero(ok)
        elif not self.complete_[entry] and int(self.n_head_[entry]) < k:
            return None
        slots = recommender.new_slots_["all"]
        chosen = positions[
            rules.select_positions(
                recommender.item_category_[items[positions]],
                k,
                None,
                reserved[positions] if slots > 0 else None,
                slots,
            )
        ]
        codes = np.asarray(self.reason_codes_[lo:hi])[chosen]
        return Recommendation(
            product_ids=recommender.product_ids_[items[chosen]].tolist(),
            scores=[round(float(x), 6) for x in np.asarray(self.scores_[lo:hi])[chosen]],
            cold_start=False,
            reasons=[self.reasons_[code] for code in codes.tolist()],
        )

    @property
    def n_customers(self) -> int:
        return len(self.n_head_)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Writes `folder` whole or not at all (a temporary folder beside it, then a rename)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            for name in _ARRAYS + _CANDIDATE_ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, f"{name}_"), allow_pickle=False)
            meta = {
                "format_version": FORMAT_VERSION,
                "length": self.length,
                "max_customers": self.max_customers,
                "reasons": self.reasons_,
                "fingerprint": self.fingerprint_,
                "customers": self.n_customers,
                "build_seconds": round(self.build_seconds_, 3),
            }
            (tmp / "precomputed.json").write_text(json.dumps(meta))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: str | Path, recommender) -> PrecomputedLists:
        """Memory-mapped arrays; ValueError if they were computed from another model."""
        folder = Path(folder)
        meta = json.loads((folder / "precomputed.json").read_text())
        if meta.get("format_version") not in (1, FORMAT_VERSION):
            raise ValueError(
                f"{folder}: precomputed lists of format {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        if meta["fingerprint"] != model_fingerprint(recommender):
            raise ValueError(f"{folder}: the precomputed lists were computed from another model")
        lists = cls(length=int(meta["length"]), max_customers=meta["max_customers"])
        for name in _ARRAYS:
            setattr(lists, f"{name}_", np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False))
        lists.candidate_indptr_ = lists.candidates_ = None
        if meta["format_version"] >= 2:
            for name in _CANDIDATE_ARRAYS:
                setattr(lists, f"{name}_", np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False))
        if len(lists.entry_of_row_) != len(recommender.customer_ids_):
            raise ValueError(f"{folder}: the precomputed lists do not match the model's customers")
        lists.reasons_ = list(meta["reasons"])
        lists.fingerprint_ = meta["fingerprint"]
        lists.build_seconds_ = float(meta.get("build_seconds", 0.0))
        return lists


def _position_dtype(n_items: int):
    """The smallest unsigned type that holds every catalogue position."""
    return np.uint16 if n_items <= np.iinfo(np.uint16).max + 1 else np.uint32
