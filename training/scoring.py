"""Batch scoring with the registry's champion models (`omni recommend --all`, and later the others)."""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from features import columns as c
from models.recommender import ProductRecommender
from training.settings import CHAMPION, REGISTERED_RECOMMENDER


def load_champion_recommender(
    tracking_uri: str, name: str = REGISTERED_RECOMMENDER
) -> tuple[ProductRecommender, str]:
    """The champion recommender and its registry version; LookupError with the reason if there is none."""
    from training.tracking import download_model_folder

    folder, version = download_model_folder(tracking_uri, name, CHAMPION)
    return ProductRecommender.load(folder), version


def recommendations_frame(
    rec: ProductRecommender,
    customer_ids: list[str],
    k: int,
    model: str = "als",
    chunk: int = 2000,
    show_progress: bool = False,
) -> pd.DataFrame:
    """customer_id, rank, product_id, score, reason for every customer, scored in chunks to bound memory."""
    rows = []
    for start in tqdm(
        range(0, len(customer_ids), chunk), desc="recommend", unit="chunk", disable=not show_progress
    ):
        batch = customer_ids[start : start + chunk]
        for cid, r in zip(batch, rec.recommend_many(batch, k, model=model), strict=True):
            for rank, (pid, score, reason) in enumerate(
                zip(r.product_ids, r.scores, r.reasons, strict=True), 1
            ):
                rows.append((cid, rank, pid, score, reason))
    frame = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.RANK, c.PRODUCT_ID, c.SCORE, c.REASON])
    return frame.astype(
        {c.CUSTOMER_ID: "string", c.RANK: "int32", c.PRODUCT_ID: "string", c.SCORE: "float64"}
    )
