"""A dataset of your own: `stream: {dataset: my_replay.data:noisy_mnist, ...}`."""

import torch

from lifelab.platform.data import Dataset, load_dataset


def noisy_mnist() -> Dataset:
    """MNIST-5k under fixed Gaussian pixel noise: flattened float pixels in [0, 1], int64
    labels, for a train and a test split."""
    mnist = load_dataset("mnist5k").flat()          # float rows (N, 784) in [0, 1]
    generator = torch.Generator().manual_seed(0)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return (x + 0.3 * torch.randn(x.shape, generator=generator)).clamp(0, 1)

    return Dataset(name="noisy_mnist", x_train=noisy(mnist.x_train), y_train=mnist.y_train,
                   x_test=noisy(mnist.x_test), y_test=mnist.y_test,
                   input_shape=mnist.input_shape, num_classes=mnist.num_classes)
