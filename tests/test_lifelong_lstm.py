"""The trial_and_error stream, its exact ceiling, and the lifelong_lstm learner (issue 8)."""

import dataclasses
import functools
import itertools
import random

import pytest
import torch
from outcomes import mean, over_seeds, shown

from lifelab.analysis.ceilings import bayes_curve, ideal_curve
from lifelab.errors import ConfigError
from lifelab.learners.lifelong_lstm import LifelongLSTM, recovery_steps
from lifelab.platform.data import load_dataset
from lifelab.platform.episodes import EpisodeConfig, EpisodeSampler
from lifelab.platform.streams import StreamConfig, hold_out, stream_config
from lifelab.searches.spec import load_spec, spec_from_dict

GROUPS = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
TINY = {"hidden": [16], "feature_size": 8, "b_size": 8, "c_size": 8, "batch_episodes": 3,
        "batches_per_round": 1, "eval_episodes": 4, "truncation": 1,
        "stream": {"kind": "trial_and_error", "groups": [[0, 1, 2], [3, 4]], "tries": 2,
                   "presentations": 2}}
WIDE = {"hidden": [24], "b_size": 13, "c_size": 11}    # TINY's sizes, widened (adapt)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k").flat()


# -- the episodes -------------------------------------------------------------------------------

def test_episodes_shuffle_answers_within_groups_and_show_every_class_once_per_round(mnist):
    config = EpisodeConfig(groups=GROUPS, presentations=3)
    ep = EpisodeSampler(config, mnist, "train").sample(64, torch.Generator().manual_seed(0))
    assert ep.x.shape == (64, 3, 10, 784)
    # every round shows each class once
    assert (ep.label.sort(dim=2).values == torch.arange(10)).all()
    group_of = torch.tensor([g for g, group in enumerate(GROUPS) for _ in group])
    assert (group_of[ep.answer] == group_of[ep.label]).all()
    assert (ep.group == group_of[ep.label]).all()
    # the mapping is fixed within an episode (no switch) ...
    by_class = torch.zeros(64, 3, 10, dtype=torch.long).scatter_(2, ep.label, ep.answer)
    assert (by_class == by_class[:, :1]).all()
    # ... a bijection within each group, drawn afresh per episode (4! 3! 3! = 864 possible)
    assert (by_class[:, 0].sort(dim=1).values == torch.arange(10)).all()
    assert len({tuple(row.tolist()) for row in by_class[:, 0]}) > 40
    # images are training images of the class shown
    match = (mnist.x_train[:, None, :] == ep.x[0, 0][None, :, :]).all(dim=2)   # (4000, 10)
    assert match.any(dim=0).all()
    assert all((mnist.y_train[match[:, i]] == ep.label[0, 0, i]).all() for i in range(10))


def test_switch_changes_every_answer_from_the_switch_round_on(mnist):
    config = EpisodeConfig(groups=GROUPS, presentations=4, switch_at=3)
    ep = EpisodeSampler(config, mnist, "test").sample(32, torch.Generator().manual_seed(1),
                                                      switch_fraction=0.5)
    by_class = torch.zeros(32, 4, 10, dtype=torch.long).scatter_(2, ep.label, ep.answer)
    assert ep.switch_round == 2 and 0 < int(ep.switched.sum()) < 32
    same = by_class[:, 1] == by_class[:, 0]
    assert same.all()
    changed = by_class[:, 2] != by_class[:, 1]
    assert changed[ep.switched].all() and not changed[~ep.switched].any()
    assert (by_class[:, 3] == by_class[:, 2]).all()


@pytest.mark.parametrize("bad, key", [
    ({"groups": [[0, 1], [1, 2]]}, "stream.groups repeats"),
    ({"groups": [[0], [1]]}, "stream.groups has no group of 2"),
    ({"groups": []}, "stream.groups must be non-empty"),
    ({"groups": [[0, "a"]]}, "stream.groups holds a label"),
    ({"tries": 0}, "stream.tries must be an integer between 1 and 10"),
    ({"presentations": 11}, "stream.presentations must be an integer between 1 and 10"),
    ({"presentations": 4, "switch_at": 5}, "stream.switch_at must be an integer between 2 and 4"),
    ({"tasks": 3}, "stream.tasks is not a key of a trial_and_error stream"),
    ({"dataset": "svhn"}, "stream.dataset 'svhn' is unknown"),
])
def test_bad_episode_stream_is_one_line_config_error_naming_the_key(bad, key):
    with pytest.raises(ConfigError) as err:
        stream_config({"kind": "trial_and_error", **bad})
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_groups_beyond_the_dataset_labels_are_rejected(mnist):
    config = stream_config({"kind": "trial_and_error", "groups": [[0, 12]]})
    for refuse in (config.check_dataset, lambda data: EpisodeSampler(config, data)):
        with pytest.raises(ConfigError, match="names label 12 .* fix stream.groups"):
            refuse(mnist)                             # the driver's check, and the sampler


