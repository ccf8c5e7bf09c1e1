"""Backbones: the MLP unchanged bit for bit, the conv nets' heads per scenario, resume with batch
norm and augmentation, EWC/MAS statistics of conv layers against brute force, CUDA-only options
exercised on CPU."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import backbones
from lifelab.learners.backbones import ImageBackbone, build_backbone
from lifelab.learners.importance import mas_importance
from lifelab.platform.data import Dataset
from lifelab.trainables.registry import learner_class

STREAM = {"dataset": "cifar10", "kind": "split", "tasks": 2, "steps_per_task": 4,
          "scenario": "class"}
RESNET = {"backbone": "resnet18", "nf": 4, "batch_size": 8}


def cifar_like(n: int = 60, classes: int = 10, shape=(3, 32, 32)) -> Dataset:
    """uint8 images under the name cifar10: streams normalise and augment them like CIFAR."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    name = "cifar10" if shape[0] == 3 else "mnist5k"
    return Dataset(name, x, y, x[: n // 2].clone(), y[: n // 2].clone(), shape, classes)


def make(name: str = "ewc", stream: dict | None = None, data: Dataset | None = None, **config):
    return learner_class(name)({**RESNET, "stream": {**STREAM, **(stream or {})}, **config},
                               data=data if data is not None else cifar_like())


# -- the MLP: unchanged -------------------------------------------------------------------------

# Recorded before images were stored as bytes and backbones existed (one thread): train losses
# of finetune on permuted MNIST-5k, one step per round; EWC on split MNIST-5k, class scenario.
BEFORE = {
    "finetune": ({"stream": {"tasks": 3, "steps_per_task": 4}, "seed": 3, "steps_per_round": 1},
                 ["0x1.2626360000000p+1", "0x1.25da3c0000000p+1", "0x1.221ed80000000p+1",
                  "0x1.2105700000000p+1", "0x1.2909b40000000p+1", "0x1.2610620000000p+1",
                  "0x1.24ad160000000p+1", "0x1.2594f00000000p+1", "0x1.2555280000000p+1",
                  "0x1.25e7e20000000p+1", "0x1.285afe0000000p+1", "0x1.2392640000000p+1"]),
    "ewc": ({"stream": {"kind": "split", "tasks": 3, "steps_per_task": 4, "scenario": "class"},
             "seed": 1, "importance_samples": 50},
            ["0x1.4609d00000000p-1", "0x1.5b35420000000p+0", "0x1.b464280000000p+0"]),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_the_mlp_on_mnist5k_trains_bit_for_bit_as_before(name):
    config, losses = BEFORE[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learner = learner_class(name)(config)
        got = []
        while not learner.done:
            got.append(learner.step_round()["train_loss"].hex())
    finally:
        torch.set_num_threads(threads)
    assert isinstance(learner.model, nn.Sequential) and got == losses


# -- conv backbones ------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario, outputs", [("task", 10), ("domain", 2), ("class", 10)])
def test_resnet18_last_layer_has_the_scenarios_units(scenario, outputs):
    learner = make("finetune", {"tasks": 5, "scenario": scenario})
    assert learner.stream.num_outputs == outputs
    model = learner.model
    assert isinstance(model, ImageBackbone) and model.head.out_features == outputs
    x, _ = learner.stream.tasks[0].eval_set("test")
    assert model(x).shape == (len(x), outputs)
    assert model[:-1](x).shape == (len(x), 8 * 4)                  # features: 8 nf
    m = learner.step_round()
    assert 0 <= m["acc_avg"] <= 1 and m["train_loss"] > 0


def test_resnet18_is_gems_reduced_resnet():
    model = build_backbone("resnet18", (3, 32, 32), 100, nf=20)
    body = model.body
    widths = [stage[0].conv1.out_channels for stage in
              (body.layer1, body.layer2, body.layer3, body.layer4)]
    strides = [stage[0].conv1.stride[0] for stage in
               (body.layer1, body.layer2, body.layer3, body.layer4)]
    assert widths == [20, 40, 80, 160] and strides == [1, 2, 2, 2]
    assert all(len(stage) == 2 for stage in (body.layer1, body.layer2, body.layer3, body.layer4))
    assert body.conv1.kernel_size == (3, 3) and body.conv1.stride == (1, 1)      # no max-pool
    assert sum(p.numel() for p in model.parameters()) == 1_109_240        # ~1.1M


def test_cnn_on_digits_and_image_backbones_need_images():
    learner = make("finetune", {"dataset": "mnist5k"}, cifar_like(shape=(1, 28, 28)),
                   backbone="cnn", hidden=[7])                   # hidden: the MLP's only
    x, _ = learner.stream.tasks[0].eval_set("test")
    assert learner.model(x).shape == (len(x), learner.stream.num_outputs)
    assert learner.model.body[0].in_channels == 1
    rows = Dataset("mnist5k", torch.rand(20, 64), torch.arange(20) % 10, torch.rand(10, 64),
                   torch.arange(10) % 10, (64,), 10)
    with pytest.raises(ConfigError, match="backbone cnn needs images"):
        make("finetune", {"dataset": "mnist5k"}, rows, backbone="cnn")


def test_the_backbone_key_is_refused_by_learners_that_build_their_own_model():
    with pytest.raises(ConfigError, match="builds its own model"):
        learner_class("reversible").validate_config({"backbone": "resnet18"})
    assert learner_class("reversible").validate_config({})["backbone"] == "mlp"


# -- resume ---------------------------------------------------------------------------------------

def _timeless(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "importance_s"}     # wall seconds


def test_a_conv_backbone_resumes_bit_for_bit():
    """Batch norm's running statistics, the augmentation's draws and EWC's Fisher all continue
    exactly from a checkpoint loaded into a fresh learner."""
    config = {"steps_per_round": 2, "importance_samples": 12}
    first = make(**config)
    first.step_round()
    first.step_round()                                        # task 0 ends: a Fisher term
    first.step_round()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    rest = _timeless(first.step_round())
    buffer.seek(0)
    second = make(**config)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert _timeless(second.step_round()) == rest and second.done
    for (name, a), b in zip(first.model.state_dict().items(),
                            second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name                        # running_mean / var included


# -- per-sample statistics of conv and batch-norm layers -----------------------------------------

def _loop(model, per_sample, n, power=2.0):
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(n):
        grads = torch.autograd.grad(per_sample(i), list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                total[k] += g.abs() ** power
    return total


def _assert_close(got, want, rtol=1e-4):
    assert set(got) == set(want)
    for k in want:
        scale = want[k].abs().max().clamp(min=1e-12)
        assert (got[k] - want[k]).abs().max() <= rtol * scale, k


def test_ewc_fisher_of_a_resnet_matches_the_single_sample_loop():
    learner = make(fisher="empirical", importance_samples=10)
    for _ in range(3):                                        # running statistics move
        learner.train_step()
    model = learner.model
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x, y = learner.importance_data(0)
    assert model.training
    got = learner.fisher(0)
    assert model.training                                     # modes restored ...
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())   # ... stats kept
    model.eval()                                              # brute force: BN on running stats
    units = learner.stream.output_units(0, 1)
    want = _loop(model, lambda i: F.cross_entropy(model(x[i:i + 1])[:, units], y[i:i + 1]),
                 len(x))
    _assert_close(got, {k: w / len(x) for k, w in want.items()})
    assert {"body.bn1.weight", "body.layer4.1.conv2.weight", "head.bias"} <= set(got)


def test_mas_of_a_small_cnn_matches_the_single_sample_loop():
    torch.manual_seed(0)
    model = build_backbone("cnn", (1, 12, 12), 5, nf=3)
    x = torch.rand(9, 144)
    want = _loop(model, lambda i: model(x[i:i + 1]).pow(2).sum(), len(x), power=1.0)
    _assert_close(mas_importance(model, model, x), {k: w / len(x) for k, w in want.items()})


# -- CUDA-only options, exercised on CPU ---------------------------------------------------------

def test_cuda_options_are_off_on_cpu_and_compile_is_in_place(monkeypatch):
    learner = make("finetune", amp=True, channels_last=True)
    assert learner.precision.dtype is None and learner.precision.scaler is None
    assert not learner.model.channels_last
    assert learner.model.body.conv1.weight.is_contiguous()
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    learner = make("finetune", compile=True)
    assert compiled == [learner.model]
    assert "body.conv1.weight" in learner.model.state_dict()  # names (checkpoints) unchanged


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_trains_and_fp16_resumes_with_its_scaler(monkeypatch, dtype):
    monkeypatch.setattr(backbones, "amp_dtype", lambda device: dtype)
    first = make(steps_per_round=2)
    assert first.precision.dtype == dtype
    assert (first.precision.scaler is not None) == (dtype == torch.float16)
    first.step_round()
    state = first.state_dict()
    rest = [_timeless(first.step_round()) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in rest)
    second = make(steps_per_round=2)
    second.load_state_dict(state)
    assert second.precision.state_dict() == state["precision"]
    assert [_timeless(second.step_round()) for _ in range(3)] == rest
