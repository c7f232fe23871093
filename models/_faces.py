"""Package faces that import on first use: `from models.recs import TwoStageRecommender` reads
`models/recs/two_stage.py` then, while `import models.recs.rules` reads that module alone (a
command that only validates data does not load LightGBM and implicit for a face it passes through).
"""

from __future__ import annotations

from importlib import import_module


def lazy_face(package: str, exports: dict[str, str]):
    """`(__all__, __getattr__, __dir__)` for the package `package` whose public names `exports`
    maps to the module (relative to the package) defining each."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{exports[name]}"), name)
        globals_of_package = vars(import_module(package))
        globals_of_package[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(import_module(package))) | set(exports))

    return sorted(exports), __getattr__, __dir__
