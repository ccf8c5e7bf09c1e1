"""The two baselines that bound every continual learner.

`finetune` trains each task in turn with nothing against forgetting: the floor.
`joint` trains, at each task, on every task seen so far (each sample through its own task's
output units): the upper bound a continual learner is measured against.
Both report the metrics of `lifelab.learners.base`.
"""

from __future__ import annotations

import torch

from lifelab.learners.base import ContinualLearner


class Finetune(ContinualLearner):
    """Plain sequential training: the forgetting floor every method is compared against."""

    name = "finetune"


class Joint(ContinualLearner):
    """Trains on every task seen so far at once: the upper bound of a stream."""

    name = "joint"

    def training_batches(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """A batch drawn uniformly over tasks 0..current, split by task."""
        seen = self.task + 1
        tasks = torch.randint(seen, (self.config["batch_size"],), generator=self.generator)
        counts = torch.bincount(tasks, minlength=seen).tolist()
        return [(t, *self.sample(t, n)) for t, n in enumerate(counts) if n > 0]
