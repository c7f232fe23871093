"""The catalog of registered models, the logged models' requirements and code, the fit backend the
caller hands to the models, and the promotion-margin option."""

from pathlib import Path

import pytest

from models import fitting
from models.catalog import CATALOG, NBA, RECOMMENDER, by_family, by_name
from training.families import FAMILY_NAMES, parse_promotion_margins


def test_every_registered_model_is_named_once_and_loadable():
    assert len({e.name for e in CATALOG}) == len(CATALOG) == 4
    assert len({e.folder for e in CATALOG}) == len({e.version_key for e in CATALOG}) == 4
    for entry in CATALOG:
        assert callable(entry.model_class().load)
        assert by_name(entry.name) is entry
    assert {f for e in CATALOG for f in e.families} == set(FAMILY_NAMES)
    assert by_family("profiles") is NBA and by_family("recommender") is RECOMMENDER
    with pytest.raises(KeyError, match="omni-recommender"):
        by_name("omni-nothing")


def test_logged_models_carry_their_requirements_and_code_without_the_generator():
    from training.pyfunc import _code_snapshot, requirements

    names = [r.split("==")[0] for r in requirements(RECOMMENDER)]
    # loading the recommender reads its LightGBM ranker and implicit's ALS
    assert {"lightgbm", "implicit", "numpy", "pandas", "mlflow"} <= set(names)
    assert all("==" in r for r in requirements(NBA))
    with _code_snapshot() as paths:
        assert sorted(Path(p).name for p in paths) == ["features", "models"]
        copied = {
            p.relative_to(Path(paths[0]).parent).as_posix() for path in paths for p in Path(path).rglob("*")
        }
    assert "models/recs/two_stage.py" in copied and "features/io.py" in copied
    assert not any("synthetic" in name or "__pycache__" in name for name in copied)


class _RecordingBackend(fitting.FitBackend):
    name = "recording"
    distributed = True

    def __init__(self):
        self.calls = []

    def fit_estimator(self, estimator, X, y, **kwargs):
        self.calls.append("fit_estimator")
        return estimator


def test_the_caller_chooses_where_fits_run():
    backend = _RecordingBackend()
    assert fitting.current_backend() is fitting.LOCAL_BACKEND and fitting.fits_locally()
    with fitting.using_backend(backend):
        assert fitting.fit_estimator("model", None, None) == "model"
        assert backend.calls == ["fit_estimator"] and not fitting.fits_locally()
        with fitting.fit_pool(2) as pool:  # a distributed backend fits one at a time here
            assert pool is None
        with pytest.raises(RuntimeError, match="already in use"), fitting.using_backend(_RecordingBackend()):
            pass
    assert fitting.current_backend() is fitting.LOCAL_BACKEND


def test_promotion_margins_for_all_and_per_family():
    assert parse_promotion_margins([]) == (0.0, {})
    assert parse_promotion_margins(["0.01", "channel=-0.5", "send_time=0"]) == (
        0.01,
        {"channel": -0.5, "send_time": 0.0},
    )
    with pytest.raises(ValueError, match="unknown family 'profiles'"):
        parse_promotion_margins(["profiles=0.1"])
    with pytest.raises(ValueError, match="expected a number"):
        parse_promotion_margins(["channel=high"])


def test_a_wing_face_loads_a_module_only_when_its_name_is_used():
    """`import models.recs.rules` reads the rules alone (no LightGBM, no implicit); the face's names
    load their module on first use and are listed by `dir`."""
    import subprocess
    import sys

    code = (
        "import sys, models.recs.rules, models.engagement, models.decisions;"
        "print('lightgbm' in sys.modules, 'implicit' in sys.modules);"
        "import models.recs as recs; from models.recs import TwoStageRecommender;"
        "print(TwoStageRecommender.__module__, 'TwoStageRecommender' in dir(recs), sorted(recs.__all__) == recs.__all__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "models.recs.two_stage", "True", "True"]
    import models.recs

    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        models.recs.Nothing  # noqa: B018
