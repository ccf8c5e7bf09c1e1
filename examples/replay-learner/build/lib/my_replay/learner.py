"""Experience replay with a reservoir buffer, on lifelab's shared continual-learning loop."""

import torch

from lifelab import ContinualLearner, Param


class Replay(ContinualLearner):
    """Experience replay: each batch is half the current task, half a reservoir buffer."""

    name = "my_replay"
    params = {**ContinualLearner.params,
              "buffer_size": Param(200, int, positive=True, doc="samples the buffer holds")}
    metrics = (*ContinualLearner.metrics, "buffer_fill")

    def __init__(self, config, device="cpu", data=None):
        super().__init__(config, device, data)
        size, dim = self.config["buffer_size"], self.stream.input_dim
        self.buffer = {"x": torch.zeros(size, dim, device=self.device),
                       "y": torch.zeros(size, dtype=torch.long, device=self.device),
                       "task": torch.zeros(size, dtype=torch.long, device=self.device)}
        self.seen = 0                        # samples offered to the buffer so far

    def training_batches(self):
        half = self.config["batch_size"] // 2
        x, y = self.sample(self.task, half)
        chunks = [(self.task, x, y)]
        filled = min(self.seen, self.config["buffer_size"])
        if filled:
            pick = torch.randint(filled, (half,), generator=self.generator)
            tasks = self.buffer["task"][pick]
            chunks += [(t, self.buffer["x"][pick[tasks == t]], self.buffer["y"][pick[tasks == t]])
                       for t in tasks.unique().tolist()]
        self.remember(x, y)
        return chunks

    def remember(self, x, y):
        """Reservoir sampling: each sample seen so far is in the buffer with the same chance."""
        for xi, yi in zip(x, y, strict=True):
            slot = self.seen
            if slot >= self.config["buffer_size"]:
                slot = int(torch.randint(self.seen + 1, (1,), generator=self.generator))
            if slot < self.config["buffer_size"]:
                self.buffer["x"][slot], self.buffer["y"][slot] = xi, yi
                self.buffer["task"][slot] = self.task
            self.seen += 1

    def round_metrics(self, train_loss):
        fill = min(self.seen, self.config["buffer_size"])
        return {**super().round_metrics(train_loss), "buffer_fill": float(fill)}

    def extra_state(self):
        return {"buffer": self.buffer, "seen": self.seen}

    def load_extra_state(self, state):
        self.buffer = {key: value.clone() for key, value in state["buffer"].items()}
        self.seen = state["seen"]
