"""The rehearsal memory: reservoir uniformity (statistically) and its sequential semantics
(exactly), GDumb's class balance, herding by hand, resizing, sampling and the checkpoint format."""

import io
import math

import pytest
import torch

from lifelab.learners.buffer import (
    BalancedBuffer,
    Buffer,
    HerdingBuffer,
    ReservoirBuffer,
    balanced_quota,
    herding,
)

POSITION = {"x": ((1,), torch.long)}
LABELLED = {"x": ((1,), torch.long), "cls": ((), torch.long)}


def positions(start, n):
    return {"x": torch.arange(start, start + n).unsqueeze(1)}


def offer(buffer, total, batch, generator):
    for start in range(0, total, batch):
        buffer.add(positions(start, min(batch, total - start)), generator)


# -- reservoir -------------------------------------------------------------------------------

def test_reservoir_keeps_every_stream_position_with_equal_probability():
    """N = 200 positions offered in batches of 7 to a buffer of 20, R = 600 times: each position's
    count is Binomial(R, 20/200) (mean 60, sd 7.3). Checked per position (5 sd), over the first
    and last 20 positions (where a wrong fill or replacement rule shows: 5 sd of a mean of 20) and
    as a chi-square over all 200 (199 dof: mean 199, sd 20; bound at 5 sd)."""
    n, capacity, batch, repeats = 200, 20, 7, 600
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros(n)
    for _ in range(repeats):
        buffer = ReservoirBuffer(capacity, POSITION)
        offer(buffer, n, batch, generator)
        assert len(buffer) == capacity and buffer.seen == n
        stored = buffer.stored()["x"].squeeze(1)
        assert len(torch.unique(stored)) == capacity          # no sample stored twice
        counts[stored] += 1
    p = capacity / n
    mean, sd = repeats * p, math.sqrt(repeats * p * (1 - p))
    assert counts.sum() == repeats * capacity
    assert (counts - mean).abs().max() < 5 * sd
    for group in (counts[:20], counts[-20:]):
        assert abs(group.mean() - mean) < 5 * sd / math.sqrt(20)
    chi2 = ((counts - mean) ** 2 / sd**2).sum()
    assert chi2 < (n - 1) + 5 * math.sqrt(2 * (n - 1))


def test_reservoir_batch_places_as_algorithm_r_one_sample_at_a_time():
    """The same uniform draws, applied one sample at a time: slot j = floor(u * (i + 1)) replaced
    if j < capacity. Batches of 9 into 5 slots make in-batch collisions common."""
    capacity, batch, total = 5, 9, 90
    generator = torch.Generator().manual_seed(7)
    buffer = ReservoirBuffer(capacity, POSITION)
    want = []
    for start in range(0, total, batch):
        state = generator.get_state()
        buffer.add(positions(start, batch), generator)
        fill = max(0, min(capacity - len(want), batch))
        u = torch.rand(batch - fill, generator=torch.Generator().set_state(state),
                       dtype=torch.float64)
        for k, i in enumerate(range(start, start + batch)):
            if k < fill:
                want.append(i)
                continue
            j = int(u[k - fill] * (i + 1))
            if j < capacity:
                want[j] = i
        assert buffer.stored()["x"].squeeze(1).tolist() == want


def test_reservoir_fills_in_order_then_seen_counts_every_offer():
    buffer = ReservoirBuffer(10, POSITION)
    offer(buffer, 6, 4, torch.Generator())
    assert buffer.stored()["x"].squeeze(1).tolist() == list(range(6)) and buffer.seen == 6


def test_sample_draws_distinct_rows_up_to_the_count():
    buffer = ReservoirBuffer(50, POSITION)
    offer(buffer, 30, 30, torch.Generator())
    rows = buffer.sample(20, torch.Generator().manual_seed(0))["x"].squeeze(1)
    assert len(rows) == 20 and len(torch.unique(rows)) == 20
    assert sorted(buffer.sample(100, torch.Generator())["x"].squeeze(1).tolist()) == \
        list(range(30))


def test_nbytes_are_the_preallocated_tensors():
    buffer = ReservoirBuffer(100, {"x": ((784,), torch.float32), "y": ((), torch.long)})
    assert buffer.nbytes == 100 * 784 * 4 + 100 * 8
    assert len(buffer) == 0


# -- class-balanced (GDumb) ------------------------------------------------------------------

def test_balanced_quota_by_hand():
    counts = torch.tensor([5, 1, 9, 3])
    assert balanced_quota(counts, 10).tolist() == [3, 1, 3, 3]     # level 3: 3+1+3+3 = 10
    assert balanced_quota(counts, 11).tolist() == [4, 1, 3, 3]     # one spare: lowest class id
    assert balanced_quota(counts, 30).tolist() == [5, 1, 9, 3]     # everything fits


def labelled(cls, start):
    return {"x": torch.arange(start, start + len(cls)).unsqueeze(1), "cls": cls}


