"""Unit tests: one module at a time, on small hand-made data whose answer is known by construction.

They must stay fast (`make test-fast` runs them alone, well under a minute), so they may not use the
session's generated data, trained models or MLflow store: a test that needs those belongs in
tests/integration. Collection stops with the reason when one does.
"""

from pathlib import Path

import pytest

# the root conftest's session fixtures that generate data, train or open a store
NOT_FOR_UNIT_TESTS = frozenset(
    {
        "generated_data",
        "generated_tables",
        "module_generated_tables",
        "trained",
        "tracking_uri",
        "registry_without_recommender",
    }
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents and (used := NOT_FOR_UNIT_TESTS & set(item.fixturenames)):
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(used))}: a unit test may not; move it to tests/integration"
            )
