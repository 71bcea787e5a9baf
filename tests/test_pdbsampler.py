import pytest
from torch.utils.data import ConcatDataset

from wgpt.data.pdbsampler import PDBSampler


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