def test_a_continual_learner_cannot_use_an_episode_stream(mnist):
    assert isinstance(stream_config({"kind": "trial_and_error"}), EpisodeConfig)
    with pytest.raises(ConfigError, match="learns from a task stream, not stream.kind "
                                          "trial_and_error: use one of permuted"):
        StreamConfig.from_dict({"kind": "trial_and_error"})
    spec = {"learner": "hnet", "stream": {"kind": "trial_and_error"}}
    with pytest.raises(ConfigError, match="learner 'hnet' learns from a task stream"):
        spec_from_dict(spec)                          # caught before any trial starts


# -- the ceiling --------------------------------------------------------------------------------

def explicit_curve(n: int, tries: int, presentations: int) -> tuple[list[float], list[float]]:
    """The ideal learner's expected curve by a DP over explicit sets (truth: answer i is class
    i's, by symmetry): no exchangeability argument, just the rules, one class after another."""
    @functools.cache
    def value(r, waiting, state):
        # state: per class (confirmed, frozenset of wrong answers); returns per-round sums
        zero = (tuple([0.0] * presentations), tuple([0.0] * presentations))
        if r == presentations:
            return zero
        if not waiting:
            return value(r + 1, frozenset(range(n)), state)
        acc, used = [0.0] * presentations, [0.0] * presentations
        for i in waiting:
            p_pick = 1.0 / len(waiting)
            for prob, first, n_tries, new in outcomes(i, state):
                a, u = value(r, waiting - {i}, new)
                w = p_pick * prob
                for k in range(presentations):
                    acc[k] += w * a[k]
                    used[k] += w * u[k]
                acc[r] += w * first
                used[r] += w * n_tries
        return tuple(acc), tuple(used)

    def outcomes(i, state):
        confirmed, wrong = state[i]
        if confirmed:
            return [(1.0, 1.0, 1, state)]
        taken = {j for j, (c, _) in enumerate(state) if c and j != i}
        out = []

        def go(t, wrong_i, prob):
            candidates = [a for a in range(n) if a not in taken and a not in wrong_i]
            for a in candidates:
                q = prob / len(candidates)
                if a == i:
                    new = tuple((True, w) if j == i else (s, w) for j, (s, w) in enumerate(state))
                    out.append((q, 1.0 if t == 0 else 0.0, t + 1, new))
                elif t + 1 < tries:
                    go(t + 1, wrong_i | {a}, q)
                else:
                    new = tuple((s, wrong_i | {a}) if j == i else (s, w)
                                for j, (s, w) in enumerate(state))
                    out.append((q, 0.0, tries + 1, new))
        go(0, wrong, 1.0)
        return out

    start = tuple((False, frozenset()) for _ in range(n))
    acc, used = value(0, frozenset(range(n)), start)
    return [a / n for a in acc], [u / n for u in used]


@pytest.mark.parametrize("n, tries, presentations", [(3, 1, 3), (3, 2, 3), (4, 1, 2), (4, 2, 3),
                                                     (4, 3, 2)])
def test_ceiling_equals_a_dynamic_program_over_explicit_sets(n, tries, presentations):
    curve = ideal_curve((tuple(range(n)),), tries, presentations)
    acc, used = explicit_curve(n, tries, presentations)
    assert curve["acc"] == pytest.approx(acc, abs=1e-12)
    assert curve["tries"] == pytest.approx(used, abs=1e-12)


def posterior_best(label, answers, heard):
    """The answers of highest posterior probability for `label` given what was heard:
    heard[(class, answer)] is True (right) or False (wrong); uniform prior over assignments."""
    classes = sorted({c for c, _ in heard} | {label})
    counts = dict.fromkeys(answers, 0)
    for perm in itertools.permutations(answers, len(classes)):
        assign = dict(zip(classes, perm, strict=True))
        if all((assign[c] == a) == ok for (c, a), ok in heard.items()):
            counts[assign[label]] += 1
    best = max(counts.values())
    return [a for a in answers if counts[a] == best]


