"""Batch scoring with the registry's champion models (`omni recommend --all`, and later the others)."""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from features import columns as c
from models.two_stage import TwoStageRecommender
from training.settings import CHAMPION, REGISTERED_RECOMMENDER


def load_champion_recommender(
    tracking_uri: str, name: str = REGISTERED_RECOMMENDER
) -> tuple[TwoStageRecommender, str]:
    """The champion recommender and its registry version; LookupError with the reason if there is none."""
    from training.tracking import download_model_folder

    folder, version = download_model_folder(tracking_uri, name, CHAMPION)
    return TwoStageRecommender.load(folder), version


def recommendations_frame(
    rec,
    customer_ids: list[str],
    k: int,
    model: str = "ranker",
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


def load_champion_engine(tracking_uri: str, warn=print):
    """The champion next-best-action engine wired to the champion recommender, channel and send-time
    models (those missing are replaced by the engine's fallbacks, with a warning); returns
    (engine, versions)."""
    from models.nba import NextBestActionEngine
    from training.channel_training import load_champion_channel_model, load_champion_send_time_model
    from training.tracking import download_model_folder

    folder, nba_version = download_model_folder(tracking_uri, "omni-nba", CHAMPION, artifact="nba")
    versions = {"nba": nba_version}
    rec, versions["recommender"] = load_champion_recommender(tracking_uri)
    loaded = {}
    for key, loader in (
        ("channel", load_champion_channel_model),
        ("send_time", load_champion_send_time_model),
    ):
        try:
            loaded[key], versions[key] = loader(tracking_uri)
        except LookupError as exc:
            loaded[key] = None
            warn(f"warning: {exc}; using the engine's fallback for {key}")
    engine = NextBestActionEngine.load(folder, rec, loaded["channel"], loaded["send_time"])
    return engine, versions
