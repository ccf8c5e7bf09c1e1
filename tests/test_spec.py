"""Sweep specs: presets and YAML files load; every bad field is one ConfigError naming it."""

import copy
from importlib import resources

import pytest
import yaml

from lifelab.errors import ConfigError
from lifelab.platform.config import SweepSpec, parse_spec
from lifelab.searches.spec import load_spec, preset_names, spec_from_dict

DEMO = yaml.safe_load((resources.files("lifelab.searches") / "presets" / "demo.yaml").read_text())


def demo() -> dict:
    """The demo preset as a plain mapping, safe to edit."""
    return copy.deepcopy(DEMO)


def fifo() -> dict:
    """A valid spec with scheduler fifo (no mutations, no stop needed)."""
    d = demo()
    d["search"] = {"scheduler": "fifo", "metric": "val_acc_avg", "samples": 1}
    del d["stop"]
    return d


def config_error(data) -> str:
    with pytest.raises(ConfigError) as info:
        spec_from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- what loads ----------------------------------------------------------------------------------

def test_demo_preset_loads_and_validates():
    assert "demo" in preset_names()
    spec = load_spec("demo")
    assert isinstance(spec, SweepSpec)
    assert spec.name == "demo"
    assert spec.learner_names() == ["finetune", "joint"]
    assert spec.stream["tasks"] == 5
    assert spec.search.scheduler == "pbt" and spec.search.samples == 2
    assert spec.search.mutations == {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    assert spec.stop == {"rounds": 10}
    assert spec.resources == {"cpu": 1, "gpu": 0}


def test_resolved_spec_round_trips_through_yaml():
    """spec.yaml in a sweep dir is `to_dict()` dumped; resume re-validates it to the same spec."""
    spec = load_spec("demo")
    again = spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False)))
    assert again == spec


def test_yaml_file_loads_and_its_name_defaults_to_the_file_stem(tmp_path):
    data = fifo()
    del data["name"]
    path = tmp_path / "my-sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(str(path))
    assert spec.name == "my-sweep"
    assert spec.search.scheduler == "fifo"
    assert spec.config["hidden"] == [100, 100]


def test_a_name_in_the_file_wins_over_the_stem(tmp_path):
    path = tmp_path / "file.yml"
    path.write_text(yaml.safe_dump({**fifo(), "name": "named"}))
    assert load_spec(str(path)).name == "named"


def test_name_and_samples_overrides_apply_and_keep_the_rest():
    spec = load_spec("demo", name="other", samples=5)
    assert spec.name == "other"
    assert spec.search.samples == 5
    assert spec.search.scheduler == "pbt" and spec.search.perturbation_interval == 2
    assert spec.search.mutations == DEMO["search"]["mutations"]