@pytest.mark.parametrize("learner", ["ideal", "bayes"])
def test_ceilings_match_learners_simulated_on_the_real_sampler(mnist, learner):
    groups, tries, presentations, n = GROUPS, 1, 3, 1000
    config = EpisodeConfig(groups=groups, tries=tries, presentations=presentations)
    ep = EpisodeSampler(config, mnist, "test").sample(n, torch.Generator().manual_seed(2))
    group_of = {c: g for g, group in enumerate(groups) for c in group}
    rng = random.Random(0)
    right = [0] * presentations
    for b in range(ep.batch):
        heard: list[dict] = [{} for _ in groups]      # per group: (class, answer) -> right?
        for r in range(presentations):
            for label, answer in zip(ep.label[b, r].tolist(), ep.answer[b, r].tolist(),
                                     strict=True):
                g = group_of[label]
                for t in range(tries):
                    known = [a for (c, a), ok in heard[g].items() if ok and c == label]
                    if known:
                        options = known
                    elif learner == "bayes":
                        options = posterior_best(label, groups[g], heard[g])
                    else:                                  # not confirmed elsewhere, not wrong
                        options = [a for a in groups[g] if (label, a) not in heard[g]
                                   and not any(ok and x == a for (_, x), ok in heard[g].items())]
                    guess = rng.choice(options)
                    heard[g][(label, guess)] = guess == answer
                    if guess == answer:
                        right[r] += t == 0
                        break
    measured = [k / (ep.batch * 10) for k in right]
    curve = ideal_curve if learner == "ideal" else bayes_curve
    exact = curve(tuple(map(tuple, groups)), tries, presentations)["acc"]
    # 10,000 presentations per point: a standard error below 0.005
    assert measured == pytest.approx(exact, abs=0.02)
    assert exact[0] < exact[1] < exact[2] <= 1.0


def test_the_bayes_learner_is_never_below_the_ideal_one_and_reads_the_matching():
    for groups, tries in [(((0, 1, 2, 3), (4, 5, 6)), 1), (((0, 1, 2, 3),), 2)]:
        ideal, bayes = ideal_curve(groups, tries, 4), bayes_curve(groups, tries, 4)
        assert all(b >= i - 1e-12 for b, i in zip(bayes["acc"], ideal["acc"], strict=True))
        assert bayes["acc"][0] > ideal["acc"][0] + 0.05
    with pytest.raises(ValueError, match="at most"):
        bayes_curve((tuple(range(7)),), 1, 1)


def test_ceiling_chance_and_first_presentation_with_one_try():
    curve = ideal_curve(((0, 1, 2, 3), (4, 5)), 1, 1)
    # with one try and nothing known, the first presentation of the first class of a group
    # is 1/n; chance is the group-averaged 1/n: (4 * 1/4 + 2 * 1/2) / 6
    assert curve["chance"] == pytest.approx(2 / 6)
    assert curve["acc"][0] > curve["chance"]      # later classes profit from confirmed answers


# -- the learner --------------------------------------------------------------------------------

def test_bad_learner_config_is_one_line_config_error_naming_the_fix():
    cases = [({"inner_steps": -1}, "inner_steps' must be an integer between 0 and 20"),
             ({"fast_weights": "no"}, "fast_weights' must be true or false"),
             ({"inner_grad": "adam"}, "use one of closed_form, torch_func"),
             ({"lr_meta": 1.0}, "'lr_meta' is not a config key of learner 'lifelong_lstm'"),
             ({"stream": {"kind": "permuted"}}, "needs stream.kind trial_and_error"),
             ({"stream": {"kind": "trial_and_error", "tries": "3"}}, "stream.tries must be")]
    for config, message in cases:
        with pytest.raises(ConfigError) as err:
            LifelongLSTM.validate_config(config)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_round_reports_the_documented_metrics(mnist):
    learner = LifelongLSTM({**TINY, "rounds": 2}, data=mnist)
    metrics = learner.step_round()
    scored = {"acc_first_try", "acc_presentation_1", "acc_presentation_2", "acc_early",
              "mean_tries", "improvement"}
    expected = {*scored, *(f"val_{name}" for name in scored), "train_loss"}
    assert set(metrics) == expected and set(metrics) <= set(LifelongLSTM.metrics)
    assert 0 <= metrics["acc_first_try"] <= 1 and 1 <= metrics["mean_tries"] <= 3
    assert learner.rows == [] and not learner.done
    learner.step_round()
    assert learner.done
    with pytest.raises(RuntimeError, match="budget"):
        learner.step_round()


