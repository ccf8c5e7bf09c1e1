"""The rehearsal memory every rehearsal learner shares: preallocated tensors on the learner's
device, filled by one of three policies, sampled and written without Python loops over samples.

A buffer holds named fields, one row per stored sample (e.g. x, y, task, and logits for DER);
each field is one tensor of `capacity` rows allocated once, so `nbytes` is the memory the buffer
takes whether full or not. Policies:

- `ReservoirBuffer` (Vitter's algorithm R; Chaudhry et al. 2019): the i-th sample offered
  (0-based) fills a free slot while there is one, else replaces slot j ~ U{0..i} if j < capacity,
  so every sample offered so far is in the buffer with the same probability capacity / seen.
  A batch is placed in one vectorised pass; two samples of a batch drawing the same slot resolve
  as sequential placement would (the later one stays).
- `BalancedBuffer` (GDumb's greedy class-balanced sampler, Prabhu et al. 2020): after each batch
  every class keeps min(its samples, L) rows, L the highest level the capacity allows (spare rows
  to the lowest class ids); a class over its share loses random stored rows, and new rows fill a
  class in arrival order.
- `HerdingBuffer` (iCaRL, Rebuffi et al. 2017): exemplars chosen per class by `herding`, each with
  its rank in the herding order; shrinking keeps each class's first m ranks, as iCaRL's
  ReduceExemplarSet does.

`resize` applies the policy to a new capacity (population-based training mutating `buffer_size`):
a smaller buffer keeps the subset the policy would (a uniform subset for the reservoir, the
balanced share for GDumb, the best-ranked exemplars for herding); a larger one keeps every row
and fills as new samples arrive.

`state_dict` holds only strings, ints and tensors (loadable with torch.load(weights_only=True)).
Randomness comes from the caller's CPU generator, so a learner's run is a function of its seed.
"""

from __future__ import annotations

import torch

#: field name -> (shape of one row, dtype)
Fields = dict[str, tuple[tuple[int, ...], torch.dtype]]


class Buffer:
    """Storage and sampling; subclasses add a policy (`add`, `_shrink`)."""

    policy = ""

    def __init__(self, capacity: int, fields: Fields, device: str | torch.device = "cpu"):
        if capacity < 0:
            raise ValueError(f"buffer capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.fields = dict(fields)
        self.data = {name: torch.zeros((capacity, *shape), dtype=dtype, device=self.device)
                     for name, (shape, dtype) in self.fields.items()}
        self.count = 0       # rows in use: 0..count-1
        self.seen = 0        # samples offered so far (the reservoir's stream position)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self.data.values())

    def stored(self) -> dict[str, torch.Tensor]:
        """Every row in use, as views."""
        return {name: t[:self.count] for name, t in self.data.items()}

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.device)
        return {name: t[idx] for name, t in self.data.items()}

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """min(n, count) distinct rows drawn uniformly (as Mammoth's buffer does)."""
        return self.rows(torch.randperm(self.count, generator=generator)[:n])

    def _write(self, start: int, batch: dict[str, torch.Tensor]) -> None:
        n = len(next(iter(batch.values())))
        for name, t in self.data.items():
            t[start:start + n] = batch[name]
        self.count = max(self.count, start + n)

    def _keep(self, idx: torch.Tensor) -> None:
        """Keep rows `idx` (in this order) at the front; drop the rest."""
        kept = self.rows(idx)
        self.count = 0
        self._write(0, kept)

    # -- resizing ------------------------------------------------------------------------------

    def resize(self, capacity: int, generator: torch.Generator) -> Buffer:
        """A new buffer of `capacity` rows holding what this policy keeps of this one's."""
        source = Buffer.from_state(self.state_dict(), self.device)
        if capacity < source.count:
            source._shrink(capacity, generator)
        out = type(self)(capacity, self.fields, self.device)
        out._write(0, source.stored())
        out.seen = self.seen
        return out

    def _shrink(self, capacity: int, generator: torch.Generator) -> None:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"policy": self.policy, "capacity": self.capacity, "count": self.count,
                "seen": self.seen,
                "data": {name: t.detach().clone() for name, t in self.stored().items()}}

    @staticmethod
    def from_state(state: dict, device: str | torch.device = "cpu") -> Buffer:
        """The buffer `state_dict` described, in fresh storage on `device`."""
        cls = POLICIES[state["policy"]]
        fields = {name: (tuple(t.shape[1:]), t.dtype) for name, t in state["data"].items()}
        buffer = cls(state["capacity"], fields, device)
        buffer._write(0, {name: t.to(buffer.device) for name, t in state["data"].items()})
        buffer.count, buffer.seen = state["count"], state["seen"]
        return buffer


