"""Every model the project registers, named once: training registers them under these names, `omni
build` copies them into the BentoML store, scoring commands and the service load them from there.

Each entry says its registered name (MLflow's registry and BentoML's store), the folder it is
saved in inside the logged model, the `omni train` families it holds (the names of a run's
`skipped.<family>` tags; the customer profiles travel inside the next-best-action engine), the key
of answers' `model_versions`, and the class whose `load(folder, ...)` reads it.

Every model is optional (data without product ids train no recommender, data without messages no
channel or send-time model); a build needs one at least. The loader is named, not imported, so
that reading the catalog costs nothing and this module imports no model family.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

__all__ = ["CATALOG", "CHANNEL", "NBA", "RECOMMENDER", "SEND_TIME", "RegisteredModel", "by_family", "by_name"]


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model: where it is saved and which class reads it."""

    name: str  # registered name in MLflow and in the BentoML store
    folder: str  # the folder holding it inside the logged MLflow model and the BentoML model
    families: tuple[str, ...]  # the `omni train` families it holds, the first its own
    version_key: str  # its key in the answers' `model_versions`
    loader: str  # "module:Class": `Class.load(folder, ...)` reads a saved folder
    # what loading and scoring it imports beyond numpy, pandas, pyarrow and scikit-learn (the
    # requirements of its logged MLflow model, pinned to the versions that trained it)
    packages: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.families[0]

    def model_class(self) -> type:
        module, _, name = self.loader.partition(":")
        return getattr(import_module(module), name)

    def load(self, folder: str | Path, *args):
        """The model saved in `folder` (extra `args` go to the class's `load`)."""
        return self.model_class().load(Path(folder), *args)


RECOMMENDER = RegisteredModel(
    "omni-recommender",
    "recommender",
    ("recommender",),
    "recommender",
    "models.recs:TwoStageRecommender",
    ("scipy", "lightgbm", "implicit", "threadpoolctl", "tqdm"),
)
CHANNEL = RegisteredModel(
    "omni-channel",
    "channel",
    ("channel",),
    "channel",
    "models.engagement:ChannelModel",
    ("scipy", "lightgbm", "numba"),
)
SEND_TIME = RegisteredModel(
    "omni-send-time",
    "send_time",
    ("send_time",),
    "send_time",
    "models.engagement:SendTimeModel",
    ("scipy", "lightgbm", "numba"),
)
NBA = RegisteredModel(
    "omni-nba",
    "nba",
    ("next_best_action", "profiles"),
    "nba",
    "models.decisions:NextBestActionEngine",
    ("scipy", "lightgbm"),
)
# in the order the service loads them (the engine is wired to the other three)
CATALOG: tuple[RegisteredModel, ...] = (RECOMMENDER, CHANNEL, SEND_TIME, NBA)


def by_name(name: str) -> RegisteredModel:
    """The entry of a registered name; KeyError naming the known ones."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown registered model {name!r} (known: {', '.join(e.name for e in CATALOG)})")


def by_family(family: str) -> RegisteredModel:
    """The registered model that holds an `omni train` family."""
    for entry in CATALOG:
        if family in entry.families:
            return entry
    raise KeyError(f"no registered model holds the family {family!r}")
