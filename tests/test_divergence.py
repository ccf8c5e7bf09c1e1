"""A trial whose loss diverges: under PBT it stays in the population, reports the worst value of
the metric without training its broken weights, and is sent to a healthy donor, from where it
trains again; under a scheduler that cannot rescue it (FIFO) it stops as DIVERGED."""

import contextlib
import io
import json
import math
from types import SimpleNamespace

import pandas as pd

from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict

STREAM = {"kind": "split", "tasks": 1, "scenario": "class", "steps_per_task": 60}
DIVERGING = {"learner": "finetune", "stream": STREAM, "hidden": [8], "steps_per_round": 10,
             "optimizer": "sgd", "lr": 1e10, "seed": 0}
RESCUE = {"metric": "val_acc_avg", "mode": "max", "patience": 3}


def trainable(config):
    from lifelab.trainables.trainable import LearnerTrainable

    return LearnerTrainable(config=config)


def test_a_rescuable_member_reports_the_worst_value_and_trains_no_more(ray_session,
                                                                       one_thread_after):
    member = trainable({**DIVERGING, "lifelab_rescue": RESCUE})
    first = member.train()
    assert not math.isfinite(first["train_loss"]) and first["val_acc_avg"] == -math.inf
    assert not first["done"] and "lifelab_stop" not in first
    [event] = first["lifelab_events"]
    assert event["kind"] == "diverged" and event["iteration"] == 1

    def no_training():
        raise AssertionError("trained on diverged weights")

    member.learner.step_round = no_training
    for _ in range(2):
        waiting = member.train()
        assert waiting["val_acc_avg"] == -math.inf and not waiting["done"]
    last = member.train()                  # not rescued within `patience` rounds: it stops
    assert last["done"] and "no healthy member took it over by round 4" in \
        last["lifelab_stop"]


def test_a_member_still_diverged_at_the_sweeps_last_round_ends_as_diverged(ray_session,
                                                                           one_thread_after):
    member = trainable({**DIVERGING, "lifelab_rescue": {**RESCUE, "patience": 9,
                                                        "last_round": 2}})
    assert not member.train()["done"]
    last = member.train()
    assert last["done"] and "no healthy member took it over by round 2" in \
        last["lifelab_stop"]
    at_once = trainable({**DIVERGING, "lifelab_rescue": {**RESCUE, "last_round": 1}}).train()
    assert at_once["done"] and at_once["lifelab_stop"].endswith("lower the learning rate")


def test_under_mode_min_the_worst_value_is_plus_infinity(ray_session, one_thread_after):
    member = trainable({**DIVERGING, "lifelab_rescue": {**RESCUE, "metric": "train_loss",
                                                        "mode": "min"}})
    assert member.train()["train_loss"] == math.inf


def test_a_donors_checkpoint_rescues_it_and_its_own_keeps_it_diverged(ray_session, tmp_path,
                                                                      one_thread_after):
    donor = trainable({**DIVERGING, "lr": 1e-2, "lifelab_rescue": RESCUE})
    donor._trial_info = SimpleNamespace(trial_id="donor_00001")
    donor.train()
    (tmp_path / "donor").mkdir()
    donor.save_checkpoint(str(tmp_path / "donor"))
    member = trainable({**DIVERGING, "lifelab_rescue": RESCUE})
    member.train()
    (tmp_path / "own").mkdir()
    member.save_checkpoint(str(tmp_path / "own"))
    restored = trainable({**DIVERGING, "lifelab_rescue": RESCUE})
    restored.load_checkpoint(str(tmp_path / "own"))   # after a crash: still awaiting rescue
    restored.learner.step_round = None
    assert restored.train()["val_acc_avg"] == -math.inf
    # PBT's exploit: the donor's config (explored) on the same actor, then its checkpoint
    healthy = {**DIVERGING, "lr": 1e-2, "lifelab_rescue": RESCUE}
    member.config = healthy
    member.reset_config(healthy)
    member.load_checkpoint(str(tmp_path / "donor"))
    again = member.train()
    assert math.isfinite(again["train_loss"]) and 0 <= again["val_acc_avg"] <= 1
    assert [e["kind"] for e in again["lifelab_events"]] == ["exploit"]


def test_without_a_rescuing_scheduler_it_stops_at_once(ray_session, one_thread_after):
    result = trainable(DIVERGING).train()
    assert result["done"] and "lower the learning rate" in result["lifelab_stop"]


def sweep(short_tmp, scheduler: str, **search):
    spec = spec_from_dict({
        "name": f"diverge-{scheduler}", "learner": "finetune", "stream": STREAM,
        "config": {"lr": {"grid": [1e-2, 1e10]}, "optimizer": "sgd", "hidden": [8],
                   "steps_per_round": 10},
        "search": {"scheduler": scheduler, **search}, "stop": {"rounds": 6}, "loggers": []})
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        uri, _ = run_sweep(spec, storage=short_tmp, progress_s=3600)
    trials = pd.read_parquet(f"{uri}/results/trials")
    trials["lr"] = [json.loads(c)["lr"] for c in trials.config_json]
    events = pd.read_parquet(f"{uri}/results/events")
    return uri, trials, events, printed.getvalue()


def test_under_pbt_the_diverged_member_is_exploited_and_every_member_lives(ray_session,
                                                                           short_tmp):
    # synch: the member cannot run through its patience before the donor reaches a perturbation
    uri, trials, events, _ = sweep(short_tmp, "pbt", perturbation_interval=2, synch=True,
                                   quantile_fraction=0.5,
                                   mutations={"lr": {"loguniform": [1e-3, 1e-2]}})
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"}
    assert (trials.iterations == 6).all()
    member = events[events.kind == "diverged"].trial_id.unique().tolist()
    assert len(member) == 1
    own = events[events.trial_id == member[0]].sort_values("time")
    assert own.kind.tolist()[0] == "diverged" and "exploit" in own.kind.tolist()
    diverged = json.loads(own.old_config_json.iloc[0])["lr"]
    assert diverged == 1e10 and trials.set_index("trial_id").lr[member[0]] < 1
    metrics = pd.read_parquet(f"{uri}/results/metrics")
    last = (metrics[(metrics.trial_id == member[0]) & (metrics.name == "train_loss")]
            .sort_values("iteration").value.iloc[-1])
    assert math.isfinite(last)                  # it trains again from the donor's state


def test_under_fifo_the_diverged_trial_stops_as_diverged(ray_session, short_tmp):
    _, trials, events, printed = sweep(short_tmp, "fifo")
    trials = trials.set_index("lr")
    assert trials.status[1e-2] == "TERMINATED" and trials.iterations[1e-2] == 6
    assert trials.status[1e10] == "DIVERGED" and trials.iterations[1e10] == 1
    assert "lower the learning rate" in trials.error[1e10]
    assert events.kind.tolist() == ["diverged"]
    table = printed.strip().splitlines()
    assert any(line.split()[:2] == [trials.trial_id[1e10], "DIVERGED"] for line in table)
