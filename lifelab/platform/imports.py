"""Objects named `package.module:attribute` in a spec (a researcher's learner or dataset)."""

from __future__ import annotations

import importlib

from lifelab.errors import ConfigError


def import_object(path: str, what: str) -> object:
    """The object `path` ('package.module:attr', attr may be dotted) names; a ConfigError naming
    the fix if the module does not import or lacks it. `what` names it in messages."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} '{path}' must be 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} '{path}': cannot import {module_name} ({exc}): install its "
                          "package, or list its folder in the spec's `code`") from None
    except Exception as exc:   # the module itself raised while importing
        raise ConfigError(f"{what} '{path}': importing {module_name} failed "
                          f"({type(exc).__name__}: {exc}): fix that module") from None
    found = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{what} '{path}': {module_name} has no '{attr}': check the name "
                              "after ':'")
        found = getattr(found, part)
    return found
