"""The models one service worker answers with, loaded together from one `omni build`, and the
watcher that swaps in the next build's without a restart.

A worker holds one `ServedModels` at a time; each request reads it once, so an answer never mixes
two builds. `ModelWatcher` polls the build manifest's tag (a new tag per `omni build`) in a
background thread; on a new one it loads and warms the whole set beside the serving one, then
swaps the reference: requests in flight finish on the old set, the next ones get the new one, none
fails. A build whose models do not load leaves the old set serving and says why in the log (and is
not retried until the next build).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("omni.serving")


@dataclass(frozen=True)
class ServedModels:
    """Every model family of one build (None where the build has none) and what the answers say."""

    build: str | None  # the build manifest's tag
    recommender: object | None = None
    channel_model: object | None = None
    send_time_model: object | None = None
    engine: object | None = None
    model_versions: dict[str, str] = field(default_factory=dict)
    # family → why its routes cannot answer (only for the families this build lacks)
    missing: dict[str, str] = field(default_factory=dict)
    quiet_hours: tuple[int, int] | None = None


def load_served_models() -> ServedModels:
    """The last build's models, loaded and warmed; RuntimeError naming the model when one does
    not load (or when the store holds none)."""
    from models.catalog import CHANNEL, NBA, RECOMMENDER, SEND_TIME
    from models.decisions.contact_policy import load_contact_policy
    from training.build import load_served_model, missing_served_message, served_build_tag, served_manifest

    build = served_build_tag()
    manifest = served_manifest(build)  # that build's, even if another one lands meanwhile
    if not manifest["models"]:
        raise RuntimeError("the BentoML model store holds no model: run `omni build` first")
    missing: dict[str, str] = {}
    versions: dict[str, str] = {}

    def load(entry, *args):
        try:
            folder, version = load_served_model(entry.name, manifest)
        except LookupError:
            for family in entry.families:
                missing[family] = missing_served_message(family, entry.name, manifest)
            return None
        try:
            model = entry.load(folder, *args)
        except Exception as exc:  # a broken artefact, whatever broke
            raise RuntimeError(f"model '{entry.name}' v{version} does not load: {exc}") from exc
        versions[entry.version_key] = version
        return model

    recommender = load(RECOMMENDER)
    channel_model = load(CHANNEL)
    send_time_model = load(SEND_TIME)
    # without a recommender the engine's decisions carry no product items
    engine = load(NBA, recommender, channel_model, send_time_model)
    order = (RECOMMENDER, NBA, CHANNEL, SEND_TIME)  # the answers' order of model_versions
    # one quiet-hours setting: the contact policy the engine decides under (or the default file)
    policy = engine.policy_ if engine is not None else load_contact_policy()
    # the one-off costs of the first request (look-up tables, the channel model's scores) are paid
    # here, once per worker and build, not by a client
    try:
        if recommender is not None:
            recommender.warm()
        if engine is not None:
            engine.warm()
    except Exception as exc:
        raise RuntimeError(f"the models of build {build} load but do not answer: {exc}") from exc
    return ServedModels(
        build=build,
        recommender=recommender,
        channel_model=channel_model,
        send_time_model=send_time_model,
        engine=engine,
        model_versions={e.version_key: versions[e.version_key] for e in order if e.version_key in versions},
        missing=missing,
        quiet_hours=policy.quiet_hours,
    )


class ModelWatcher:
    """Polls the build tag every `interval` seconds; calls `swap(new_models)` after a new build
    loaded. A daemon thread: it ends with the worker."""

    def __init__(
        self,
        current: Callable[[], ServedModels],
        swap: Callable[[ServedModels], None],
        interval: float,
        load: Callable[[], ServedModels] = load_served_models,
    ) -> None:
        self.current, self.swap, self.interval, self.load = current, swap, float(interval), load
        self._failed: str | None = None  # a build that did not load: not retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omni-model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """One poll: True when a new build was swapped in."""
        from training.build import served_build_tag

        try:
            tag = served_build_tag()
        except Exception as exc:  # the store mid-write or unreadable: try again next time
            logger.warning("model watcher: cannot read the build manifest: %s", exc)
            return False
        serving = self.current().build
        if tag is None or tag == serving or tag == self._failed:
            return False
        try:
            models = self.load()
        except Exception as exc:
            self._failed = tag
            logger.error("build %s not served, still serving build %s: %s", tag, serving, exc)
            return False
        self.swap(models)
        logger.warning("now serving build %s: %s (was %s)", models.build, models.model_versions, serving)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
