"""Batch commands and the live store: the same ledger, consent and stock the service decides with.

`omni decide` reads the contacts, purchases and consent changes the channel systems posted since
training (and the decisions the service committed), decides under them, and writes its own sends
back, so caps and cooldowns hold across the batch, the service and the next batch. `omni train`
links the identities table's source ids to their customers there, for every route and command that
takes a customer id.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from features import columns as c
from features.live_store import Contact, LiveStore, open_live_store, store_url
from models.decisions.contact_policy import LayeredLedger, Ledger
from models.decisions.decision_core import NO_ACTION, with_no_action
from training.settings import work_dir


class LiveStoreUnavailable(ValueError):
    """The live store's URL is wrong, or its file or server cannot be opened."""


def open_store() -> LiveStore:
    """The live store this machine's service uses (`OMNI_STORE_URL`, else the working folder's
    file); LiveStoreUnavailable, with the reason, when it cannot be opened."""
    try:
        return open_live_store(store_url(work_dir()))
    except (ValueError, ConnectionError, OSError, sqlite3.Error) as exc:
        raise LiveStoreUnavailable(f"the live store cannot be opened: {exc}") from None


def link_identities(tables) -> int:
    """Writes the identities table's (source_id, customer_id) links into the live store, so the
    service and the scoring commands accept any source id as a customer id. Returns how many."""
    identities = tables.identities
    if identities is None or len(identities) == 0:
        return 0
    pairs = (
        identities[[c.SOURCE_ID, c.CUSTOMER_ID]]
        .dropna()
        .astype(str)
        .drop_duplicates(c.SOURCE_ID, keep="last")
    )
    with open_store() as store:
        return store.link_identities(zip(pairs[c.SOURCE_ID], pairs[c.CUSTOMER_ID], strict=True))


def batch_ledger(engine, store: LiveStore, customer_ids) -> LayeredLedger:
    """The engine's fitted ledger with the live store's rows of these customers laid over it."""
    ids = [str(x) for x in customer_ids]
    bought = store.last_purchases()
    bought = bought.loc[bought[c.CUSTOMER_ID].isin(ids)]
    return LayeredLedger(
        engine.ledger_,
        contacts=store.contacts(ids),
        last_purchases=bought,
        consent=store.consent_changes(ids),
        # the few customers who bought since training: what they bought (no reminder for it)
        purchased={cid: frozenset(store.purchased_since(cid, 0)) for cid in bought[c.CUSTOMER_ID]},
    )


def consented_any(engine, ledger: Ledger, customer_ids) -> np.ndarray:
    """Whether each customer may be messaged on at least one of the policy's channels now (the
    consent trained with, then the live opt-ins and opt-outs)."""
    ids = pd.Series(customer_ids).astype(str).tolist()
    channels = tuple(ch for ch in engine.policy_.channels if ch in engine.profiles_.message_channels_)
    if not channels:
        return np.zeros(len(ids), dtype=bool)
    return _trained_consent(engine, ledger, ids, channels).any(axis=1)


def batch_contacts(decisions: pd.DataFrame) -> list[Contact]:
    """The ledger rows of a batch's sends (source `batch`)."""
    sends = decisions.loc[(decisions["action"] != NO_ACTION) & decisions["send_at"].notna()]
    return [
        Contact(
            str(cid),
            str(channel),
            pd.Timestamp(at).timestamp(),
            source="batch",
            action=str(action),
            offer_id=None if offer is None or pd.isna(offer) else str(offer),
        )
        for cid, channel, at, action, offer in zip(
            sends[c.CUSTOMER_ID],
            sends[c.CHANNEL],
            sends["send_at"],
            sends["action"],
            sends[c.OFFER_ID],
            strict=True,
        )
    ]


def record_batch_sends(store: LiveStore, decisions: pd.DataFrame) -> int:
    """Writes the sends of a batch to the contact ledger (one transaction, unchecked); returns how many."""
    return store.record_contacts(batch_contacts(decisions))


# rounds of `decide_batch` before a customer whose ledger keeps changing is left without a send
MAX_DECIDE_ROUNDS = 3
LEDGER_CHANGED = "ledger_changed_during_batch"


