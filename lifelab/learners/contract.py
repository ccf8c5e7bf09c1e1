"""The Learner contract: everything lifelab reads from a learner, in one abstract base class.

A learner is plain PyTorch. lifelab builds it from a config dict, drives it in rounds, saves and
restores it, and reads back what it reports. The platform (the spec check, the trainable, the
store) touches nothing outside what `Learner` names here, so a researcher's own class works
exactly like a built-in one. Writing a learner: docs/writing-a-learner.md.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lifelab.errors import ConfigError
from lifelab.platform.checks import check_keys, check_value

#: keys every learner config may hold besides its own parameters
COMMON_KEYS = ("stream", "seed")


@dataclass(frozen=True)
class Param:
    """One config key of a learner: its default, type and allowed range (`lifelab list NAME`
    prints them). `kind` is int, float, str, bool or list (a non-empty list of positive ints,
    e.g. layer sizes)."""
    default: Any
    kind: type
    low: float | None = None        # inclusive lower bound for numbers
    high: float | None = None       # inclusive upper bound for numbers
    positive: bool = False          # strictly greater than zero
    choices: tuple | None = None
    doc: str = ""

    def check(self, owner: str, key: str, value: Any) -> Any:
        """`value` as this key holds it (an int given for a float becomes a float); a
        ConfigError naming `owner`'s key otherwise."""
        return check_value(f"{owner} config '{key}'", value, self.kind, self.low, self.high,
                           above=0 if self.positive else None, choices=self.choices)

    def describe(self) -> str:
        """The allowed values in a few words, for `lifelab list NAME` and the docs."""
        if self.choices is not None:
            return " | ".join(map(str, self.choices))
        if self.kind is list:
            return "list of ints > 0"
        bounds = ["> 0" if self.positive else "",
                  f">= {self.low:g}" if self.low is not None else "",
                  f"<= {self.high:g}" if self.high is not None else ""]
        return ", ".join(b for b in bounds if b) or "any"


@dataclass(frozen=True)
class Evaluation:
    """Accuracy on each task seen so far (index = task), after `tasks_trained` finished tasks.

    `views` holds the same row under the task- and class-incremental views ("til", "cil")
    where the scenario defines both."""
    accuracies: list[float]
    tasks_trained: int
    views: dict[str, list[float]] = field(default_factory=dict)

    @property
    def average(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)