def test_resume_is_bit_for_bit(mnist):
    config = {**TINY, "stream": {**TINY["stream"], "switch_at": 2}}
    a = LifelongLSTM(config, data=mnist)
    a.step_round()
    state = a.state_dict()
    expected = a.step_round()
    b = LifelongLSTM(config, data=mnist)
    b.load_state_dict(state)
    assert b.step_round() == expected           # every metric, exactly (recovery included)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_closed_form_and_torch_func_inner_gradients_agree_meta_gradients_included(mnist):
    grads = []
    for how in ("closed_form", "torch_func"):
        learner = LifelongLSTM({**TINY, "inner_grad": how, "inner_steps": 2}, data=mnist)
        ep = learner.eval_set
        out = learner._run_rounds(ep, range(1), learner._initial_state(ep.batch))
        (out["ce"] / out["count"]).backward()
        grads.append({n: p.grad.clone() for n, p in learner.model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "log_inner_gain" in grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def with_answers_relabelled(ep):
    """The same episodes (images, order) with the answers of group [0, 1, 2] rotated."""
    rotate = torch.tensor([1, 2, 0, 3, 4])
    return dataclasses.replace(ep, answer=rotate[ep.answer])


@pytest.mark.parametrize("ablation, remembers", [
    ({}, True),
    ({"type_c": False}, True),                    # memory in the fast weights alone
    ({"fast_weights": False}, True),              # memory in Type C alone
    ({"type_c": False, "fast_weights": False}, False),   # no memory across presentations
    ({"feedback": False}, False),                 # memory, but nothing heard to remember
])
def test_what_each_ablation_can_carry_from_one_presentation_to_the_next(mnist, ablation,
                                                                        remembers):
    """First-try scores on identical images when the answers differ: a learner that carries
    what it heard across presentations scores differently in the next round; an ablation
    without that path scores exactly the same (without feedback it goes through every try,
    since stopping at the right answer would tell it)."""
    config = {**TINY, **ablation}
    learner = LifelongLSTM(config, data=mnist)
    ep = learner.eval_set
    a, b = learner.run_episodes(ep), learner.run_episodes(with_answers_relabelled(ep))
    assert torch.equal(a["scores"][:, 0, 0], b["scores"][:, 0, 0])   # nothing heard yet
    assert torch.equal(a["scores"][:, 1], b["scores"][:, 1]) != remembers


def test_meta_training_teaches_it_to_remember_what_it_heard(mnist):
    """A few seconds of meta-training on 2-answer groups: the first try at a digit's second
    presentation goes from chance (0.5) to well above. (Without feedback it cannot: its guesses
    do not depend on the answers at all, see the ablation test.)"""
    def before_after(seed):
        small = {"hidden": [32], "feature_size": 16, "b_size": 16, "c_size": 16, "lr": 0.01,
                 "batch_episodes": 16, "batches_per_round": 10, "eval_episodes": 32,
                 "truncation": 3, "seed": seed,
                 "stream": {"kind": "trial_and_error", "groups": [[0, 1], [2, 3]], "tries": 1,
                            "presentations": 3, "seed": seed}}
        learner = LifelongLSTM(small, data=mnist)
        before = learner.evaluate()["acc_presentation_2"]
        for _ in range(5):
            metrics = learner.step_round()
        return before, metrics["acc_presentation_2"]

    before, after = zip(*over_seeds(before_after), strict=True)
    # untrained: 0.5 in expectation (answers are drawn per episode), measured on 128 first
    # tries (standard error 0.044); seeds 0-9: 0.50-0.56
    assert all(b == pytest.approx(0.5, abs=0.15) for b in before), shown(before)
    # after 3 rounds seeds 0-7 reached only 0.72-0.82 (too short a budget for 0.7 on each);
    # after 5, seeds 0-9: 0.73-0.97 (mean 0.87, sd 0.07: the mean of three minus 3 standard
    # errors 0.76)
    assert mean(after) > 0.75, shown(after)


def test_recovery_steps_counts_presentations_until_a_right_first_try():
    first = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])   # (B=1, R=3, C=2)
    # switch before round 1: class 0 right at round 2 (2 steps), class 1 never (2 left + 1)
    assert recovery_steps(first, 1) == pytest.approx((2 + 3) / 2)