class ReservoirBuffer(Buffer):
    policy = "reservoir"

    def add(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        n = len(next(iter(batch.values())))
        fill = min(self.capacity - self.count, n)
        position = torch.arange(self.seen + fill, self.seen + n, dtype=torch.float64)
        drawn = (torch.rand(n - fill, generator=generator, dtype=torch.float64)
                 * (position + 1)).long()                        # j ~ U{0..i}
        slots = torch.cat([torch.arange(self.count, self.count + fill), drawn])
        order = torch.arange(n)
        placed = order[slots < self.capacity]
        # sequential placement: of the samples drawing one slot, the last one stays
        last = torch.full((max(self.capacity, 1),), -1).scatter_reduce(
            0, slots[placed], placed, reduce="amax")
        placed = placed[last[slots[placed]] == placed]
        at, src = slots[placed].to(self.device), placed.to(self.device)
        for name, t in self.data.items():
            t[at] = batch[name][src]
        self.count += fill
        self.seen += n

    def _shrink(self, capacity: int, generator: torch.Generator) -> None:
        # a uniform subset of a uniform sample is a uniform sample
        self._keep(torch.randperm(self.count, generator=generator)[:capacity].sort().values)


def balanced_quota(counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Rows per class: min(count, L) with L the highest level whose total fits `capacity`; the
    rows left over go one each to the lowest classes still above L."""
    if int(counts.sum()) <= capacity:
        return counts.clone()
    low, high = 0, int(counts.max())
    while low < high:                                 # binary search over the level, not samples
        mid = (low + high + 1) // 2
        if int(counts.clamp(max=mid).sum()) <= capacity:
            low = mid
        else:
            high = mid - 1
    quota = counts.clamp(max=low)
    above = counts > low
    spare = capacity - int(quota.sum())
    return quota + (above & (above.cumsum(0) <= spare)).long()


class BalancedBuffer(Buffer):
    """Needs a long field `cls` (the class id each row is balanced on)."""

    policy = "balanced"

    def add(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        n = len(batch["cls"])
        self.seen += n
        old = self.count
        pool = {name: torch.cat([t[:old], batch[name].to(self.device)])
                for name, t in self.data.items()}
        # stored rows first, in random order (random eviction); new rows after, in arrival order
        priority = torch.cat([torch.randperm(old, generator=generator),
                              torch.arange(old, old + n)])
        self.count = 0
        keep = self._balanced(pool["cls"].cpu(), priority, self.capacity).to(self.device)
        self._write(0, {name: t[keep] for name, t in pool.items()})

    def _shrink(self, capacity: int, generator: torch.Generator) -> None:
        priority = torch.randperm(self.count, generator=generator)
        self._keep(self._balanced(self.data["cls"][:self.count].cpu(), priority, capacity))

    @staticmethod
    def _balanced(cls: torch.Tensor, priority: torch.Tensor, capacity: int) -> torch.Tensor:
        """Row indices to keep: each class's `balanced_quota` rows of lowest priority, in row
        order."""
        m = len(cls)
        if m <= capacity:
            return torch.arange(m)
        counts = torch.bincount(cls)
        quota = balanced_quota(counts, capacity)
        order = torch.argsort(cls * m + priority)        # by class, then priority
        start = torch.cumsum(counts, 0) - counts          # each class's first sorted position
        rank = torch.arange(m) - start[cls[order]]
        return order[rank < quota[cls[order]]].sort().values


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL's herding: indices of min(m, n) distinct rows of `features` (n, d), chosen greedily
    so that the mean of the first k chosen is the closest any k-th choice can bring to the mean
    of all rows. One vectorised pass per chosen exemplar."""
    n = len(features)
    m = min(m, n)
    target = features.mean(0)
    chosen = torch.empty(m, dtype=torch.long, device=features.device)
    total = torch.zeros_like(target)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    for k in range(m):
        distance = (target - (total + features) / (k + 1)).pow(2).sum(1)
        distance[taken] = float("inf")
        best = torch.argmin(distance)
        chosen[k], taken[best] = best, True
        total += features[best]
    return chosen


class HerdingBuffer(Buffer):
    """Needs long fields `cls` and `rank` (the row's place in its class's herding order)."""

    policy = "herding"

    def append(self, batch: dict[str, torch.Tensor]) -> None:
        n = len(batch["cls"])
        if self.count + n > self.capacity:
            raise ValueError(f"{n} exemplars do not fit: {self.count} of {self.capacity} used")
        self._write(self.count, {name: t.to(self.device) for name, t in batch.items()})

    def keep_ranked(self, per_class: int) -> None:
        """Keep each class's first `per_class` exemplars (iCaRL's ReduceExemplarSet)."""
        self._keep(torch.nonzero(self.data["rank"][:self.count] < per_class).squeeze(1))

    def _shrink(self, capacity: int, generator: torch.Generator) -> None:
        classes = len(torch.unique(self.data["cls"][:self.count]))
        self.keep_ranked(capacity // classes)


POLICIES: dict[str, type[Buffer]] = {cls.policy: cls for cls in
                                     (ReservoirBuffer, BalancedBuffer, HerdingBuffer)}