class Learner(abc.ABC):
    """The one contract between lifelab and a learner.

    Class attributes (read before any learner is built, e.g. by the spec check and `lifelab list`):
      name               the name a spec uses (also how the learner's errors name it)
      params             {key: Param}: every config key, its default, type, range and doc
      metrics            names `step_round` reports (lower_snake_case); a search may select on
                         any of them but `partial_metrics`, those missing from early rounds
      architecture_keys  keys whose change alters parameter shapes
      adaptable_keys     the architecture keys `adapt` can cross (PBT may mutate only these)
    The first line of the class docstring is the learner's description in `lifelab list`.

    An instance is built as `cls(config, device, data)`: `config` a plain dict (checked by
    `validate_config`, which fills defaults), `data` the stream's dataset when the platform
    already holds it (shared by every trial of a node), else None (load it yourself). It is then
    driven by `step_round()` until `done`; `rows` is the accuracy matrix so far on the test split
    (one list per finished task; stays empty for learners without one), `val_rows` the same on
    the validation split. Metrics scored on validation data are named `val_<name>` beside the
    test metric `<name>`: searches select on them, never on test data. `state_dict()` /
    `load_state_dict()` must give bit-for-bit continuation and hold only tensors, numbers,
    strings, lists and dicts
    (checkpoints are loaded with `torch.load(weights_only=True)`). `adapt(state, old_config)`
    loads a state made under other `adaptable_keys` values (PBT's architecture mutations).
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    metrics: ClassVar[tuple[str, ...]] = ()
    partial_metrics: ClassVar[tuple[str, ...]] = ()
    architecture_keys: ClassVar[tuple[str, ...]] = ()
    adaptable_keys: ClassVar[tuple[str, ...]] = ()
    #: adaptable layer-size lists whose ladder must keep the number of layers (adapt widens or
    #: narrows layers; it does not add or remove them)
    layer_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict, device: str | torch.device = "cpu", data: Any = None):
        self.config = self.validate_config(config)
        self.device = torch.device(device)
        self.rows: list[list[float]] = []        # accuracy matrix on the test split
        self.val_rows: list[list[float]] = []    # ... and on the validation split

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        """The config with defaults filled in: every key of `params`, `stream` (as the stream's
        config object) and `seed`; a ConfigError naming a bad key."""
        full = checked_params(cls.name, cls.params, config)
        full["stream"] = cls.validate_stream(config.get("stream") or {})
        full["seed"] = checked_seed(config)
        return full

    @classmethod
    def validate_stream(cls, stream: dict) -> Any:
        """The stream config this learner learns from; by default a task stream."""
        from lifelab.platform.streams import StreamConfig

        return StreamConfig.from_dict(stream, learner=cls.name)

    @classmethod
    def check_mutation(cls, key: str, values: list) -> None:
        """Refuse, before Ray starts, a PBT mutation of `key` over `values` that `adapt` cannot
        carry out. Override to add learner-specific limits (call super first)."""
        if key in cls.architecture_keys and key not in cls.adaptable_keys:
            can = (f"only {', '.join(cls.adaptable_keys)} can be mutated" if cls.adaptable_keys
                   else "it cannot adapt a checkpoint")
            raise ConfigError(f"search.mutations.{key} changes the architecture of learner "
                              f"'{cls.name}', and {can}: remove {key} from search.mutations")
        if key in cls.layer_keys:
            same_layer_count(cls, key, values)

    @abc.abstractmethod
    def step_round(self) -> dict[str, float]:
        """Bounded work (some steps, or one task) -> this round's metrics."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """True once the learner has nothing left to learn."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """A snapshot for bit-for-bit continuation (models, optimizers, RNG states, position)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s snapshot; this config's hyperparameters win (PBT)."""

    def adapt(self, state: dict, old_config: dict) -> None:
        """Load a state saved under `old_config`, whose adaptable keys differ from this config's.
        Learners without adaptable keys never get here (the spec check refuses the mutation)."""
        raise ConfigError(f"learner '{self.name}' cannot adapt a checkpoint across "
                          "architecture keys: remove them from search.mutations")


def checked_params(owner: str, params: dict[str, Param], config: dict) -> dict:
    """Every key of `params`, checked, defaults filled in; a key that is neither one of them
    nor common (COMMON_KEYS) is a ConfigError naming the valid ones."""
    check_keys(config, sorted(params), f"'{{key}}' is not a config key of learner '{owner}'",
               allowed=COMMON_KEYS)
    return {key: p.check(owner, key, config.get(key, p.default)) for key, p in params.items()}


def checked_seed(config: dict) -> int:
    seed = config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
        raise ConfigError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    return seed


def own_config(cls: type, config: dict) -> dict:
    """The keys of `config` that learner class `cls` has (a sweep over several learners
    samples every learner's keys into each trial's config)."""
    return {k: v for k, v in config.items() if k in cls.params or k in COMMON_KEYS}


def checked_old_config(learner: Learner, old_config: dict) -> dict:
    """The validated config a checkpoint was made under, for `learner.adapt`; a ConfigError if
    it differs from the learner's own in an architecture key that adapt cannot change."""
    old, new = learner.validate_config(own_config(type(learner), old_config)), learner.config
    for key in learner.architecture_keys:
        if key not in learner.adaptable_keys and old[key] != new[key]:
            raise ConfigError(f"{learner.name} cannot adapt a checkpoint across {key} "
                              f"{old[key]!r} -> {new[key]!r}: remove {key} from search.mutations "
                              f"(only {', '.join(learner.adaptable_keys)} can be mutated)")
    return old


def same_layer_count(cls: type, key: str, values: list) -> None:
    """A mutation ladder of layer-size lists must keep the number of layers (adapt widens or
    narrows layers; it does not add or remove them)."""
    if len({len(v) for v in values if isinstance(v, (list, tuple))}) > 1:
        raise ConfigError(f"search.mutations.{key}: learner '{cls.name}' cannot change the "
                          f"number of layers ({values!r}): give every {key} in the ladder the "
                          "same length")


def override_hyperparameters(optimizer: torch.optim.Optimizer, **values: float) -> None:
    """Write this config's hyperparameters into a loaded optimizer (whose state carries the
    ones it was saved with): under PBT the new config's learning rate must win."""
    for group in optimizer.param_groups:
        for key, value in values.items():
            if key in group:
                group[key] = value
