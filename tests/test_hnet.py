"""The hypernetwork continual learner (lifelab.learners.hnet): batched chunks, the output
regularizer, embeddings, task inference, adapt (growth), resume and config errors."""

import copy
import math

import pytest
import torch
from outcomes import mean, over_seeds, shown
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners.base import Learner
from lifelab.learners.hnet import HNet, entropy_inference
from lifelab.platform.data import Dataset, load_dataset
from lifelab.searches.spec import load_spec

SMALL = {"target_hidden": [16], "hnet_hidden": [16, 16], "chunk_size": 300, "task_emb_dim": 8,
         "chunk_emb_dim": 8, "batch_size": 32, "lr": 3e-3}


@pytest.fixture(autouse=True)
def seeded():
    """Random test inputs (embeddings, fake gradients) are the same on every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def make(stream=None, seed=0, **config):
    stream = {"tasks": 3, "steps_per_task": 20, "seed": seed, **(stream or {})}
    return HNet({**SMALL, "stream": stream, "seed": seed, **config},
                data=load_dataset("mnist5k"))


def per_chunk_reference(hnet, task_emb, params=None):
    """Generated weights the slow way: one hypernetwork pass per chunk, input [e ; c_i]."""
    params = params or dict(hnet.named_parameters())
    n_layers = len(hnet.layers)
    chunks = []
    for i in range(hnet.num_chunks):
        h = torch.cat([task_emb, params["chunk_emb"][i]])
        for k in range(n_layers):
            h = F.linear(h, params[f"layers.{k}.weight"], params[f"layers.{k}.bias"])
            if k < n_layers - 1:
                h = torch.relu(h)
        chunks.append(h)
    return torch.cat(chunks)[:hnet.num_weights]


def fake_earlier_tasks(learner, n, seed=0):
    """n stored task embeddings and their snapshot, as if n tasks had been learned."""
    gen = torch.Generator().manual_seed(seed)
    learner.task_embs = torch.randn(n, learner.model.task_emb_dim, generator=gen)
    learner.snapshot()


def perturb(model, scale=0.05, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.abs().mean())


@pytest.mark.parametrize("chunk_size", [300, 0, 12730, 5000])
def test_all_chunks_in_one_batched_pass_equal_a_per_chunk_loop(chunk_size):
    learner = make(chunk_size=chunk_size)
    hnet = learner.model
    assert hnet.num_weights == 784 * 16 + 16 + 16 * 10 + 10
    if chunk_size in (0, 12730):
        assert hnet.num_chunks == 1                     # unchunked: the same code, one chunk
    embs = torch.randn(3, 8)
    batched = hnet.generate(embs)
    assert batched.shape == (3, hnet.num_weights)
    for k in range(3):
        assert torch.allclose(batched[k], per_chunk_reference(hnet, embs[k]), atol=1e-6, rtol=0)


def test_generation_is_one_pass_not_a_loop_over_chunks(monkeypatch):
    counts = {}
    linear = F.linear
    for chunk_size in (300, 60):                          # 43 and 213 chunks
        learner = make(chunk_size=chunk_size)
        calls = []
        monkeypatch.setattr(F, "linear",
                            lambda *a, calls=calls, **k: calls.append(1) or linear(*a, **k))
        learner.model.generate(torch.randn(5, 8))
        monkeypatch.setattr(F, "linear", linear)
        counts[learner.model.num_chunks] = len(calls)
    assert counts == {43: 4, 213: 4}    # layer 0 (task and chunk parts), layer 1, output layer


def regularizer_reference(learner, theta_star, idx=None, params=None):
    """Mean over tasks of ||h(e_t; theta*) - h(e_t; theta)||^2, one task at a time."""
    embs = learner.task_embs if idx is None else learner.task_embs[idx]
    total = 0.0
    for e in embs:
        target = per_chunk_reference(learner.model, e, theta_star)
        total = total + (target - per_chunk_reference(learner.model, e, params)).pow(2).sum()
    return total / len(embs)


@pytest.mark.parametrize("lookahead", [False, True])
def test_output_regularizer_equals_a_per_task_loop_value_and_gradient(lookahead):
    learner = make(lookahead=lookahead)
    fake_earlier_tasks(learner, 4)
    theta_star = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    assert learner.regularizer().item() == pytest.approx(0.0, abs=1e-6)
    perturb(learner.model)
    params, delta = None, None
    if lookahead:
        for p in learner.model.parameters():                # gradients of some task loss
            p.grad = torch.randn_like(p)
        delta = learner.lookahead_delta()
        params = {k: p + delta[k] for k, p in learner.model.named_parameters() if k in delta}
        assert set(delta) == {k for k, _ in learner.model.named_parameters()} - {"task_emb"}
    fast = learner.regularizer(delta)
    slow = regularizer_reference(learner, theta_star, params=params)
    assert slow.item() > 1e-3
    assert fast.item() == pytest.approx(slow.item(), rel=1e-4)
    named = dict(learner.model.named_parameters())
    wrt = [named[k] for k in ("layers.0.weight", "layers.1.weight", "layers.2.weight",
                              "layers.2.bias", "chunk_emb")]
    g_fast = torch.autograd.grad(fast, wrt)
    g_slow = torch.autograd.grad(slow, wrt)
    for a, b in zip(g_fast, g_slow, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6 * b.abs().max().item())


def test_lookahead_delta_is_the_step_adam_would_take():
    learner = make()
    for _ in range(3):
        learner.train_step()
    for p in learner.model.parameters():
        p.grad = torch.randn_like(p)
    delta = learner.lookahead_delta()
    before = {k: p.detach().clone() for k, p in learner.model.named_parameters()}
    learner.optimizer.step()
    for k, p in learner.model.named_parameters():
        if k != "task_emb":
            assert torch.allclose(p - before[k], delta[k], rtol=1e-3, atol=1e-6)  # float32 ulp


def test_regularizer_draws_a_subset_above_reg_max_tasks(monkeypatch):
    learner = make(reg_max_tasks=3)
    fake_earlier_tasks(learner, 3)
    assert learner.regularized_tasks() is None           # all of them, no draw
    fake_earlier_tasks(learner, 7)
    theta_star = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    perturb(learner.model)
    draws = [learner.regularized_tasks() for _ in range(20)]
    assert all(len(d) == 3 and len(set(d.tolist())) == 3 and d.max() < 7 for d in draws)
    assert len({tuple(sorted(d.tolist())) for d in draws}) > 1   # a new subset each step
    state = learner.generator.get_state()
    idx = learner.regularized_tasks()
    learner.generator.set_state(state)
    sizes = []
    hidden = learner.model.hidden
    monkeypatch.setattr(learner.model, "hidden", lambda e, p=None: sizes.append(len(e))
                        or hidden(e, p))
    fast = learner.regularizer()
    assert sizes == [3]                                  # one batched pass over the subset
    assert fast.item() == pytest.approx(regularizer_reference(learner, theta_star, idx).item(),
                                        rel=1e-4)


def test_only_the_current_task_embedding_is_trained():
    learner = make(stream={"tasks": 3, "steps_per_task": 10})
    learner.step_round()                                 # task 0 done
    stored = learner.task_embs.clone()
    assert stored.shape == (1, 8) and not learner.task_embs.requires_grad
    first = learner.model.task_emb.detach().clone()
    assert not torch.equal(first, stored[0])             # task 1 starts from a fresh embedding
    assert learner.model.task_emb not in learner.optimizer.state   # ... and fresh Adam moments
    chunk_before = learner.model.chunk_emb.detach().clone()
    learner.train_step()
    assert learner.model.task_emb.grad is not None and learner.model.task_emb.grad.abs().sum() > 0
    assert not torch.equal(learner.model.task_emb.detach(), first)
    assert not torch.equal(learner.model.chunk_emb.detach(), chunk_before)  # always trained
    learner.step_round()                                 # task 1 done: stored, task 0 untouched
    assert torch.equal(learner.task_embs[0], stored[0])
    assert learner.task_embs.shape == (2, 8)


def test_regularizer_holds_earlier_tasks_generated_weights():
    def drift_ratio(seed):
        """How far task 0's generated weights move while task 1 trains, with the regularizer
        over without it (same seed)."""
        weights = {}
        for beta in (0.0, 0.05):
            learner = make(stream={"tasks": 2, "steps_per_task": 60}, beta=beta, seed=seed)
            learner.step_round()
            before = learner.task_weights(1).detach().clone()
            learner.step_round()
            weights[beta] = (learner.task_weights(1) - before).pow(2).sum().item()
        return weights[0.05] / weights[0.0]

    ratios = over_seeds(drift_ratio)
    assert max(ratios) < 0.1, shown(ratios)        # seeds 0-9: 0.007-0.031


def test_learner_follows_the_protocol_and_reports_its_metrics():
    learner = make(steps_per_round=10)
    assert isinstance(learner, Learner)
    rounds = []
    while not learner.done:
        rounds.append(learner.step_round())
    assert len(rounds) == 6 and [len(r) for r in learner.rows] == [1, 2, 3]
    assert [len(r) for r in learner.view_rows["cil"]] == [1, 2, 3]
    last = rounds[-1]
    assert set(HNet.metrics) <= set(last)
    assert last["acc_avg"] == pytest.approx(sum(learner.rows[-1]) / 3)
    assert last["acc_avg_cil"] == pytest.approx(sum(learner.view_rows["cil"][-1]) / 3)
    assert rounds[0]["reg_loss"] == 0 and rounds[-1]["reg_loss"] > 0
    hnet = learner.model
    shared = sum(p.numel() for p in hnet.parameters()) - 8
    assert last["compression_ratio"] == pytest.approx((shared + 3 * 8) / hnet.num_weights)
    assert all(math.isfinite(r["train_loss"]) for r in rounds)


def test_task_inference_picks_the_lowest_entropy_network_not_the_largest_logit():
    # network 0 is torn between classes 1 and 2 with huge logits; network 1 is sure of class 3
    logits = torch.zeros(2, 4, 10)
    logits[0, :, 1:3] = 9.0
    logits[1, :, 3] = 8.0
    assert entropy_inference(logits).tolist() == [1, 1, 1, 1]
    assert entropy_inference(logits.flip(0)).tolist() == [0, 0, 0, 0]
    learner = make(target_hidden=[4])
    # networks whose output is their last bias only: they are the logits above
    weights = torch.zeros(2, learner.model.num_weights)
    for k in range(2):
        _, bias = learner.target.layers(weights[k])[-1]
        bias.copy_(logits[k, 0])
    task_hat, pred = learner.infer(weights, torch.rand(4, 784))
    assert task_hat.tolist() == [1] * 4 and pred.tolist() == [3] * 4


def test_task_inferred_accuracy_is_scored_against_the_true_task():
    def identified(seed):
        learner = make(stream={"tasks": 2, "steps_per_task": 80}, seed=seed)
        while not learner.done:
            learner.step_round()
        weights = learner.task_weights(2)
        shares = []
        for j in range(2):
            x, y = learner.stream.tasks[j].eval_set("test")
            task_hat, pred = learner.infer(weights, x)
            # a prediction counts only with the right task: the label is (task, class)
            expected = ((task_hat == j) & (pred == y)).float().mean().item()
            assert learner.view_rows["cil"][-1][j] == pytest.approx(expected)
            shares.append((task_hat == j).float().mean().item())
        # with task 1's network swapped for task 0's, every sample goes to task 0
        task_hat, _ = learner.infer(weights[[0, 0]], x)
        assert (task_hat == 0).all()
        return sum(shares) / 2

    shares = over_seeds(identified)
    # better than a coin at telling tasks apart: seeds 0-9 0.63-0.80 (mean 0.71, sd 0.06: the
    # mean of three minus 3 standard errors 0.61)
    assert mean(shares) > 0.58, shown(shares)


def test_class_scenario_uses_global_labels_and_inferred_tasks():
    def final(seed):
        learner = make(stream={"tasks": 2, "steps_per_task": 40, "scenario": "class"}, seed=seed)
        assert learner.model.num_weights == 784 * 16 + 16 + 16 * 10 + 10   # one head of 10
        while not learner.done:
            metrics = learner.step_round()
        assert learner.rows == learner.view_rows["cil"]
        return metrics["acc_avg"]

    accs = over_seeds(final)
    # chance is 1/20 (task and class); seeds 0-9: 0.34-0.48
    assert min(accs) > 0.2, shown(accs)
    with pytest.raises(ConfigError, match="cil_eval"):
        make(stream={"scenario": "domain"}, cil_eval=False)


@pytest.mark.parametrize("config", [{}, {"lookahead": True, "reg_max_tasks": 1}])
def test_restored_learner_continues_bit_for_bit(config):
    straight = make(steps_per_round=7, **config)
    for _ in range(5):                                   # mid-task 1, one task regularized
        straight.step_round()
    state = straight.state_dict()
    restored = make(steps_per_round=7, **config)
    restored.load_state_dict(state)
    while not straight.done:
        assert restored.step_round() == straight.step_round()
    assert restored.rows == straight.rows and restored.view_rows == straight.view_rows
    assert torch.equal(restored.task_embs, straight.task_embs)
    for a, b in zip(restored.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)


def trained(seed=0, **config):
    learner = make(stream={"tasks": 3, "steps_per_task": 20}, steps_per_round=10, seed=seed,
                   **config)
    for _ in range(3):                                   # task 0 and half of task 1
        learner.step_round()
    return learner


@pytest.mark.parametrize("grown", [
    {"hnet_hidden": [24, 40]},
    {"task_emb_dim": 13},
    {"chunk_emb_dim": 11},
    {"hnet_hidden": [17, 32], "task_emb_dim": 9, "chunk_emb_dim": 16},
])
def test_adapt_widening_preserves_generated_weights_then_training_continues(grown):
    def adapted_accuracy(seed):
        donor = trained(seed)
        state = donor.state_dict()
        old_config = {**SMALL, "seed": seed, "stream": donor.config["stream"].__dict__,
                      "learner": "hnet"}
        x, _ = donor.stream.tasks[0].eval_set("test")
        with torch.no_grad():
            before = donor.task_weights(2)
            outputs = donor.target.forward(before[0], x)
        reg_before = donor.regularizer().item()
        learner = make(stream={"tasks": 3, "steps_per_task": 20}, steps_per_round=10,
                       seed=seed, **grown)
        learner.adapt(copy.deepcopy(state), old_config)
        hnet = learner.model
        assert [layer.out_features for layer in hnet.layers[:-1]] == learner.config["hnet_hidden"]
        assert hnet.task_emb.shape == (learner.config["task_emb_dim"],)
        assert learner.task_embs.shape == (1, learner.config["task_emb_dim"])
        with torch.no_grad():
            after = learner.task_weights(2)
            assert torch.allclose(after, before, atol=1e-6, rtol=0)
            assert torch.allclose(learner.target.forward(after[0], x), outputs, atol=1e-5, rtol=0)
        assert learner.regularizer().item() == pytest.approx(reg_before, rel=1e-3, abs=1e-7)
        assert learner.rows == donor.rows and learner.step_in_task == donor.step_in_task
        while not learner.done:
            metrics = learner.step_round()
        assert math.isfinite(metrics["train_loss"]) and len(learner.rows) == 3
        assert not torch.allclose(learner.task_weights(1), after[:1])   # it trained on
        return metrics["acc_avg"]

    accs = over_seeds(adapted_accuracy)
    # it goes on learning: chance is 0.1; seeds 0-9, the four widenings: 0.22-0.46, means per
    # widening 0.35-0.40 (sd 0.05-0.07: the mean of three minus 3 standard errors >= 0.255);
    # the donor trained on without adapt: 0.31-0.39 (seeds 0-5)
    assert mean(accs) > 0.22, shown(accs)


def test_adapt_can_shrink_and_refuses_what_it_cannot_change():
    donor = trained(hnet_hidden=[24, 24], task_emb_dim=12)
    old_config = {**SMALL, "hnet_hidden": [24, 24], "task_emb_dim": 12,
                  "stream": donor.config["stream"].__dict__}
    learner = make(stream={"tasks": 3, "steps_per_task": 20}, steps_per_round=10)
    learner.adapt(donor.state_dict(), old_config)        # 24 -> 16 units, 12 -> 8 entries
    assert learner.snap_z.shape[-1] == 16 and learner.task_embs.shape == (1, 8)
    while not learner.done:
        metrics = learner.step_round()
    assert math.isfinite(metrics["train_loss"])
    for key, value in (("target_hidden", [32]), ("chunk_size", 200), ("hnet_hidden", [16])):
        other = make(**{key: value})
        with pytest.raises(ConfigError, match=key):
            other.adapt(donor.state_dict(), old_config)


def test_permuted_mnist_100_runs_with_constant_memory_per_task_and_bounded_steps(monkeypatch):
    mnist = load_dataset("mnist5k")
    small = Dataset("mnist5k", mnist.x_train[:100], mnist.y_train[:100], mnist.x_test[:10],
                    mnist.y_test[:10], mnist.input_shape, mnist.num_classes)
    learner = HNet({**SMALL, "target_hidden": [4], "reg_max_tasks": 4, "cil_eval": False,
                    "stream": {"tasks": 100, "steps_per_task": 1}}, data=small)
    regularized = []
    regularizer = learner.regularizer
    hidden = learner.model.hidden

    def spy(embs, params=None):
        regularized.append(len(embs))
        return hidden(embs, params)

    def spied_regularizer(delta=None):
        monkeypatch.setattr(learner.model, "hidden", spy)
        try:
            return regularizer(delta)
        finally:
            monkeypatch.setattr(learner.model, "hidden", hidden)

    monkeypatch.setattr(learner, "regularizer", spied_regularizer)
    while not learner.done:
        metrics = learner.step_round()
    assert len(learner.rows) == 100 and metrics["tasks_seen"] == 100
    # one batched pass per step, over min(earlier tasks, reg_max_tasks) embeddings
    assert regularized == [min(t, 4) for t in range(1, 100)]
    # what a finished task leaves: one embedding and one (factored) snapshot of its targets
    chunks, width = learner.model.num_chunks, 16
    assert learner.task_embs.shape == (100, 8)
    assert learner.snap_z.shape == (100, chunks, width)
    assert learner.snap_gram.shape == (width + 1, width + 1)      # one total, not per task


@pytest.mark.parametrize("config, field", [
    ({"chunk_size": -1}, "chunk_size"),
    ({"hnet_hidden": []}, "hnet_hidden"),
    ({"target_hidden": [0]}, "target_hidden"),
    ({"beta": -0.1}, "beta"),
    ({"reg_max_tasks": 0}, "reg_max_tasks"),
    ({"lookahead": "yes"}, "lookahead"),
    ({"task_emb_dim": 0}, "task_emb_dim"),
    ({"cil_samples": -1}, "cil_samples"),
    ({"hidden": [100]}, "hidden"),
])
def test_bad_config_names_the_key(config, field):
    with pytest.raises(ConfigError, match=field):
        HNet.validate_config(config)


def test_the_hnet_pbt_preset_is_valid():
    spec = load_spec("hnet-pbt")
    assert "hnet" in spec.learner_names() and "finetune" in spec.learner_names()
    assert spec.search.scheduler == "pbt"
    ladder = spec.search.mutations["hnet_hidden"]
    assert isinstance(ladder, list) and len({len(v) for v in ladder}) == 1
