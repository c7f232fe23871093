"""Batch scoring with the registry's champion models (`omni recommend --all`, `omni decide`, ...),
and the messages that say which model family is missing and why."""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from features import columns as c
from models.catalog import CHANNEL, NBA, RECOMMENDER, SEND_TIME, RegisteredModel
from training.settings import CHAMPION

# family → (what it is called in a sentence, whether that name is plural)
_FAMILY_NAMES: dict[str, tuple[str, bool]] = {
    "recommender": ("recommender", False),
    "channel": ("channel model", False),
    "send_time": ("send-time model", False),
    "profiles": ("customer profiles", True),
    "next_best_action": ("next-best-action model", False),
}
# a family registered inside another family's model: that one's skip reason explains it too
_HELD_BY = {"profiles": "next_best_action"}


def family_name(family: str) -> str:
    return _FAMILY_NAMES.get(family, (family, False))[0]


def skip_explanation(family: str, reasons: dict[str, str]) -> str | None:
    """Why the last `omni train` did not train `family`, from its skip `reasons` (family → reason,
    `training.tracking.latest_skip_reasons`); None when the run recorded no reason for it."""
    plural = _FAMILY_NAMES.get(family, (family, False))[1]
    if reasons.get(family):
        return f"the last omni train skipped {'them' if plural else 'it'} ({reasons[family]})"
    holder = _HELD_BY.get(family)
    if holder and reasons.get(holder):
        return f"the last omni train skipped the {family_name(holder)} that holds them ({reasons[holder]})"
    return None


def missing_model_message(family: str, reasons: dict[str, str], detail: str | None = None) -> str:
    """`no <family> has been trained: <why>`: the skip reason of the last training run when it
    recorded one, else `detail` (e.g. the registry's "no champion" message)."""
    name, plural = _FAMILY_NAMES.get(family, (family, False))
    why = skip_explanation(family, reasons) or detail
    head = f"no {name} {'have' if plural else 'has'} been trained"
    return f"{head}: {why}" if why else head


def missing_champion_message(tracking_uri: str, family: str, error: Exception | str) -> str:
    """The message of a scoring command whose family has no champion: it names the family and
    gives the reason the latest `omni train` run recorded for skipping it, when there is one."""
    from training.tracking import latest_skip_reasons

    return missing_model_message(family, latest_skip_reasons(tracking_uri), str(error))


def load_champion(tracking_uri: str, entry: RegisteredModel = RECOMMENDER, *args, alias: str = CHAMPION):
    """The registry's `alias` (champion) of a catalogued model and its version; LookupError with the
    reason when there is none or when this code cannot read it. `args` go to the model's `load`."""
    from training.tracking import download_model_folder

    folder, version = download_model_folder(tracking_uri, entry.name, alias, artifact=entry.folder)
    return read_model(entry.load, folder, entry.name, version, *args), version


def read_model(loader, folder, name: str, version: str, *args):
    """`loader(folder, *args)`; a folder this code cannot read (written by an older version, or
    damaged) is a LookupError saying so, as a missing model is: the commands exit 2 with it."""
    try:
        return loader(folder, *args)
    except (ValueError, KeyError, OSError) as exc:
        raise LookupError(
            f"the champion {name} v{version} cannot be read by this code ({exc}): run `omni train` again"
        ) from exc


def recommendations_frame(
    rec,
    customer_ids: list[str],
    k: int,
    model: str = "served",
    filters=None,
    chunk: int = 2000,
    show_progress: bool = False,
    exclude: list[str] | None = None,
    channel: str | None = None,
) -> pd.DataFrame:
    """customer_id, rank, product_id, score, reason for every customer, scored in chunks to bound
    memory. `model="served"`: the order the recommender chose on validation (what the service
    answers); `filters`: `models.recs.rules.Filters` or a dict, e.g. {"exclude_purchased": True} for
    products the customer never bought; `exclude`: products no list may hold (e.g. out of stock);
    `channel`: the channel the lists are for (only products sold there; None: no channel rule)."""
    extra = {} if filters is None else {"filters": filters}
    if channel is not None:
        extra["channel"] = channel
    rows = []
    for start in tqdm(
        range(0, len(customer_ids), chunk), desc="recommend", unit="chunk", disable=not show_progress
    ):
        batch = customer_ids[start : start + chunk]
        if exclude:
            extra["exclude"] = [exclude] * len(batch)
        for cid, r in zip(batch, rec.recommend_many(batch, k, model=model, **extra), strict=True):
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
    models; returns (engine, versions). Each of those three may be missing (a family the last
    `omni train` skipped): the engine then uses its fallback (no product items without a
    recommender), with a warning that says why. LookupError when there is no engine."""
    from training.tracking import download_model_folder, latest_skip_reasons

    folder, nba_version = download_model_folder(tracking_uri, NBA.name, CHAMPION, artifact=NBA.folder)
    versions = {NBA.version_key: nba_version}
    loaded = {}
    reasons = None
    for entry, fallback in (
        (RECOMMENDER, "decisions carry no product items"),
        (CHANNEL, "using the engine's fallback for channel"),
        (SEND_TIME, "using the engine's fallback for send_time"),
    ):
        try:
            loaded[entry.version_key], versions[entry.version_key] = load_champion(tracking_uri, entry)
        except LookupError as exc:
            loaded[entry.version_key] = None
            if reasons is None:
                reasons = latest_skip_reasons(tracking_uri)
            warn(f"warning: {missing_model_message(entry.family, reasons, str(exc))}; {fallback}")
    engine = read_model(
        NBA.load, folder, NBA.name, nba_version, loaded["recommender"], loaded["channel"], loaded["send_time"]
    )
    return engine, versions


def refresh_from_data(engine, data_dir) -> None:
    """Bring a loaded engine's consent and contact history up to a data folder's (a later opt-out
    and the messages sent since training count without retraining). DataValidationError when the
    folder breaks the contract."""
    from features.identity import stitch_identities
    from features.io import load_tables
    from models.decisions.contact_policy import ContactLedger

    tables = stitch_identities(load_tables(data_dir))
    if tables.consent is not None:
        engine.profiles_.refresh_consent(tables.consent)
    engine.ledger_ = ContactLedger.from_history(tables.messages, tables.events)
