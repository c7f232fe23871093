"""The channel model's folder: the LightGBM text model, npz arrays (read with
`allow_pickle=False`) and json (`channel.json`). Format 1 folders (a LightGBM engagement model)
and format 2 (no rule, no attributes) still load and score as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from features import columns as c
from models.base import read_model_meta
from models.timestamps import to_us

FORMAT_VERSION = 3
# format 1: a LightGBM engagement model (scored as before); 2: no rule mode, no attributes, fixed
# outcome windows (scored as before)
_READABLE_FORMATS = (1, 2, 3)
TARGETS: tuple[str, ...] = ("engagement", "conversion")


def write_folder(model, folder: str | Path) -> Path:
    """`ChannelModel.save`: a fitted model's state written to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for target, booster in model.boosters_.items():
        booster.save_model(str(folder / f"{target}.lgb.txt"), num_iteration=booster.best_iteration or None)
    consent = model.consent_
    glm = (
        {
            "glm_coef": model.glm_coef_,
            "glm_mean": model.glm_mean_,
            "glm_scale": model.glm_scale_,
            "glm_low": model.glm_low_,
            "glm_high": model.glm_high_,
        }
        if model.glm_coef_ is not None
        else {}
    )
    np.savez_compressed(
        folder / "channel.npz",
        customer_ids=model.customer_ids_.astype(str),
        customer_features=model.customer_features_,
        n_messages=model.n_messages_,
        consent_customer=consent[c.CUSTOMER_ID].to_numpy().astype(str),
        consent_channel=consent[c.CHANNEL].to_numpy().astype(str),
        consent_opted_in=consent[c.OPTED_IN].to_numpy().astype(bool),
        consent_updated_us=to_us(consent[c.UPDATED_TS]),
        **{f"calibration_{t}_x": model.calibrators_[t][0] for t in TARGETS},
        **{f"calibration_{t}_y": model.calibrators_[t][1] for t in TARGETS},
        **glm,
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "params": model.get_params(),
        "as_of": model.as_of_.isoformat(),
        "channels": list(model.channels_),
        "event_channels": list(model.event_channels_),
        "identity_systems": list(model.identity_systems_),
        "channel_rates": model.channel_rates_,
        "feature_names": model.feature_names_,
        "customer_feature_names": model.customer_feature_names_,
        "has_consent_table": model.has_consent_table_,
        "boosters": sorted(model.boosters_),
        "open_window_days": model.open_window_days_,
        "conversion_window_days": model.conversion_window_days_,
        "rule_strength": {k: (v if np.isfinite(v) else None) for k, v in model.rule_strength_.items()},
        "attribute_encoding": model.attribute_encoding_,
        "attributes_used": model.attributes_used_,
        "conversion_features": model.conversion_features_,
        "engagement_model": None
        if model.glm_coef_ is None
        else {
            "inputs": model.glm_features_,
            "population_mix": model.population_mix_,
            "eb_tau": model.eb_tau_ if np.isfinite(model.eb_tau_) else None,
        },
        "training_info": model.training_info_,
        "notes": model.notes_,
    }
    (folder / "channel.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_meta(folder: Path) -> dict:
    """The folder's json, checked to be of a format this code reads."""
    return read_model_meta(folder, "channel.json", "channel model", _READABLE_FORMATS)


def restore_from_meta(model, meta: dict) -> None:
    """The fitted state the json holds, set on `model` (built from its params)."""
    model.as_of_ = pd.Timestamp(meta["as_of"])
    model.channels_ = np.asarray(meta["channels"], dtype=str)
    model.event_channels_ = np.asarray(meta["event_channels"], dtype=str)
    model.identity_systems_ = list(meta.get("identity_systems", []))
    model.channel_rates_ = {k: float(v) for k, v in meta["channel_rates"].items()}
    model.feature_names_ = list(meta["feature_names"])
    model.customer_feature_names_ = list(meta["customer_feature_names"])
    model.has_consent_table_ = bool(meta["has_consent_table"])
    model.training_info_ = meta["training_info"]
    model.notes_ = list(meta["notes"])
    # format 3; before it: the windows were parameters, no rule mode, no attributes
    model.open_window_days_ = float(meta.get("open_window_days", model.open_window_days or 3.0))
    model.conversion_window_days_ = float(
        meta.get("conversion_window_days", model.conversion_window_days or 14.0)
    )
    strengths = meta.get("rule_strength", {})
    model.rule_strength_ = {k: float("inf") if v is None else float(v) for k, v in strengths.items()}
    model.attribute_encoding_ = list(meta.get("attribute_encoding", []))
    model.attributes_used_ = dict(meta.get("attributes_used", {}))
    model.conversion_features_ = list(meta.get("conversion_features", model.feature_names_))


def restore_arrays(model, folder: Path, meta: dict) -> None:
    """The boosters and the npz arrays of the folder, set on `model`."""
    model.boosters_ = {t: lgb.Booster(model_file=str(folder / f"{t}.lgb.txt")) for t in meta["boosters"]}
    with np.load(folder / "channel.npz", allow_pickle=False) as arrays:
        model.customer_ids_ = arrays["customer_ids"].astype(str)
        model.customer_features_ = arrays["customer_features"]
        model.n_messages_ = arrays["n_messages"]
        model.calibrators_ = {
            t: (arrays[f"calibration_{t}_x"], arrays[f"calibration_{t}_y"]) for t in TARGETS
        }
        model.glm_coef_ = arrays["glm_coef"] if "glm_coef" in arrays else None
        if model.glm_coef_ is not None:
            engagement = meta["engagement_model"]
            model.glm_mean_, model.glm_scale_ = arrays["glm_mean"], arrays["glm_scale"]
            model.glm_low_, model.glm_high_ = arrays["glm_low"], arrays["glm_high"]
            model.glm_features_ = list(engagement["inputs"])
            model.population_mix_ = {k: float(v) for k, v in engagement["population_mix"].items()}
            tau = engagement["eb_tau"]
            model.eb_tau_ = float("inf") if tau is None else float(tau)
        model.consent_ = pd.DataFrame(
            {
                c.CUSTOMER_ID: arrays["consent_customer"].astype(str),
                c.CHANNEL: arrays["consent_channel"].astype(str),
                c.OPTED_IN: arrays["consent_opted_in"].astype(bool),
                c.UPDATED_TS: pd.to_datetime(arrays["consent_updated_us"], unit="us", utc=True),
            }
        )
    model.customer_index_ = {cid: i for i, cid in enumerate(model.customer_ids_)}
