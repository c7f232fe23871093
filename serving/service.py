"""The BentoML service: loads the champion models once per worker and answers over HTTP.

No business logic lives here: requests are validated by the pydantic schemas and passed to
`models/` (and the live state to `features/live_store/`: session context, the contact ledger,
consent changes, stock). Models come from the BentoML
model store, imported from the MLflow registry's champions by `omni build` (its manifest says
which). Every model family is optional: the service starts with whatever the last build imported
(at least one model), and a route whose model is missing answers 404 with the family and the
reason the last `omni train` recorded for skipping it (/v1/channel answers a flagged empty list
instead, its schema has the flag). A model that is there but broken stops start-up with the reason.
The next `omni build` is served without a restart (`serving/served_models.py`: each request reads
one build's models; a background watcher swaps in the next build's once they load).
BentoML adds /healthz, /livez, /readyz, /metrics and the OpenAPI page (/docs.json). Set
OMNI_API_KEY to require an API key.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

from training.settings import quiet_libraries

quiet_libraries()

import bentoml  # noqa: E402

from serving.auth import ApiKeyMiddleware, MediaTypeMiddleware  # noqa: E402
from serving.connections import ConnectionRecycleMiddleware  # noqa: E402
from serving.schemas import (  # noqa: E402
    ChannelRequest,
    ChannelResponse,
    EventRequest,
    EventResponse,
    InventoryRequest,
    InventoryResponse,
    NextBestActionRequest,
    NextBestActionResponse,
    PingResponse,
    ProfileRequest,
    ProfileResponse,
    RankedChannel,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    SendTimeRequest,
    SendTimeResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
)

# the answer to a route whose model this service was built without (a client error: retrying
# cannot help until the model is trained and the service rebuilt)
MissingModel = bentoml.exceptions.NotFound

WORKERS = int(os.environ.get("OMNI_WORKERS", str(max(2, min(4, os.cpu_count() or 2)))))


def _request_id() -> str:
    return uuid.uuid4().hex


@bentoml.service(workers=WORKERS, traffic={"timeout": 30})
class OmniService:
    def __init__(self) -> None:
        from features.live_store import open_live_store, store_url
        from serving.served_models import ModelWatcher, load_served_models
        from training.settings import work_dir

        try:
            # every request reads `self.models` once: an answer never mixes two builds
            self.models = load_served_models()
        except RuntimeError as exc:  # a broken artefact stops start-up, whatever broke
            raise RuntimeError(f"cannot start: {exc}") from exc
        # one live store for every worker (and every host, with a server database)
        try:
            self.live = open_live_store(store_url(work_dir()))
        except (ValueError, ConnectionError, OSError) as exc:  # a wrong URL, an unreachable server
            raise RuntimeError(f"cannot start: the live store cannot be opened: {exc}") from None
        # the next `omni build` is served without a restart (0 turns the watcher off)
        interval = float(os.environ.get("OMNI_RELOAD_SECONDS", "10"))
        self.watcher = None
        if interval > 0:
            self.watcher = ModelWatcher(lambda: self.models, self._swap, interval).start()

    def _swap(self, models) -> None:
        self.models = models  # one reference assignment: atomic for the requests that follow

    def _canonical(self, request):
        """The request with its customer id made canonical: a channel system may call a customer
        by any id it knows (a loyalty card, an app device id) that `identities` or an event linked."""
        return request.model_copy(update={"customer_id": self.live.resolve(request.customer_id)})

    @staticmethod
    def _require(m, family: str, model):
        """`model`, or the 404 that names the family and says why this build has none."""
        if model is None:
            raise MissingModel(m.missing.get(family, f"no {family} model in this service"))
        return model

    # ------------------------------------------------------------------ recommendations
    def _recommend(
        self,
        m,
        customer_id: str,
        channel: str,
        k: int,
        context_items=(),
        exclude=(),
        filters=None,
        exclude_purchased: bool = False,
    ) -> RecommendResponse:
        recommender = self._require(m, "recommender", m.recommender)
        # what the customer did on any channel since the model was trained counts at once (one
        # indexed count first: most customers have no live events, and then nothing else is read);
        # products bought since then are excluded, so they count as bought for exclude_purchased too
        session: list[str] = []
        bought: list[str] = []
        if self.live.count(customer_id):
            session = self.live.session_items(customer_id)
            bought = self.live.purchased_since(customer_id, since=0)
        rules = {} if filters is None else filters.model_dump(exclude_none=True)
        if exclude_purchased:
            # only products never bought: a request the precomputed lists never answer
            rules["exclude_purchased"] = True
        rec = recommender.recommend(
            customer_id,
            k,
            exclude=[*exclude, *bought, *self.live.out_of_stock()],
            context_items=[*context_items, *session][:100],
            channel=channel,
            filters=rules or None,
        )
        return RecommendResponse(
            request_id=_request_id(),
            customer_id=customer_id,
            channel=channel,
            cold_start=rec.cold_start,
            items=[
                RecommendedItem(product_id=p, score=s, reason=r)
                for p, s, r in zip(rec.product_ids, rec.scores, rec.reasons, strict=True)
            ],
            model_versions=m.model_versions,
        )

    # Quick CPU-bound routes are `async def`: they run on the worker's event loop. A plain `def`
    # route is handed to a thread (BentoML's default), which costs more than these calls themselves
    # and gains nothing (the GIL). Routes that can take long (batches, pandas-heavy models, SQLite
    # writes that may wait for a lock) stay on the thread.
    @bentoml.api(route="/v1/recommend", input_spec=RecommendRequest)
    async def recommend(self, **req) -> RecommendResponse:
        r = self._canonical(RecommendRequest(**req))
        return self._recommend(
            self.models,
            r.customer_id,
            r.channel,
            r.k,
            r.context_items,
            r.exclude,
            r.filters,
            r.exclude_purchased,
        )

    @bentoml.api(route="/v1/similar_items", input_spec=SimilarItemsRequest)
    async def similar_items(self, **req) -> SimilarItemsResponse:
        """Products that go with a product page or a cart, no customer needed."""
        r = SimilarItemsRequest(**req)
        m = self.models
        recommender = self._require(m, "recommender", m.recommender)
        filters = r.filters.model_dump(exclude_none=True) if r.filters is not None else None
        rec = recommender.similar_items(
            r.product_ids, r.k, r.channel, filters or None, exclude=list(self.live.out_of_stock())
        )
        return SimilarItemsResponse(
            request_id=_request_id(),
            items=[
                RecommendedItem(product_id=p, score=s, reason=r)
                for p, s, r in zip(rec.product_ids, rec.scores, rec.reasons, strict=True)
            ],
            model_versions=m.model_versions,
        )

    @bentoml.api(route="/v1/recommend_batch", input_spec=RecommendBatchRequest)
    def recommend_batch(self, **req) -> RecommendBatchResponse:
        r = RecommendBatchRequest(**req)
        m = self.models
        self._require(m, "recommender", m.recommender)
        results = [
            self._recommend(m, cid, r.channel, r.k, exclude_purchased=r.exclude_purchased)
            for cid in self.live.resolve_many(r.customer_ids)
        ]
        return RecommendBatchResponse(
            request_id=_request_id(), results=results, model_versions=m.model_versions
        )

    # ------------------------------------------------------------------ channel and send time
    def _consented(self, m, customer_id: str, channel: str) -> bool:
        """May this customer be messaged on this channel now: the batch commands' answer
        (`training.live.consent_now`: the consent the models were trained with, live opt-ins and
        opt-outs over it; everyone without a consent table in the training data)."""
        from training.live import consent_now

        changes = self.live.consent_changes([customer_id])
        return bool(consent_now(m.channel_model, m.engine, [customer_id], channel, changes)[0][0])

    @bentoml.api(route="/v1/channel", input_spec=ChannelRequest)
    def channel(self, **req) -> ChannelResponse:
        r = self._canonical(ChannelRequest(**req))
        m = self.models
        if m.channel_model is None:
            return ChannelResponse(
                request_id=_request_id(),
                customer_id=r.customer_id,
                channels=[],
                fallback=True,
                no_channel_reason=m.missing["channel"],
                model_versions=m.model_versions,
            )
        changes = self.live.consent_changes([r.customer_id])
        # messages sent and opened or clicked since training count as the customer's history
        activity = self.live.message_activity([r.customer_id], since=m.channel_model.as_of_)
        ranked = m.channel_model.rank_channels(
            [r.customer_id], consent_changes=changes, live_activity=activity
        )
        opted_out = changes.loc[~changes["opted_in"], "channel"].tolist()
        if ranked.empty and opted_out:
            reason = f"opted out since training on {', '.join(sorted(opted_out))}; no other channel consented"
        elif ranked.empty:
            reason = m.channel_model.no_channel_reason(r.customer_id)
        else:
            reason = None
        return ChannelResponse(
            request_id=_request_id(),
            customer_id=r.customer_id,
            channels=[
                RankedChannel(
                    channel=row.channel,
                    rank=int(row.rank),
                    probability=round(float(row.probability), 6),
                    conversion_probability=round(float(row.conversion_probability), 6),
                )
                for row in ranked.itertuples(index=False)
            ],
            # the ranking's own flag; computed apart only when no channel was ranked
            fallback=bool(
                ranked["fallback"].iloc[0]
                if len(ranked)
                else m.channel_model.fallback([r.customer_id], activity)[0]
            ),
            no_channel_reason=reason,
            model_versions=m.model_versions,
        )

    @bentoml.api(route="/v1/send_time", input_spec=SendTimeRequest)
    def send_time(self, **req) -> SendTimeResponse:
        import pandas as pd

        from models.engagement.local_time import parse_quiet_hours

        r = self._canonical(SendTimeRequest(**req))
        m = self.models
        self._require(m, "send_time", m.send_time_model)
        quiet = parse_quiet_hours(r.quiet_hours) if r.quiet_hours is not None else m.quiet_hours
        after = pd.Timestamp(r.after) if r.after else pd.Timestamp.now(tz="UTC")
        # opens and clicks since training are active hours the model has not seen
        activity = self.live.message_activity([r.customer_id], since=m.send_time_model.as_of_)
        consented = self._consented(m, r.customer_id, r.channel)
        # the best slot, the next moment (with consent only) and the scores: one grid
        one = m.send_time_model.answer_one(
            r.customer_id, r.channel, after if consented else None, quiet, activity
        )
        nxt = one["next_send_utc"]
        return SendTimeResponse(
            request_id=_request_id(),
            customer_id=r.customer_id,
            channel=r.channel,
            timezone=one["timezone"],
            best_weekday=one["best_weekday"],
            best_hour_local=one["best_hour_local"],
            next_send_utc=None if nxt is None else nxt.to_pydatetime(),
            no_consent=not consented,
            scores=[round(float(x), 6) for x in one["scores"]],
            fallback=one["fallback"],
            model_versions=m.model_versions,
        )

    # ------------------------------------------------------------------ real-time events
    @bentoml.api(route="/v1/events", input_spec=EventRequest)
    def events(self, **req) -> EventResponse:
        r = self._canonical(EventRequest(**req))
        self.live.add(
            r.customer_id,
            r.event_type,
            r.channel,
            r.product_id,
            r.ts,
            campaign_id=r.campaign_id,
            offer_id=r.offer_id,
            opted_in=r.opted_in,
            source_id=r.source_id,
        )
        return EventResponse(
            request_id=_request_id(),
            accepted=True,
            customer_id=r.customer_id,
            session_items=self.live.session_items(r.customer_id),
        )

    # ------------------------------------------------------------------ profile and next-best-action
    @bentoml.api(route="/v1/profile", input_spec=ProfileRequest)
    def profile(self, **req) -> ProfileResponse:
        r = self._canonical(ProfileRequest(**req))
        m = self.models
        self._require(m, "profiles", m.engine)
        try:
            profile, known = m.engine.profiles_.profile(r.customer_id), True
        except KeyError:
            profile, known = {}, False
        return ProfileResponse(
            request_id=_request_id(),
            customer_id=r.customer_id,
            known=known,
            profile=json.loads(json.dumps(profile, default=str)),
            model_versions=m.model_versions,
        )

    @bentoml.api(route="/v1/next_best_action", input_spec=NextBestActionRequest)
    async def next_best_action(self, **req) -> NextBestActionResponse:
        r = self._canonical(NextBestActionRequest(**req))
        if r.commit:
            # a commit writes under the customer's lock, which may wait for another worker or host:
            # on a thread, so the event loop keeps answering meanwhile
            return await asyncio.to_thread(self._next_best_action, r)
        # a plain decision is a few ms of CPU: inline, like recommend (a thread gains nothing)
        return self._next_best_action(r)

    def _next_best_action(self, r: NextBestActionRequest) -> NextBestActionResponse:
        import pandas as pd

        from features.live_store import Contact
        from models.decisions.contact_policy import LayeredLedger

        m = self.models
        engine = self._require(m, "next_best_action", m.engine)
        now = pd.Timestamp(r.now) if r.now else pd.Timestamp.now(tz="UTC")
        unavailable = self.live.out_of_stock()
        decision: dict = {}

        def decide(state) -> Contact | None:
            # the customer's contacts, purchases and consent changes since training count at once
            ledger = LayeredLedger.of_customer(
                engine.ledger_,
                r.customer_id,
                state.contacts,
                state.last_purchase,
                state.consent,
                state.purchased,
            )
            decision.update(engine.decide_one(r.customer_id, now, ledger=ledger, unavailable=unavailable))
            if not r.commit or decision["channel"] is None or decision["send_at"] is None:
                return None
            offer = decision["offer_id"]
            return Contact(
                r.customer_id,
                str(decision["channel"]),
                decision["send_at"],
                source="decision",
                action=str(decision["action"]),
                offer_id=None if offer is None or pd.isna(offer) else str(offer),
            )

        if r.commit:
            # read, decide and write under the customer's lock: two workers cannot both use one cap
            _, contact = self.live.decide_and_record(r.customer_id, decide)
        else:
            contact = decide(self.live.state(r.customer_id))
        d = decision
        return NextBestActionResponse(
            request_id=_request_id(),
            customer_id=r.customer_id,
            action=str(d["action"]),
            channel=None if d["channel"] is None or pd.isna(d["channel"]) else str(d["channel"]),
            send_at=d["send_at"],
            offer_id=None if d["offer_id"] is None or pd.isna(d["offer_id"]) else str(d["offer_id"]),
            product_ids=[str(p) for p in d["product_ids"]],
            # `_decision_dict` gives Python floats (None for an unknown conversion probability)
            expected_gain=dict(d["expected_gain"]),
            reasons=[str(x) for x in d["reasons"]],
            committed=bool(r.commit and contact is not None),
            model_versions=m.model_versions,
        )

    # ------------------------------------------------------------------ stock
    @bentoml.api(route="/v1/inventory", input_spec=InventoryRequest)
    def inventory(self, **req) -> InventoryResponse:
        """Products out of stock leave every list and similar-items answer at once, on every worker."""
        r = InventoryRequest(**req)
        changed = self.live.set_stock([(item.product_id, item.in_stock) for item in r.items])
        return InventoryResponse(
            request_id=_request_id(), accepted=changed, out_of_stock=len(self.live.out_of_stock())
        )

    @bentoml.api(route="/v1/ping")
    async def ping(self) -> PingResponse:
        """The trivial endpoint: the framework's own cost, for load-test baselines."""
        return PingResponse()


async def report_page(request):
    """GET /report: the last report page `omni report` wrote on this host (`make demo` writes one
    after training), read-only; 404 saying how to make one when there is none yet."""
    from starlette.responses import FileResponse, JSONResponse

    from training.report import REPORT_HTML, latest_report_dir

    page = latest_report_dir() / REPORT_HTML
    if not page.is_file():
        why = "no report yet: run `omni report --data DATA_DIR --out DIR` on this host"
        return JSONResponse({"error": why, "field": None}, status_code=404)
    return FileResponse(page, media_type="text/html; charset=utf-8")


def _report_app():
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/report", report_page, methods=["GET"])])


# mounted at the root: BentoML matches it only for its own route, every other path is the service's
OmniService.mount_asgi_app(_report_app(), path="/")
OmniService.add_asgi_middleware(ApiKeyMiddleware)
OmniService.add_asgi_middleware(MediaTypeMiddleware)
# keep-alive connections spread over the workers (see serving/connections.py)
OmniService.add_asgi_middleware(ConnectionRecycleMiddleware)
