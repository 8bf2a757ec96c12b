"""Detection loaders: aspect-ratio grouped training batches with the exact-resume semantics of
:class:`~nonlocalnet.data.EpochSampler`, and sharded evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nonlocalnet.data.loader import EpochSampler
from nonlocalnet.data.sampling import mix_seeds
from nonlocalnet.detection.batch import collate_detection
from nonlocalnet.errors import InvalidTypeError, InvalidValueError

__all__ = ["GroupedBatchSampler", "build_detection_loader"]


class GroupedBatchSampler(Sampler):
    """Batches of items of one group (e.g. landscape / portrait images) where possible.

    The order is :class:`EpochSampler`'s: a permutation from ``(seed, epoch)`` (identity without
    ``shuffle``) cut to a multiple of ``world``, of which rank ``r`` takes ``perm[r::world]``.
    Walking its share, a rank buffers items per group and emits a batch whenever a group's buffer
    holds ``batch_size`` items (the idea of torchvision's reference ``GroupedBatchSampler``). The
    items left in the buffers at the end form mixed batches in the order they came, so a pass has
    exactly ``len(share) // batch_size`` batches (an incomplete last batch is dropped) and no item
    repeats. ``start_batch`` skips the first batches of the pass of ``epoch`` (the epoch given
    here: resuming mid-epoch); the passes of other epochs are whole. Iterating has no side effect:
    PyTorch's multi-process loader calls ``iter`` twice on its first pass. Batches are lists of
    ``(index, epoch)`` keys with ``epoch_keys``, else of indices.
    """

    def __init__(
        self,
        groups: Sequence[int],
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        epoch: int = 0,
        epoch_keys: bool = True,
    ) -> None:
        if batch_size < 1:
            raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise InvalidValueError(f"start_batch must be >= 0, got {start_batch}")
        self.groups = [int(g) for g in groups]
        # checks rank/world and gives the order
        self._order = EpochSampler(
            len(self.groups), shuffle=shuffle, seed=seed, rank=rank, world=world, drop_last=True, epoch=epoch
        )
        self.batch_size, self.start_batch, self.epoch_keys = batch_size, start_batch, epoch_keys
        self.resume_epoch = epoch

    @property
    def epoch(self) -> int:
        return self._order.epoch

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (changes the permutation and the items' randomness)."""
        self._order.set_epoch(epoch)

    @property
    def skipped_batches(self) -> int:
        """The batches the next pass skips: ``start_batch`` in the resumed epoch, else 0."""
        return self.start_batch if self.epoch == self.resume_epoch else 0

    def batches(self) -> list[list[int]]:
        """All batches of this rank's share for the next pass (none skipped)."""
        size = self.batch_size
        buffers: dict[int, list[int]] = {}
        out: list[list[int]] = []
        share = self._order.indices()
        for i in share:
            buf = buffers.setdefault(self.groups[i], [])
            buf.append(i)
            if len(buf) == size:
                out.append(list(buf))
                buf.clear()
        position = {i: n for n, i in enumerate(share)}
        rest = sorted((i for buf in buffers.values() for i in buf), key=position.__getitem__)
        out += [rest[k : k + size] for k in range(0, len(rest) - size + 1, size)]
        return out

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        batches, epoch = self.batches()[self.skipped_batches :], self.epoch
        if self.epoch_keys:
            return iter([[(i, epoch) for i in b] for b in batches])
        return iter(batches)

    def __len__(self) -> int:
        return max(len(self._order) // self.batch_size - self.skipped_batches, 0)


@runtime_checkable
class _AspectGrouped(Protocol):
    """A dataset whose items have aspect-ratio groups (:meth:`CocoDetection.aspect_groups`)."""

    def aspect_groups(self) -> list[int]: ...


def build_detection_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    distributed: tuple[int, int] | None,
    train: bool,
    aspect_ratio_grouping: bool = True,
    start_batch: int = 0,
    epoch: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader of :class:`~nonlocalnet.detection.batch.DetectionBatch`\\ es.

    ``train``: full batches from a :class:`GroupedBatchSampler` (grouped by
    ``dataset.aspect_groups()`` when ``aspect_ratio_grouping``); call
    ``loader.batch_sampler.set_epoch(e)`` before each epoch. Otherwise every item once per rank
    share from an :class:`EpochSampler` (``drop_last=False``: the last ranks repeat a few first
    items, which evaluation drops by index). Workers are seeded from ``mix_seeds(seed, -1)`` and
    persist when ``num_workers > 0``; ``pin_memory`` defaults to whether CUDA is available.
    """
    rank, world = distributed if distributed is not None else (0, 1)
    epoch_keys = bool(getattr(dataset, "epoch_keys", False))
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if not isinstance(dataset, Sized):
        kind = type(dataset).__name__
        raise InvalidTypeError(f"dataset must have a length (a map-style Dataset), got {kind}")
    common: dict[str, Any] = {  # DataLoader's keywords
        "num_workers": num_workers,
        "collate_fn": collate_detection,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
        "persistent_workers": num_workers > 0,
        # the workers' base seed comes from here, not from the global generator
        "generator": torch.Generator().manual_seed(mix_seeds(seed, -1)),
    }
    if train:
        groups = [0] * len(dataset)
        if aspect_ratio_grouping:
            if not isinstance(dataset, _AspectGrouped):
                kind = type(dataset).__name__
                raise InvalidTypeError(f"aspect_ratio_grouping needs a dataset with aspect_groups(): {kind}")
            groups = dataset.aspect_groups()
        batch_sampler = GroupedBatchSampler(
            groups, batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world,
            start_batch=start_batch, epoch=epoch, epoch_keys=epoch_keys,
        )  # fmt: skip
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    sampler = EpochSampler(
        len(dataset), shuffle=shuffle, seed=seed, rank=rank, world=world, drop_last=False,
        batch_size=batch_size, start_batch=start_batch, epoch=epoch, epoch_keys=epoch_keys,
    )  # fmt: skip
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False, **common)
