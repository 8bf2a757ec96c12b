"""GroupedBatchSampler: deterministic, exact length, ranks partition the items, exact resume,
groups kept where possible; and the detection loaders."""

from __future__ import annotations

import pytest
import torch

from nonlocalnet.detection.batch import DetectionBatch
from nonlocalnet.detection.coco import CocoDetection
from nonlocalnet.detection.sampler import GroupedBatchSampler, build_detection_loader
from nonlocalnet.errors import InvalidValueError

GROUPS = [0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1]  # 23 items


def sampler(**kw) -> GroupedBatchSampler:
    args = {"batch_size": 3, "shuffle": True, "seed": 7} | kw
    return GroupedBatchSampler(kw.pop("groups", GROUPS), **{k: v for k, v in args.items() if k != "groups"})


def indices(batches) -> list[list[int]]:
    return [[i for i, _ in b] for b in batches]


def test_order_is_deterministic_and_changes_with_the_epoch():
    a, b = list(sampler()), list(sampler())
    assert a == b
    assert all(e == 0 for batch in a for _, e in batch)
    s = sampler()
    s.set_epoch(1)
    c = list(s)
    assert indices(c) != indices(a) and all(e == 1 for batch in c for _, e in batch)
    assert indices(list(sampler(seed=8))) != indices(a)
    assert list(sampler(epoch_keys=False)) == indices(a)


@pytest.mark.parametrize(("world", "batch_size"), [(1, 3), (2, 3), (3, 2), (4, 5)])
def test_length_is_exact_and_no_item_repeats(world, batch_size):
    for rank in range(world):
        s = sampler(world=world, rank=rank, batch_size=batch_size)
        batches = list(s)
        share = len(GROUPS) // world
        assert len(s) == len(batches) == share // batch_size
        assert all(len(b) == batch_size for b in batches)
        flat = [i for b in indices(batches) for i in b]
        assert len(flat) == len(set(flat))


def test_union_over_ranks_is_the_single_process_items():
    groups = GROUPS[:18]  # 2 ranks x 9 items = 3 batches of 3 each; one process: 6 batches of 3
    single = {i for b in indices(sampler(groups=groups)) for i in b}
    ranks = [{i for b in indices(sampler(groups=groups, world=2, rank=r)) for i in b} for r in range(2)]
    assert ranks[0].isdisjoint(ranks[1])
    assert ranks[0] | ranks[1] == single == set(range(18))


def test_ranks_take_the_epoch_samplers_shares():
    from nonlocalnet.data.loader import EpochSampler

    for rank in range(2):
        items = {i for b in sampler(world=2, rank=rank, epoch_keys=False) for i in b}
        share = EpochSampler(len(GROUPS), shuffle=True, seed=7, rank=rank, world=2, drop_last=True).indices()
        assert items <= set(share)


@pytest.mark.parametrize("start", [0, 1, 3, 5, 8])
def test_start_batch_resumes_the_uninterrupted_pass(start):
    full = list(sampler(epoch=2, world=2, rank=1, batch_size=2))
    resumed = sampler(epoch=2, world=2, rank=1, batch_size=2, start_batch=start)
    assert len(full) == 5 and len(resumed) == max(len(full) - start, 0)
    assert list(resumed) == full[start:]
    assert list(resumed) == full[start:]  # iterating has no side effect
    resumed.set_epoch(3)
    assert len(resumed) == 5
    assert list(resumed) == list(sampler(epoch=3, world=2, rank=1, batch_size=2))  # other epochs: whole


def test_batches_keep_one_group_where_possible():
    for epoch in range(5):
        for bs in (2, 3, 4):
            s = sampler(epoch=epoch, batch_size=bs)
            batches = indices(s)
            mixed = [b for b in batches if len({GROUPS[i] for i in b}) > 1]
            assert len(mixed) <= 1  # two groups: the leftovers make at most one mixed batch
            pure = [b for b in batches if b not in mixed]
            assert batches[: len(pure)] == pure  # the mixed one comes last
    # without shuffling or grouping, batches are consecutive items
    assert indices(sampler(groups=[0] * 10, shuffle=False, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # two groups of a multiple of the batch size: no batch is mixed
    groups = [0, 1] * 6
    assert all(len({groups[i] for i in b}) == 1 for b in indices(sampler(groups=groups, batch_size=3)))


def test_bad_arguments():
    with pytest.raises(InvalidValueError):
        sampler(batch_size=0)
    with pytest.raises(InvalidValueError):
        sampler(world=2, rank=2)
    with pytest.raises(InvalidValueError):
        sampler(start_batch=-1)


def test_training_loader_groups_and_is_deterministic(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=True, skip_empty=False, seed=1)  # 7 images, 1 portrait
    loader = build_detection_loader(
        ds, batch_size=2, shuffle=True, seed=1, num_workers=0, distributed=None, train=True
    )
    assert isinstance(loader.batch_sampler, GroupedBatchSampler) and len(loader) == 3
    loader.batch_sampler.set_epoch(4)
    batches = list(loader)
    assert all(isinstance(b, DetectionBatch) for b in batches)
    seen = [b.indices + [x.index for x in b.bad] for b in batches]
    assert seen == loader.batch_sampler.batches()
    flips = [ds.flipped(i, 4) for b in seen for i in b]
    workers = build_detection_loader(
        ds, batch_size=2, shuffle=True, seed=1, num_workers=1, distributed=None, train=True, epoch=4
    )
    again = list(workers)
    assert [b.indices + [x.index for x in b.bad] for b in again] == seen
    for a, b in zip(batches, again, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert flips == [ds.flipped(i, 4) for b in seen for i in b]


def test_evaluation_loader_covers_every_image_once_per_share(tiny_coco):
    ds = CocoDetection(*tiny_coco, train=False)  # 7 images
    seen = []
    for rank in range(2):
        loader = build_detection_loader(
            ds, batch_size=3, shuffle=False, seed=0, num_workers=0, distributed=(rank, 2), train=False
        )
        seen.append([i for b in loader for i in b.indices + [x.index for x in b.bad]])
    assert len(seen[0]) == len(seen[1]) == 4  # one padded repeat
    assert set(seen[0]) | set(seen[1]) == set(range(7))


@pytest.mark.parametrize("workers", [2, 4])
def test_a_resumed_loader_with_workers_yields_the_rest_of_the_pass(tiny_coco, workers):
    """PyTorch's multi-process loader calls ``iter(batch_sampler)`` twice on its first pass; a
    sampler that forgot ``start_batch`` on the first call trained the epoch's first batches again."""
    ds = CocoDetection(*tiny_coco, train=True, skip_empty=False, seed=1)  # 7 images, 1 portrait

    def seen(start: int, num_workers: int, epochs=(4, 5)) -> list[list[int]]:
        loader = build_detection_loader(
            ds, batch_size=2, shuffle=True, seed=1, num_workers=num_workers, distributed=None, train=True,
            start_batch=start, epoch=epochs[0],
        )  # fmt: skip
        out = []
        for epoch in epochs:
            loader.batch_sampler.set_epoch(epoch)
            out.append([b.indices + [x.index for x in b.bad] for b in loader])
        return out

    full = seen(0, 0)
    assert seen(1, workers) == [full[0][1:], full[1]]
    assert seen(0, workers) == full
