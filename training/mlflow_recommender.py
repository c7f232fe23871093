"""MLflow pyfunc wrapper of `TwoStageRecommender`, logged as a code-based model (no pickling).

`mlflow.pyfunc.load_model("models:/omni-recommender@champion")` gives a model whose `predict`
takes a DataFrame with a `customer_id` column (and optional `k` in params) and returns one row
per recommended item: customer_id, rank, product_id, score, reason.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RecommenderPyfunc(PythonModel):
    def load_context(self, context):
        from models.recs.two_stage import TwoStageRecommender

        self.recommender = TwoStageRecommender.load(context.artifacts["recommender"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        ids = model_input["customer_id"].astype(str).tolist()
        rows = []
        for cid, rec in zip(ids, self.recommender.recommend_many(ids, k), strict=True):
            for rank, (pid, score, reason) in enumerate(
                zip(rec.product_ids, rec.scores, rec.reasons, strict=True), start=1
            ):
                rows.append((cid, rank, pid, score, reason))
        return pd.DataFrame(rows, columns=["customer_id", "rank", "product_id", "score", "reason"])


mlflow.models.set_model(RecommenderPyfunc())