def test_balanced_buffer_stays_class_balanced_as_classes_arrive():
    generator = torch.Generator().manual_seed(0)
    buffer = BalancedBuffer(12, LABELLED)
    start, before = 0, set()
    for task in range(4):                                   # two classes per task, 10 samples
        cls = torch.tensor([2 * task, 2 * task + 1] * 5)
        buffer.add(labelled(cls, start), generator)
        start += len(cls)
        stored = buffer.stored()
        counts = torch.bincount(stored["cls"], minlength=2 * task + 2)
        assert len(buffer) == counts.sum() == min(12, start)
        assert counts.max() - counts.min() <= 1
        # a stored sample leaves only to make room; new samples are the ones that arrived
        ids = set(stored["x"].squeeze(1).tolist())
        old = {i for i in ids if i < start - len(cls)}
        assert old <= before
        before = ids


def test_balanced_buffer_keeps_every_sample_of_a_rare_class():
    buffer = BalancedBuffer(10, LABELLED)
    buffer.add(labelled(torch.tensor([0] * 20 + [1] * 2), 0), torch.Generator())
    counts = torch.bincount(buffer.stored()["cls"]).tolist()
    assert counts == [8, 2]
    # new samples fill a class in arrival order
    assert buffer.stored()["x"].squeeze(1)[:8].tolist() == list(range(8))


# -- herding ---------------------------------------------------------------------------------

def test_herding_by_hand():
    """1-D features 0, 1, 2, 3, 10 (mean 3.2). k=1: 3 (mean 3). k=2: 2 (means 2.5; 10 gives
    6.5). k=3: 1 (2 vs 1.67 from 0 and 5 from 10). k=4: 10 (4, |0.8|, vs 1.5 from 0). k=5: 0."""
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding(features, 5).tolist() == [3, 2, 1, 4, 0]
    assert herding(features, 2).tolist() == [3, 2]


def test_herding_mean_is_the_closest_any_greedy_choice_reaches():
    features = torch.randn(40, 3, generator=torch.Generator().manual_seed(3))
    target = features.mean(0)
    chosen = herding(features, 12).tolist()
    assert len(set(chosen)) == 12
    for k in range(12):
        prefix = features[chosen[:k]].sum(0)
        def gap(i, prefix=prefix, k=k):
            return (target - (prefix + features[i]) / (k + 1)).norm()
        others = [gap(i) for i in range(40) if i not in chosen[:k]]
        assert gap(chosen[k]) <= min(others) + 1e-6


def ranked(cls, rank, start):
    return {"x": torch.arange(start, start + len(cls)).unsqueeze(1), "cls": torch.tensor(cls),
            "rank": torch.tensor(rank)}


def test_herding_buffer_keeps_each_classes_best_ranked():
    buffer = HerdingBuffer(8, {**LABELLED, "rank": ((), torch.long)})
    buffer.append(ranked([0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 0, 1, 2, 3], 0))
    with pytest.raises(ValueError, match="do not fit"):
        buffer.append(ranked([2], [0], 8))
    buffer.keep_ranked(2)
    assert buffer.stored()["x"].squeeze(1).tolist() == [0, 1, 4, 5]


# -- resizing and state ----------------------------------------------------------------------

def test_a_smaller_reservoir_keeps_a_subset_a_larger_one_fills():
    generator = torch.Generator().manual_seed(5)
    buffer = ReservoirBuffer(20, POSITION)
    offer(buffer, 100, 10, generator)
    before = set(buffer.stored()["x"].squeeze(1).tolist())
    small = buffer.resize(8, generator)
    assert small.capacity == 8 and len(small) == 8 and small.seen == 100
    assert set(small.stored()["x"].squeeze(1).tolist()) <= before
    assert len(buffer) == 20                          # the source is left as it was
    large = small.resize(30, generator)
    assert len(large) == 8
    large.add(positions(100, 5), generator)            # fills before it replaces
    assert large.stored()["x"].squeeze(1).tolist()[8:] == [100, 101, 102, 103, 104]


def test_a_smaller_balanced_buffer_stays_balanced_and_herding_keeps_ranks():
    generator = torch.Generator().manual_seed(0)
    buffer = BalancedBuffer(12, LABELLED)
    buffer.add(labelled(torch.tensor([0, 1, 2] * 10), 0), generator)
    small = buffer.resize(7, generator)
    assert torch.bincount(small.stored()["cls"]).tolist() == [3, 2, 2]
    herd = HerdingBuffer(8, {**LABELLED, "rank": ((), torch.long)})
    herd.append(ranked([0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 0, 1, 2, 3], 0))
    assert herd.resize(4, generator).stored()["x"].squeeze(1).tolist() == [0, 1, 4, 5]


@pytest.mark.parametrize("cls", [ReservoirBuffer, BalancedBuffer])
def test_state_is_plain_and_round_trips(cls):
    generator = torch.Generator().manual_seed(0)
    buffer = cls(10, {**LABELLED, "z": ((3,), torch.float32)})
    batch = labelled(torch.arange(15) % 4, 0)
    buffer.add({**batch, "z": torch.randn(15, 3, generator=generator)}, generator)
    saved = io.BytesIO()
    torch.save(buffer.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    restored = Buffer.from_state(state)
    assert type(restored) is cls and restored.capacity == 10
    assert (restored.count, restored.seen) == (buffer.count, buffer.seen)
    for name, t in buffer.stored().items():
        assert torch.equal(restored.stored()[name], t)
    assert restored.data["x"].shape == (10, 1)         # full preallocation again
