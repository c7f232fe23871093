"""Champion/challenger promotion in the MLflow model registry.

Every trained version is aliased `challenger`. It becomes `champion` only when it scores at least
as well as the current champion, as deployed, on the same new window (plus a margin per family),
or by hand with `omni promote`. Each move of `champion` is appended to the registered model's tag
`champion_history`, which is what `omni rollback` walks back. Moving an alias is one registry call,
so a reader sees either the old champion or the new one, never a half-updated state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.settings import CHALLENGER, CHAMPION

HISTORY_TAG = "champion_history"


@dataclass
class PromotionDecision:
    model_name: str
    challenger_version: str
    previous_champion: str | None
    metric: str
    challenger_score: float
    champion_score: float | None
    margin: float
    promoted: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def current_version(client: MlflowClient, name: str, alias: str = CHAMPION) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_history(client: MlflowClient, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _move_champion(client: MlflowClient, name: str, version: str, history: list[str]) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def decide_promotion(
    name: str,
    challenger_version: str,
    previous_champion: str | None,
    metric: str,
    challenger_score: float,
    champion_score: float | None,
    margin: float = 0.0,
) -> PromotionDecision:
    """Promote when there is no champion, or challenger ≥ champion + margin (higher is better)."""
    if previous_champion is None or champion_score is None:
        promoted, reason = True, "no current champion"
    elif challenger_score >= champion_score + margin:
        promoted = True
        reason = f"{metric} {challenger_score:.5f} >= champion {champion_score:.5f} + margin {margin}"
    else:
        promoted = False
        reason = f"{metric} {challenger_score:.5f} < champion {champion_score:.5f} + margin {margin}"
    return PromotionDecision(
        model_name=name,
        challenger_version=challenger_version,
        previous_champion=previous_champion,
        metric=metric,
        challenger_score=float(challenger_score),
        champion_score=None if champion_score is None else float(champion_score),
        margin=margin,
        promoted=promoted,
        reason=reason,
    )


def apply_decision(client: MlflowClient, decision: PromotionDecision) -> None:
    """Alias the new version `challenger`; move `champion` to it when the decision says so."""
    name, version = decision.model_name, decision.challenger_version
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "promotion", json.dumps(decision.as_dict()))
    if decision.promoted:
        _move_champion(client, name, version, champion_history(client, name) + [version])


def promote(client: MlflowClient, name: str, version: str | None = None) -> str:
    """Make `version` (default: the current challenger) the champion; returns it."""
    version = version or current_version(client, name, CHALLENGER)
    if version is None:
        raise LookupError(f"model '{name}' has no challenger to promote; give a version")
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise LookupError(f"model '{name}' has no version {version}") from exc
    if current_version(client, name) == str(version):
        return str(version)
    _move_champion(client, name, str(version), champion_history(client, name) + [str(version)])
    return str(version)


def rollback(client: MlflowClient, name: str) -> str:
    """Point `champion` back at the version it had before the last move; returns that version."""
    history = champion_history(client, name)
    if len(history) < 2:
        raise LookupError(f"model '{name}' has no earlier champion to roll back to")
    history = history[:-1]
    _move_champion(client, name, history[-1], history)
    return history[-1]


PARAMS_TAG = "params"


def gate(
    client: MlflowClient,
    name: str,
    version: str,
    params: dict,
    metric: str,
    challenger_score: float,
    champion_score: float | None = None,
    margin: float = 0.0,
    note: str = "",
    promote_unscored: bool = True,
) -> PromotionDecision:
    """Decide whether the new `version` replaces the champion, and move the aliases.

    `champion_score` is the registered champion itself, as deployed, scored on this run's new
    window, and `challenger_score` the new model fitted before that window, on the same window
    (the caller computes both: each family knows how to score its models). When the champion
    could not be scored (`champion_score` None, `note` says why), `promote_unscored` decides: a
    champion this code cannot read is replaced, one with no new data to be judged on stays.
    `params` (what defines the new model) is stored on its version.
    """
    client.set_model_version_tag(name, version, PARAMS_TAG, json.dumps(params, sort_keys=True, default=str))
    champion = current_version(client, name)
    if champion is not None and champion_score is None:
        decision = decide_promotion(name, version, champion, metric, challenger_score, None, margin)
        decision.promoted = promote_unscored
        decision.reason = (note or "the champion could not be scored on this run's window") + (
            "; promoted" if promote_unscored else "; the champion stays"
        )
    else:
        decision = decide_promotion(name, version, champion, metric, challenger_score, champion_score, margin)
        if note and champion is not None:
            decision.reason += f" ({note})"
    apply_decision(client, decision)
    return decision