def test_trainable_drives_the_learner_and_spec_validates(ray_session, tmp_path):
    from lifelab.trainables.trainable import LearnerTrainable

    threads = torch.get_num_threads()
    trainable = LearnerTrainable(config={"learner": "lifelong_lstm", **TINY, "rounds": 2})
    result = trainable.train()
    assert "acc_first_try" in result and "acc_rows" not in result and not result["done"]
    trainable.save_checkpoint(str(tmp_path))
    assert trainable.train()["done"]
    # PBT exploiting into a trial with other LSTM sizes: the checkpoint goes through adapt
    wider = LearnerTrainable(config={"learner": "lifelong_lstm", **TINY, **WIDE, "rounds": 2})
    wider.load_checkpoint(str(tmp_path))
    assert wider.learner.round == 1 and wider.learner.model.type_b.hidden_size == 13
    assert wider.train()["done"]
    torch.set_num_threads(threads)
    spec = load_spec("lifelong-lstm-pbt")
    assert spec.learner_names() == ["lifelong_lstm"] and spec.search.metric == "val_acc_early"
    assert {"b_size", "c_size"} <= set(spec.search.mutations)
    spec_from_dict({"learner": "lifelong_lstm", "stream": {"kind": "trial_and_error"},
                    "search": {"scheduler": "pbt", "metric": "val_acc_early",
                               "mutations": {"b_size": [8, 16]}},
                    "stop": {"rounds": 2}})            # adaptable: the spec validates


# -- adapt: PBT over the LSTM sizes -----------------------------------------------------------

@pytest.mark.parametrize("ablation", [{}, {"fast_weights": False}, {"type_c": False}])
def test_widening_b_c_and_the_trunk_preserves_every_output_then_training_moves_new_units(
        mnist, ablation):
    narrow = LifelongLSTM({**TINY, **ablation}, data=mnist)
    narrow.step_round()                          # trained weights and optimizer moments
    wide = LifelongLSTM({**TINY, **ablation, **WIDE}, data=mnist)
    wide.adapt(narrow.state_dict(), {**TINY, **ablation})
    assert wide.model.type_b.hidden_size == 13 and wide.model.type_c.hidden_size == 11
    assert wide.model.trunk[0].out_features == 24 and wide.round == narrow.round
    a, b = narrow.run_episodes(narrow.eval_set), wide.run_episodes(wide.eval_set)
    for key in ("scores", "loss_first", "loss_post"):
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    assert torch.equal(a["pick"], b["pick"]) and torch.equal(a["tries"], b["tries"])
    # resized tensors start with fresh moments; the others keep theirs
    moments = wide.optimizer.state_dict()["state"]
    names = [n for n, _ in wide.model.named_parameters()]
    assert names.index("type_b.weight_ih") not in moments
    assert names.index("head.weight") in moments
    new_rows = wide.model.type_b.weight_ih.detach().reshape(4, 13, -1)[:, 8:].clone()
    wide.step_round()
    trained = wide.model.type_b.weight_ih.detach().reshape(4, 13, -1)[:, 8:]
    assert not torch.allclose(trained, new_rows)


def test_narrowing_keeps_units_and_trains_and_unadaptable_keys_are_config_errors(mnist):
    wide = LifelongLSTM({**TINY, **WIDE}, data=mnist)
    small = LifelongLSTM({**TINY, "hidden": [10], "b_size": 5, "c_size": 6}, data=mnist)
    small.adapt(wide.state_dict(), {**TINY, **WIDE})
    assert small.model.type_c.weight_ih.shape == (4 * 6, 5 + 2 + 2 * 5 + 1)
    metrics = small.step_round()
    assert 0 <= metrics["acc_first_try"] <= 1 and metrics["train_loss"] > 0
    for old, key in (({"feature_size": 4}, "feature_size"),
                     ({"hidden": [16, 16]}, "number of layers")):
        with pytest.raises(ConfigError, match=key) as err:
            LifelongLSTM(TINY, data=mnist).adapt(LifelongLSTM({**TINY, **old}, data=mnist)
                                                 .state_dict(), {**TINY, **old})
        assert "\n" not in str(err.value)


