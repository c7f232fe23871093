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
from models.decisions.decision_core import NO_ACTION
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


def record_batch_sends(store: LiveStore, decisions: pd.DataFrame) -> int:
    """Writes the sends of a batch to the contact ledger (one transaction); returns how many."""
    sends = decisions.loc[(decisions["action"] != NO_ACTION) & decisions["send_at"].notna()]
    contacts = [
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
    return store.record_contacts(contacts)


def channel_consent(
    tracking_uri: str, customer_ids, channel: str | None, store: LiveStore
) -> tuple[np.ndarray, str | None]:
    """Whether each customer may be messaged on `channel` now (None: on at least one message
    channel): the consent the champion channel model was trained with, else the next-best-action
    engine's, with the live opt-ins and opt-outs over it. Returns the booleans and a note when the
    training data had no consent (then everyone may, but for a live opt-out)."""
    from models.catalog import CHANNEL
    from training.scoring import load_champion, load_champion_engine

    ids = [str(x) for x in customer_ids]
    changes = store.consent_changes(ids)
    try:
        model, _ = load_champion(tracking_uri, CHANNEL)
    except LookupError:
        model = None
    if model is not None and model.has_consent_table_:
        allowed = model.allowed_channels(ids, consent_changes=changes)
        if channel is not None:
            allowed = allowed.loc[allowed[c.CHANNEL] == channel]
        ok = set(allowed[c.CUSTOMER_ID])
        return np.array([x in ok for x in ids], dtype=bool), None
    try:
        engine, _ = load_champion_engine(tracking_uri, warn=lambda m: None)
    except LookupError:
        engine = None
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
