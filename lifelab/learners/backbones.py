"""The networks a continual learner can train (`backbone` config key), and CUDA's speed-ups.

- `mlp`: today's fully connected net, `hidden` sizes, ReLU; unchanged (the same layers, keys and
  initialisation draws as before backbones existed, so MLP results are bit-identical).
- `cnn`: a small conv net for 28x28 digits (any H x W works): conv3x3(nf) - ReLU - maxpool2 -
  conv3x3(2nf) - ReLU - maxpool2 - linear(8nf) - ReLU - linear.
- `resnet18`: the reduced ResNet-18 of Lopez-Paz & Ranzato 2017 (GEM), as Mammoth builds it:
  a 3x3 stem without max-pooling, four stages of two BasicBlocks with nf, 2nf, 4nf, 8nf
  channels (strides 1, 2, 2, 2), batch norm, global average pooling, one linear layer. nf=20 is
  GEM's reduced net (~1.1M parameters for 100 classes); nf=64 is the full-width ResNet-18
  Mammoth trains on Seq-CIFAR-10 and Seq-TinyImageNet.

Every backbone ends in one linear layer of `outputs` units (the stream's task/domain/class
head), and `model[:-1]` is the network without it (its features, e.g. for iCaRL's nearest-mean
classifier), as for the MLP's nn.Sequential. Streams hand out float rows (B, D); the conv
backbones view each row as its image (`input_shape`), which costs nothing.

On CUDA only (`Precision`, `channels_last`): bf16 autocast where the GPU supports it, else fp16
with a GradScaler; channels-last memory for the conv nets. Both are off on CPU, where they slow
things down, so CPU runs stay exactly as they were.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError

BACKBONES: tuple[str, ...] = ("mlp", "cnn", "resnet18")
EVAL_CHUNK = 1000      # samples per forward when evaluating without gradients (bounds memory)


def build_backbone(name: str, input_shape: tuple[int, ...], outputs: int,
                   hidden: list[int] | tuple[int, ...] = (100, 100), nf: int = 20,
                   channels_last: bool = False) -> nn.Module:
    """The `name` backbone for inputs of `input_shape` with an `outputs`-unit last layer."""
    if name == "mlp":
        return mlp(input_shape, hidden, outputs)
    if len(input_shape) != 3:
        raise ConfigError(f"backbone {name} needs images (C, H, W), but the stream's dataset "
                          f"has input shape {tuple(input_shape)}: use backbone: mlp")
    channels, height, width = input_shape
    if name == "cnn":
        body = _cnn_body(channels, height, width, nf)
        head = nn.Linear(8 * nf, outputs)
    elif name == "resnet18":
        body = ResNet18Body(channels, nf)
        head = nn.Linear(8 * nf, outputs)
    else:
        raise ConfigError(f"backbone {name!r} is unknown: use one of {', '.join(BACKBONES)}")
    model = ImageBackbone(input_shape, body, head, channels_last)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def mlp(input_shape: tuple[int, ...], hidden, outputs: int) -> nn.Sequential:
    sizes = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], outputs))
    return nn.Sequential(*layers)


class ImageBackbone(nn.Module):
    """A conv body and a linear head over flat rows viewed as images."""

    def __init__(self, input_shape: tuple[int, ...], body: nn.Module, head: nn.Linear,
                 channels_last: bool = False):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.channels_last = channels_last
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Evaluation sets arrive whole (thousands of images): chunked, the activations of one
        # chunk at a time fit in memory. Eval mode only, where samples do not interact.
        if not self.training and not torch.is_grad_enabled() and len(x) > EVAL_CHUNK:
            return torch.cat([self(chunk) for chunk in x.split(EVAL_CHUNK)])
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last linear layer, for rows x (B, D)."""
        x = x.reshape(len(x), *self.input_shape)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def __getitem__(self, index: slice) -> nn.Module:
        """`model[:-1]`, as for the MLP (an nn.Sequential): everything but the last layer."""
        if index != slice(None, -1):
            raise TypeError("a conv backbone has two parts: model[:-1] (features) and "
                            "model.head")
        return _Features(self)


class _Features(nn.Module):
    def __init__(self, backbone: ImageBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.backbone.training and not torch.is_grad_enabled() and len(x) > EVAL_CHUNK:
            return torch.cat([self(chunk) for chunk in x.split(EVAL_CHUNK)])
        return self.backbone.features(x)


def _cnn_body(channels: int, height: int, width: int, nf: int) -> nn.Sequential:
    if height < 4 or width < 4:
        raise ConfigError(f"backbone cnn pools twice and needs images of at least 4x4, got "
                          f"{height}x{width}: use backbone: mlp")
    flat = 2 * nf * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, nf, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(nf, 2 * nf, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 8 * nf), nn.ReLU())


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (He et al. 2016)."""

    def __init__(self, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Body(nn.Module):
    """ResNet-18 for small images up to its pooled features (8 * nf of them)."""

    def __init__(self, channels: int, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        widths, layers, n_in = [nf, 2 * nf, 4 * nf, 8 * nf], [], nf
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            layers.append(nn.Sequential(BasicBlock(n_in, width, stride),
                                        BasicBlock(width, width, 1)))
            n_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


# -- CUDA: mixed precision ---------------------------------------------------------------------

def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast type of mixed precision on `device`: bf16 where the GPU has it (Ampere and
    later), else fp16; None off CUDA (CPU autocast is slower than float32 for these nets)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Precision:
    """The forward under autocast and the optimizer step under a GradScaler where fp16 needs one.

    `backward` unscales the gradients right away, so whatever reads them before the step
    (importance bookkeeping, gradient projections) sees their true values; `step` skips the
    update when they overflowed, as GradScaler does. The scaler's state is part of a learner's
    checkpoint, so a resumed fp16 run continues bit for bit."""

    def __init__(self, device: torch.device | str, enabled: bool):
        self.device = torch.device(device)
        self.dtype = amp_dtype(self.device) if enabled else None
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.dtype == torch.float16 else None)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
