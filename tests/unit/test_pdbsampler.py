import pytest
from torch.utils.data import ConcatDataset

from wgpt.data.pdbsampler import PDBSampler
from wgpt.util.errors import WgptError


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def rank_batches(sizes, world_size, batch_size=4, epoch=0, **kwargs):
    out = []
    for rank in range(world_size):
        sampler = PDBSampler([Sized(n) for n in sizes], batch_size, world_size, rank, **kwargs)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_samples_and_equal_batch_counts(world_size):
    per_rank = rank_batches([37, 101], world_size)
    assert len({len(batches) for batches in per_rank}) == 1
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)


def test_every_batch_comes_from_one_dataset():
    sizes = [37, 101]
    owner = lambda i: 0 if i < 37 else 1  # noqa: E731
    for batch in rank_batches(sizes, 2)[0]:
        assert len({owner(i) for i in batch}) == 1


def test_order_depends_only_on_seed_and_epoch():
    assert rank_batches([50, 30], 2, seed=1) == rank_batches([50, 30], 2, seed=1)
    assert rank_batches([50, 30], 2, seed=1) != rank_batches([50, 30], 2, seed=2)
    assert rank_batches([50, 30], 2, epoch=0) != rank_batches([50, 30], 2, epoch=1)


def test_indices_address_the_concatenation():
    datasets = [Sized(10), Sized(20)]
    batches = list(PDBSampler(datasets, 5, 1, 0))
    assert sorted(i for b in batches for i in b) == list(range(30))
    assert len(ConcatDataset(datasets)) == 30


def test_plain_distributed_sampling_without_proportions():
    batches = rank_batches([10, 10], 1, batch_size=5, shuffle=False, proportional_sampling=False)[0]
    assert batches == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_all_ranks_draw_from_the_same_dataset_at_each_step(world_size):
    sizes = [37, 101, 64]
    owner = lambda i: sum(i >= start for start in (37, 138))  # noqa: E731
    per_rank = rank_batches(sizes, world_size, seed=5)
    for step in zip(*per_rank):
        owners = {owner(i) for batch in step for i in batch}
        assert len(owners) == 1
    # Each dataset contributes its whole batches: size // (batch_size * world_size) per rank.
    counts = [sum(owner(b[0]) == d for b in per_rank[0]) for d in range(3)]
    assert counts == [n // (4 * world_size) for n in sizes]
    sampler = PDBSampler([Sized(n) for n in sizes], 4, world_size, 0)
    assert len(sampler) == len(list(sampler)) == sum(counts)


@pytest.mark.parametrize("world_size", [2, 3])
def test_plain_distributed_sampling_shards_disjointly(world_size):
    per_rank = rank_batches([25, 16], world_size, batch_size=3, proportional_sampling=False)
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == 41 // (3 * world_size)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))


def chi_square(observed, expected):
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


def test_proportions_follow_sizes_over_many_batches():
    sizes = [4000, 2000, 1000]
    owner = lambda i: sum(i >= start for start in (4000, 6000))  # noqa: E731
    # The dataset a given step draws, over many epochs, follows the sizes: a random draw, not
    # a fixed pattern (every epoch holds exactly size // (batch * ranks) batches of each).
    at_step = {0: [0, 0, 0], 50: [0, 0, 0]}
    for epoch in range(300):
        batches = rank_batches(sizes, 2, batch_size=8, epoch=epoch)[0]
        for step, counts in at_step.items():
            counts[owner(batches[step][0])] += 1
    for counts in at_step.values():
        assert chi_square(counts, [300 * s / sum(sizes) for s in sizes]) < 13.8  # chi2(df=2), p = 0.001
    per_epoch = [sum(owner(b[0]) == d for b in rank_batches(sizes, 2, batch_size=8)[0]) for d in range(3)]
    assert per_epoch == [s // 16 for s in sizes]


def test_mixture_weights_override_sizes():
    sizes, weights = [4000, 400], [0.3, 0.7]
    batches = rank_batches(sizes, 2, batch_size=8, weights=weights)[0]
    counts = [sum(b[0] < 4000 for b in batches), sum(b[0] >= 4000 for b in batches)]
    assert chi_square(counts, [len(batches) * w for w in weights]) < 10.8  # chi2(df=1), p = 0.001
    assert all(len({i < 4000 for i in b}) == 1 for b in batches)
    # The small dataset is reshuffled and cycled when it runs out: within one pass no repeats.
    small = [b for b in batches if b[0] >= 4000]
    per_pass = 400 // 16
    first_pass = [i for b in small[:per_pass] for i in b]
    assert len(first_pass) == len(set(first_pass))


def test_weights_must_match_the_datasets():
    with pytest.raises(ValueError, match="one non-negative number per dataset"):
        PDBSampler([Sized(10), Sized(10)], 2, 1, 0, weights=[1.0])
    with pytest.raises(ValueError, match="need proportional_sampling=True"):
        PDBSampler([Sized(10), Sized(10)], 2, 1, 0, weights=[1.0, 1.0], proportional_sampling=False)


def test_a_position_saved_for_other_devices_is_refused():
    state = PDBSampler([Sized(40)], 4, 2, 0).state_dict(3)
    with pytest.raises(
        WgptError,
        match=r"^the checkpoint's data position is for data.batch_size=4 on 2 device\(s\), this run has 4 on 1: ",
    ):
        PDBSampler([Sized(40)], 4, 1, 0).load_state_dict(state)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("steps", [0, 5, 17])
def test_state_resumes_exactly_where_it_stopped(world_size, steps):
    sizes = [101, 57]
    for rank in range(world_size):
        full = PDBSampler([Sized(n) for n in sizes], 4, world_size, rank, seed=9)
        full.set_epoch(2)
        batches = list(full)
        if steps >= len(batches):
            continue
        state = full.state_dict(steps)
        assert state == {"seed": 9, "epoch": 2, "steps": steps, "batch_size": 4, "world_size": world_size}  # no rank
        resumed = PDBSampler([Sized(n) for n in sizes], 4, world_size, rank, seed=0)
        resumed.load_state_dict(state)
        assert list(resumed) == batches[steps:]
        assert list(resumed) == batches  # later iterators run whole epochs again


def test_state_saved_on_the_last_batch_resumes_at_the_next_epoch():
    sampler = PDBSampler([Sized(40)], 4, 1, 0)
    sampler.load_state_dict({"seed": 0, "epoch": 3, "steps": len(sampler)})
    nxt = PDBSampler([Sized(40)], 4, 1, 0)
    nxt.set_epoch(4)
    assert sampler.epoch == 4 and list(sampler) == list(nxt)
