"""MLflow pyfunc wrapper of the channel and send-time models (code-based: no pickle).

Logged with each model by `training.pyfunc.log_pyfunc`; the artefact folder it finds ("channel"
or "send_time") decides which model it serves.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ChannelSendTimePyfunc(PythonModel):
    def load_context(self, context):
        if "channel" in context.artifacts:
            from models.engagement import ChannelModel

            self.kind, self.model = "channel", ChannelModel.load(context.artifacts["channel"])
        else:
            from models.engagement import SendTimeModel

            self.kind, self.model = "send_time", SendTimeModel.load(context.artifacts["send_time"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        ids = model_input["customer_id"].astype(str).tolist()
        if self.kind == "channel":
            return self.model.rank_channels(ids)
        after = params.get("after") or pd.Timestamp.now(tz="UTC").isoformat()
        start, end = int(params.get("quiet_start", 21)), int(params.get("quiet_end", 8))
        return self.model.send_plan(ids, params.get("channel") or None, pd.Timestamp(after), (start, end))


mlflow.models.set_model(ChannelSendTimePyfunc())