def decide_batch(
    engine,
    store: LiveStore,
    customer_ids,
    when,
    record: bool = True,
    excluded: frozenset[str] = frozenset(),
    item_filters=None,
) -> tuple[pd.DataFrame, int, int]:
    """Next-best-action for `customer_ids` on the live store's state, the sends written to its
    ledger (unless `record` is false) as one transaction that nothing interleaves with.
    `excluded`: products no message may show (beside those out of stock now); `item_filters`: the
    recommender's request filters for the recommended items (`omni decide`'s product options).

    A batch reads the ledger, decides for minutes, then writes. A customer contacted, opted out or
    buying in between (a live commit, a channel system's `message_sent`, ...) would get a send the
    policy forbids: their sends are not written (`LiveStore.record_batch_contacts`) and they are
    decided again on the state now, up to MAX_DECIDE_ROUNDS rounds; one whose state still changed
    gets no action (reason LEDGER_CHANGED). Returns (decisions with `consented`, sends written,
    customers decided again)."""
    pending = [str(x) for x in customer_ids]
    parts: list[pd.DataFrame] = []
    recorded = redecided = 0
    for round_ in range(MAX_DECIDE_ROUNDS):
        seen = store.ledger_fingerprints(pending) if record else {}
        ledger = batch_ledger(engine, store, pending)
        unavailable = frozenset(store.out_of_stock()) | excluded
        decisions = engine.decide(
            pending, when, ledger=ledger, unavailable=unavailable, item_filters=item_filters
        )
        decisions["consented"] = consented_any(engine, ledger, decisions[c.CUSTOMER_ID])
        if not record:
            return decisions, 0, 0
        written, changed = store.record_batch_contacts(batch_contacts(decisions), seen)
        recorded += written
        moved = decisions[c.CUSTOMER_ID].isin(changed)
        if not changed or round_ == MAX_DECIDE_ROUNDS - 1:
            if changed:  # nothing was written for them: no action, and why
                decisions = with_no_action(decisions, moved.to_numpy(), LEDGER_CHANGED)
            parts.append(decisions)
            break
        parts.append(decisions.loc[~moved])
        pending = list(changed)
        redecided += len(changed)
    out = pd.concat(parts, ignore_index=True)
    order = {cid: i for i, cid in enumerate(dict.fromkeys(str(x) for x in customer_ids))}
    out = out.iloc[np.argsort(out[c.CUSTOMER_ID].map(order).to_numpy(), kind="stable")]
    return out.reset_index(drop=True), recorded, redecided


def consent_models(tracking_uri: str) -> tuple[object | None, object | None]:
    """(channel model, next-best-action engine) `consent_now` reads: the champion channel model,
    and the engine only where that model has no consent table (or there is none)."""
    from models.catalog import CHANNEL
    from training.scoring import load_champion, load_champion_engine

    try:
        model, _ = load_champion(tracking_uri, CHANNEL)
    except LookupError:
        model = None
    engine = None
    if model is None or not model.has_consent_table_:
        try:
            engine, _ = load_champion_engine(tracking_uri, warn=lambda m: None)
        except LookupError:
            engine = None
    return model, engine


def channel_consent(
    tracking_uri: str, customer_ids, channels, store: LiveStore
) -> dict[str | None, tuple[np.ndarray, str | None]]:
    """`consent_now` of each of `channels` (None: any message channel) with the champion models of
    `tracking_uri`, loaded once, and the live store's consent changes of these customers, read once."""
    ids = [str(x) for x in customer_ids]
    model, engine = consent_models(tracking_uri)
    changes = store.consent_changes(ids)
    return {ch: consent_now(model, engine, ids, ch, changes) for ch in channels}


def consent_now(
    channel_model, engine, customer_ids, channel: str | None, changes: pd.DataFrame
) -> tuple[np.ndarray, str | None]:
    """Whether each customer may be messaged on `channel` now (None: on at least one message
    channel): the consent the channel model was trained with, else the next-best-action engine's,
    with the live opt-ins and opt-outs (`changes`, the live store's `consent_changes`) over it.
    Returns the booleans and a note when the training data had no consent (then everyone may, but
    for a live opt-out). The one answer of the batch commands and the service (`/v1/send_time`)."""
    ids = [str(x) for x in customer_ids]
    if channel_model is not None and channel_model.has_consent_table_:
        allowed = channel_model.allowed_channels(ids, consent_changes=changes)
        if channel is not None:
            allowed = allowed.loc[allowed[c.CHANNEL] == channel]
        ok = set(allowed[c.CUSTOMER_ID])
        return np.array([x in ok for x in ids], dtype=bool), None
    if engine is not None:
        frame = engine.profiles_.frame_
        channels = tuple(
            ch for ch in ((channel,) if channel else engine.policy_.channels) if f"consent_{ch}" in frame
        )
        if channels:
            ledger = LayeredLedger(engine.ledger_, consent=changes)
            return _trained_consent(engine, ledger, ids, channels).any(axis=1), None
    opted_out = {
        (cid, ch)
        for cid, ch, v in zip(changes[c.CUSTOMER_ID], changes[c.CHANNEL], changes[c.OPTED_IN], strict=True)
        if not v
    }
    note = (
        f"no consent known for {channel or 'any channel'} (no consent table in the training data): every "
        "customer counts as consented, but for live opt-outs"
    )
    if channel is None:
        return np.ones(len(ids), dtype=bool), note
    return np.array([(x, channel) not in opted_out for x in ids], dtype=bool), note


def _trained_consent(engine, ledger: Ledger, ids: list[str], channels: tuple[str, ...]) -> np.ndarray:
    """(n, len(channels)): the profiles' consent at training with the ledger's live changes over it."""
    profiles = engine.profiles_
    arr = np.asarray(ids, dtype=object)
    rows = profiles.rows(arr)
    known = rows >= 0
    safe = np.where(known, rows, 0)
    consent = np.zeros((len(ids), len(channels)), dtype=bool)
    for j, ch in enumerate(channels):
        consent[:, j] = profiles.frame_[f"consent_{ch}"].to_numpy(bool)[safe] & known
    return ledger.consent_matrix(arr, channels, consent)