def test_samples_override_on_a_spec_without_search(tmp_path):
    data = fifo()
    del data["search"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_spec(str(path), samples=3).search.samples == 3


def test_parse_spec_fills_defaults():
    spec = parse_spec({"learner": "finetune"}, "fallback")
    assert spec.name == "fallback"
    assert spec.search.scheduler == "fifo" and spec.search.samples == 1
    assert spec.resources == {"cpu": 1, "gpu": 0} and spec.seed == 0


def test_valid_mutation_ladders_are_accepted():
    """A mutation list is an ordered ladder of values, each of them checked on its own."""
    d = demo()
    d["search"]["mutations"] = {"batch_size": [16, 32, 64], "lr": [1e-4, 1e-3, 1e-2],
                                "momentum": {"uniform": [0.0, 0.9]}}
    spec = spec_from_dict(d)
    assert spec.search.mutations["batch_size"] == [16, 32, 64]


def test_an_int_is_accepted_where_a_float_goes():
    d = fifo()
    d["config"]["lr"] = 1
    assert spec_from_dict(d).config["lr"] == 1


# -- every bad field: one ConfigError naming it ------------------------------------------------

def _set(path: str, value):
    """An edit that sets a dotted key of the spec (creating mappings on the way)."""
    def edit(d):
        *parents, last = path.split(".")
        for key in parents:
            d = d.setdefault(key, {})
        d[last] = value
    return edit


def _all(*edits):
    """Several edits applied in turn."""
    def edit(d):
        for one in edits:
            one(d)
    return edit


def _drop(*paths: str):
    def edit(d):
        for path in paths:
            *parents, last = path.split(".")
            node = d
            for key in parents:
                node = node[key]
            del node[last]
    return edit


def _both(*edits):
    def edit(d):
        for e in edits:
            e(d)
    return edit


BAD = [
    # unknown learner
    ("learner-name", demo, _set("learner", "nope"),
     ["unknown learner 'nope'", "use one of", "finetune"]),
    ("learner-in-choice", demo, _set("learner", {"choice": ["finetune", "nope"]}),
     ["unknown learner 'nope'", "use one of", "finetune"]),
    ("learner-not-a-name", demo, _set("learner", {"choice": ["finetune", 3]}),
     ["learner 3", "learner name"]),
    ("learner-missing", demo, _drop("learner"), ["'learner'", "lifelab list"]),
    # unknown keys
    ("config-key", demo, _set("config.hiddn", [10]),
     ["config.hiddn", "not a config key of learner", "hidden"]),
    ("top-level-key", demo, _set("epochs", 3), ["spec.epochs", "not a known key", "stop"]),
    ("search-key", demo, _set("search.sheduler", "pbt"),
     ["search.sheduler", "not a known key", "scheduler"]),
    ("stream-key", demo, _set("stream.task", 3), ["stream.task", "tasks"]),
    ("stop-key", demo, _set("stop.epochs", 3), ["stop.epochs", "rounds"]),
    ("config-seed-ignored", demo, _set("config.seed", 5), ["config.seed", "top level"]),
    ("config-stream-ignored", demo, _set("config.stream", {"tasks": 2}),
     ["config.stream", "top level"]),
    # wrong type
    ("lr-str", demo, _set("config.lr", "fast"), ["config.lr", "must be a number", "'fast'"]),
    ("batch-size-float", demo, _set("config.batch_size", 1.5),
     ["config.batch_size", "must be an integer", "1.5"]),
    ("batch-size-bool", demo, _set("config.batch_size", True),
     ["config.batch_size", "must be an integer", "True"]),
    ("lr-bool", demo, _set("config.lr", True), ["config.lr", "must be a number"]),
    ("optimizer-choice", demo, _set("config.optimizer", "adagrad"),
     ["config.optimizer", "adam, sgd"]),
    ("stream-tasks-str", demo, _set("stream.tasks", "five"), ["stream.tasks", "integer"]),
    ("stream-tasks-bool", demo, _set("stream.tasks", True), ["stream.tasks", "integer"]),
    ("stream-not-mapping", demo, _set("stream", "permuted"), ["stream", "mapping"]),
    ("search-not-mapping", demo, _set("search", [1, 2]), ["search", "mapping"]),
    ("seed-str", demo, _set("seed", "zero"), ["seed", "integer"]),
    # negative / zero sizes
    ("hidden-negative", demo, _set("config.hidden", [100, -5]),
     ["config.hidden", "positive integers", "-5"]),
    ("hidden-empty", demo, _set("config.hidden", []), ["config.hidden", "non-empty"]),
    ("batch-size-negative", demo, _set("config.batch_size", -1),
     ["config.batch_size", "> 0", "-1"]),
    ("stream-tasks-negative", demo, _set("stream.tasks", -1),
     ["stream.tasks", "between 1 and 100", "-1"]),
    ("stream-steps-zero", demo, _set("stream.steps_per_task", 0), ["stream.steps_per_task"]),
    ("samples-zero", demo, _set("search.samples", 0), ["search.samples", ">= 1", "0"]),
    ("stop-rounds-negative", demo, _set("stop.rounds", -3), ["stop.rounds", ">= 1"]),
    ("cpu-zero", demo, _set("resources.cpu", 0), ["resources.cpu", "> 0", "0"]),
    ("cpu-negative", demo, _set("resources.cpu", -1), ["resources.cpu", "> 0", "-1"]),
    ("gpu-negative", demo, _set("resources.gpu", -0.5), ["resources.gpu", ">= 0"]),
    ("resources-key", demo, _set("resources.tpu", 1), ["resources.tpu", "cpu, gpu"]),
    # empty search spaces
    ("choice-empty", demo, _set("config.hidden", {"choice": []}),
     ["config.hidden", "empty search space"]),
    ("grid-empty", demo, _set("config.lr", {"grid": []}), ["config.lr", "empty search space"]),
    ("learner-grid-empty", demo, _set("learner", {"grid": []}),
     ["learner", "empty search space"]),
    # bad distributions
    ("loguniform-zero", demo, _set("config.lr", {"loguniform": [0, 1]}),
     ["config.lr", "loguniform needs low > 0"]),
    ("loguniform-negative", demo, _set("config.lr", {"loguniform": [-1, 1]}),
     ["config.lr", "low > 0"]),
    ("uniform-reversed", demo, _set("config.momentum", {"uniform": [0.9, 0.1]}),
     ["config.momentum", "low < high"]),
    ("uniform-equal", demo, _set("config.momentum", {"uniform": [0.5, 0.5]}),
     ["config.momentum", "low < high"]),
    ("uniform-one-bound", demo, _set("config.momentum", {"uniform": [0.5]}),
     ["config.momentum", "[low, high]"]),
    ("randint-floats", demo, _set("config.batch_size", {"randint": [16.5, 64]}),
     ["config.batch_size", "randint takes integer bounds"]),
    ("distribution-edge-invalid", demo, _set("config.momentum", {"uniform": [-1.0, 0.5]}),
     ["config.momentum", ">= 0", "-1.0"]),
    ("uniform-for-int", demo, _set("config.batch_size", {"uniform": [16, 64]}),
     ["config.batch_size", "must be an integer"]),
    ("choice-value-invalid", demo, _set("config.hidden", {"choice": [[50], [0]]}),
     ["config.hidden", "positive integers"]),
    # scheduler / searcher combinations
    ("scheduler-unknown", demo, _set("search.scheduler", "hyperband"),
     ["search.scheduler 'hyperband' is unknown", "fifo, pbt, pb2, asha"]),
    ("pb2-over-a-ladder", demo, _set("search.scheduler", "pb2"),
     ["search.mutations.lr: pb2 models continuous bounds only", "{uniform: [low, high]}"]),
    ("pb2-over-a-categorical", demo, _all(_set("search.scheduler", "pb2"),
                                          _set("search.mutations", {"lr": {"choice": [0.1]}})),
     ["search.mutations.lr: pb2 models continuous bounds only", "need scheduler pbt"]),
    ("grid-searcher-over-a-range", fifo, _set("search.searcher", "grid"),
     ["config.lr: search.searcher grid enumerates values", "{grid: [...]}"]),
    ("searcher-unknown", fifo, _set("search.searcher", "tpe"),
     ["search.searcher 'tpe' is unknown", "random, optuna"]),
    ("mode-unknown", demo, _set("search.mode", "maximise"), ["search.mode", "max, min"]),
    ("pbt-without-mutations", demo, _drop("search.mutations"),
     ["search.scheduler pbt needs search.mutations"]),
    ("pbt-with-optuna", demo, _set("search.searcher", "optuna"),
     ["search.scheduler pbt", "search.searcher: random"]),
    ("optuna-with-grid", fifo, _set("search.searcher", "optuna"),
     ["search.searcher optuna cannot take grid (learner)", "{choice: [...]}"]),
    ("mutations-for-fifo", demo, _set("search.scheduler", "fifo"),
     ["search.mutations is only used by schedulers pbt and pb2"]),
    ("synch-not-bool", demo, _set("search.synch", "yes"), ["search.synch must be true or false"]),
    ("synch-for-fifo", fifo, _set("search.synch", True),
     ["search.synch is only used by schedulers pbt and pb2"]),
    ("asha-without-stop", fifo, _set("search.scheduler", "asha"),
     ["search.scheduler asha needs stop.rounds", "stop: {rounds: N}"]),
    ("pbt-without-stop", demo, _drop("stop"), ["search.scheduler pbt needs stop.rounds"]),
    ("quantile-out-of-range", demo, _set("search.quantile_fraction", 0.9),
     ["search.quantile_fraction", "<= 0.5"]),
    # metric
    ("metric-not-reported", demo, _set("search.metric", "accuracy"),
     ["search.metric 'accuracy'", "not reported by learner 'finetune'", "acc_avg"]),
    ("metric-empty", demo, _set("search.metric", ""), ["search.metric"]),
    # names
    ("name-slash", demo, _set("name", "a/b"), ["name 'a/b'", "letters, digits"]),
    ("name-dots", demo, _set("name", ".."), ["name '..'"]),
    ("name-not-str", demo, _set("name", 7), ["name 7"]),
    # mutations whose edge values the learner refuses
    ("mutation-loguniform-zero", demo, _set("search.mutations.lr", {"loguniform": [0, 1]}),
     ["search.mutations.lr", "loguniform needs low > 0"]),
    ("mutation-ladder-zero", demo, _set("search.mutations.batch_size", [0, 64]),
     ["search.mutations.batch_size", "> 0", "got 0"]),
    ("mutation-ladder-wrong-type", demo, _set("search.mutations.batch_size", [16, "big"]),
     ["search.mutations.batch_size", "must be an integer", "'big'"]),
    ("mutation-ladder-empty", demo, _set("search.mutations.batch_size", []),
     ["search.mutations.batch_size", "empty"]),
    # config.lr also varies: the mutation's own values must still be checked
    ("mutation-shadowed-by-config", demo, _set("search.mutations.lr", {"uniform": [-1.0, 1.0]}),
     ["search.mutations.lr", "> 0", "-1.0"]),
    ("mutation-grid", demo, _set("search.mutations.lr", {"grid": [1e-3]}),
     ["search.mutations.lr", "choice"]),
    ("mutation-unknown-key", demo, _set("search.mutations.hiddn", [10, 20]),
     ["search.mutations.hiddn", "not a config key"]),
    ("mutation-architecture-without-adapt", demo,
     _set("search.mutations.hidden", [[50, 50], [100, 100]]),
     ["search.mutations.hidden", "cannot adapt"]),
    ("mutations-not-mapping", demo, _set("search.mutations", ["lr"]),
     ["search.mutations", "mapping"]),
    ("config-not-mapping", demo, _set("config", [1]), ["config", "mapping"]),
    ("lr-negative-two-learners", demo,
     _both(_set("learner", {"choice": ["finetune", "joint"]}), _set("config.lr", -0.1)),
     ["config.lr", "> 0"]),
]


@pytest.mark.parametrize("base, edit, expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_field_is_one_config_error_naming_it(base, edit, expected):
    data = base()
    spec_from_dict(data)          # the starting point is valid: the edit alone makes it bad
    edit(data)
    message = config_error(data)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_spec_that_is_not_a_mapping_is_a_config_error():
    for data in (None, ["learner", "finetune"], "finetune"):
        assert "a spec must be a mapping" in config_error(data)


# -- YAML files --------------------------------------------------------------------------------

def load_error(source: str, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_spec(source, **overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_preset_names_the_presets():
    message = load_error("no-such-preset")
    assert "'no-such-preset' is neither a preset nor a spec file" in message
    assert "demo" in message


def test_missing_yaml_file(tmp_path):
    path = tmp_path / "missing.yaml"
    message = load_error(str(path))
    assert str(path) in message and "does not exist" in message


def test_malformed_yaml_file_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nlearner: [finetune\nconfig: {lr: 0.1}\n")
    message = load_error(str(path))
    assert str(path) in message and "is not valid YAML" in message
    assert "at line" in message and "fix the syntax" in message


def test_yaml_file_that_is_a_list_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- learner: finetune\n- learner: joint\n")
    message = load_error(str(path))
    assert "must be a YAML mapping" in message and "learner" in message


def test_empty_yaml_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert "must be a YAML mapping" in load_error(str(path))


def test_yaml_file_that_is_not_text(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    message = load_error(str(path))
    assert str(path) in message and "cannot be read" in message


def test_a_directory_is_not_a_spec_file(tmp_path):
    message = load_error(str(tmp_path))
    assert "is a directory" in message


def test_bad_field_in_a_yaml_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("learner: finetune\nconfig: {lr: fast}\n")
    assert "config.lr" in load_error(str(path))


def test_bad_overrides():
    assert "search.samples" in load_error("demo", samples=-1)
    assert "search.samples" in load_error("demo", samples=0)
    assert "name 'a/b'" in load_error("demo", name="a/b")


def test_samples_override_on_a_non_mapping_search_is_a_config_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("learner: finetune\nsearch: [1, 2]\n")
    assert "search must be a mapping" in load_error(str(path), samples=3)