# -- validation episodes: selected on, disjoint from training and test ------------------------

def run_rounds(config: dict, data, rounds: int = 2) -> tuple[LifelongLSTM, list[dict]]:
    learner = LifelongLSTM({**config, "rounds": rounds}, data=data)
    return learner, [learner.step_round() for _ in range(rounds)]


def held_out_indices(data, seed: int = 0) -> torch.Tensor:
    """The training images the learner holds out for validation (stream.validation 0.1)."""
    return hold_out(torch.arange(len(data.y_train)), data.y_train, 0.1, seed)[2]


SWITCHING = {**TINY, "stream": {**TINY["stream"], "switch_at": 2}}


def test_validation_episodes_are_their_own_draws_of_their_own_images(mnist):
    learner, metrics = run_rounds(SWITCHING, mnist, rounds=1)
    val, test = learner.val_set, learner.eval_set
    assert val.batch == learner.config["val_episodes"]
    # another generator: other answers and orders, not the test episodes on other images
    assert not torch.equal(val.answer, test.answer) and not torch.equal(val.label, test.label)
    def images(x):
        return {row.numpy().tobytes() for row in x.reshape(-1, x.shape[-1])}

    held = images(mnist.x_train[held_out_indices(mnist)])
    assert images(val.x) <= held                      # only held-out images ...
    assert not images(learner.train_sampler.x) & held  # ... which training never shows
    assert "val_recovery_steps" in metrics[0]
    assert any(metrics[0][f"val_{k}"] != metrics[0][k] for k in ("acc_first_try", "improvement"))


def test_a_poisoned_test_split_leaves_training_and_validation_bit_for_bit(mnist):
    clean_learner, clean = run_rounds(SWITCHING, mnist)
    poisoned = dataclasses.replace(mnist, x_test=1 - mnist.x_test,
                                   y_test=torch.roll(mnist.y_test, 1))
    dirty_learner, dirty = run_rounds(SWITCHING, poisoned)
    for a, b in zip(clean, dirty, strict=True):
        kept = [k for k in a if k.startswith("val_") or k == "train_loss"]
        assert len(kept) > 5 and {k: a[k] for k in kept} == {k: b[k] for k in kept}
    assert clean[-1]["improvement"] != dirty[-1]["improvement"]
    for p, q in zip(clean_learner.model.parameters(), dirty_learner.model.parameters(),
                    strict=True):
        assert torch.equal(p, q)


def test_no_training_episode_shows_a_validation_image(mnist):
    _, clean = run_rounds(SWITCHING, mnist)
    held = held_out_indices(mnist)
    x = mnist.x_train.clone()
    x[held] = 1 - x[held]
    _, dirty = run_rounds(SWITCHING, dataclasses.replace(mnist, x_train=x))
    for a, b in zip(clean, dirty, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("val_")} == \
            {k: v for k, v in b.items() if not k.startswith("val_")}
    assert clean[-1]["val_improvement"] != dirty[-1]["val_improvement"]


def test_without_a_validation_split_there_are_no_validation_metrics(mnist):
    config = {**TINY, "stream": {**TINY["stream"], "validation": 0}}
    learner, metrics = run_rounds(config, mnist, rounds=1)
    assert "acc_early" in metrics[0] and not any(k.startswith("val_") for k in metrics[0])
    with pytest.raises(ValueError, match="stream.validation is 0"):
        learner.evaluate("val")


def test_a_spec_selects_on_validation_episodes_unless_it_opts_into_test():
    def spec(metric, stream=None, **search):
        return {"learner": "lifelong_lstm", "stream": {"kind": "trial_and_error", **(stream or {})},
                "search": {"metric": metric, "mode": "max", **search}}

    with pytest.raises(ConfigError, match="select on 'val_acc_early'"):
        spec_from_dict(spec("acc_early"))
    assert spec_from_dict(spec("val_acc_early")).search.metric == "val_acc_early"
    assert spec_from_dict(spec("acc_early", select_on_test=True)).search.select_on_test
    with pytest.raises(ConfigError, match="stream.validation is 0"):
        spec_from_dict(spec("val_acc_early", {"validation": 0}))
