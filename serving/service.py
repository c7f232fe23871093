"""The BentoML service: loads the champion models once per worker and answers over HTTP.

No business logic lives here: requests are validated by the pydantic schemas and passed to
`models/`. BentoML adds /healthz, /livez, /readyz, /metrics and the OpenAPI page (/docs.json).
"""

from __future__ import annotations

import os
import uuid

from training.settings import quiet_libraries

quiet_libraries()

import bentoml  # noqa: E402

from serving.schemas import RecommendedItem, RecommendRequest, RecommendResponse  # noqa: E402

WORKERS = int(os.environ.get("OMNI_WORKERS", "2"))


@bentoml.service(workers=WORKERS, traffic={"timeout": 30})
class OmniService:
    def __init__(self) -> None:
        from models.recommender import ProductRecommender
        from training.build import load_served_model

        try:
            folder, version = load_served_model("omni-recommender")
            self.recommender = ProductRecommender.load(folder)
        except (LookupError, OSError, ValueError) as exc:
            # Fail start-up loudly rather than serve half a service.
            raise RuntimeError(f"cannot start: {exc}") from exc
        self.model_versions = {"recommender": version}

    @bentoml.api(route="/v1/recommend", input_spec=RecommendRequest)
    def recommend(self, **req) -> RecommendResponse:
        request = RecommendRequest(**req)
        rec = self.recommender.recommend(
            request.customer_id, request.k, exclude=request.exclude, context_items=request.context_items
        )
        return RecommendResponse(
            request_id=uuid.uuid4().hex,
            customer_id=request.customer_id,
            channel=request.channel,
            cold_start=rec.cold_start,
            items=[
                RecommendedItem(product_id=p, score=s, reason=r)
                for p, s, r in zip(rec.product_ids, rec.scores, rec.reasons, strict=True)
            ],
            model_versions=self.model_versions,
        )
