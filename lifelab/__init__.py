"""lifelab: an evolving experimentation platform for lifelong-learning research on Ray Tune.

Importing the package is cheap (no torch, no ray): the CLI validates specs before heavy imports,
and the names below load on first use.

    lifelab.sweep / resume / evaluate / load run and read sweeps from Python
    lifelab.Learner, ContinualLearner, Param the contract a researcher's own learner fulfils
    lifelab.register_learner(name, cls)      name it for the sweeps of this process
"""

from __future__ import annotations

import importlib

from lifelab.errors import ClusterError, ConfigError, DataError, LifelabError, StorageError

__version__ = "0.1.0"

_LAZY = {
    "sweep": "lifelab.api", "resume": "lifelab.api", "load": "lifelab.api",
    "evaluate": "lifelab.api", "compare_searches": "lifelab.api",
    "Learner": "lifelab.learners.contract", "Param": "lifelab.learners.contract",
    "Evaluation": "lifelab.learners.contract",
    "ContinualLearner": "lifelab.learners.base",
    "register_learner": "lifelab.trainables.registry",
}

__all__ = [
    "ClusterError", "ConfigError", "DataError", "LifelabError", "StorageError", "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lifelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
