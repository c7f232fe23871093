"""MLflow pyfunc wrapper of the next-best-action engine, logged as a code-based model (no pickling).

`predict` takes a DataFrame with a `customer_id` column and returns one decision per customer
(`models.decisions.decision_core.DECISION_COLUMNS`). Loaded alone, the engine uses its fallbacks for
items, channel and send time; the service and `omni decide` load it with the champion recommender,
channel and send-time models.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class NextBestActionPyfunc(PythonModel):
    def load_context(self, context):
        from models.decisions.nba import NextBestActionEngine

        self.engine = NextBestActionEngine.load(context.artifacts["nba"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.engine.decide(model_input["customer_id"].astype(str).tolist())


mlflow.models.set_model(NextBestActionPyfunc())
