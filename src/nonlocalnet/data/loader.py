"""The deterministic loader: a loader's order depends only on ``(seed, epoch)`` (and the rank's
share of it), whatever the number of workers, so a resumed or distributed run sees the same
batches as a single uninterrupted one."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nonlocalnet.data.batch import collate_clips
from nonlocalnet.data.sampling import mix_seeds
from nonlocalnet.errors import InvalidTypeError, InvalidValueError

__all__ = ["EpochSampler", "build_loader"]


class EpochSampler(Sampler):
    """Deterministic order: a permutation of ``num_items`` from ``(seed, epoch)`` (identity when
    ``shuffle=False``), of which rank ``r`` of ``world`` takes ``perm[r::world]``.

    So the union of the ranks' ``k``-th batches of size ``b`` is the ``k``-th batch of size
    ``world * b`` of a single process. Uneven lengths: with ``drop_last`` the permutation is cut
    to a multiple of ``world``; otherwise it is padded by repeating its first items
    (:attr:`num_padded` of them), so every rank yields as many items; evaluation drops the repeats
    by their ``(index, clip)``. ``start_batch`` skips the first batches of ``batch_size`` items of
    the pass of ``epoch`` (the epoch given here: resuming mid-epoch); the passes of other epochs
    are whole. Iterating has no side effect, so a loader may call ``iter`` more than once per pass
    (PyTorch's multi-process loader does). With ``epoch_keys`` it yields ``(index, epoch)``.
    """

    def __init__(
        self,
        num_items: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        batch_size: int = 1,
        start_batch: int = 0,
        epoch: int = 0,
        epoch_keys: bool = False,
    ) -> None:
        if num_items < 0:
            raise InvalidValueError(f"num_items must be >= 0, got {num_items}")
        if world < 1 or not 0 <= rank < world:
            raise InvalidValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
        if batch_size < 1:
            raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise InvalidValueError(f"start_batch must be >= 0, got {start_batch}")
        self.num_items, self.shuffle, self.seed = num_items, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.batch_size, self.start_batch, self.epoch = batch_size, start_batch, epoch
        self.resume_epoch, self.epoch_keys = epoch, epoch_keys

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (changes the permutation and the items' randomness)."""
        self.epoch = int(epoch)

    @property
    def num_padded(self) -> int:
        """How many repeated items the ranks' shares hold in total (0 with ``drop_last``)."""
        if self.drop_last or self.num_items == 0:
            return 0
        return math.ceil(self.num_items / self.world) * self.world - self.num_items

    def _order(self) -> list[int]:
        n = self.num_items
        if self.shuffle:
            gen = torch.Generator().manual_seed(mix_seeds(self.seed, self.epoch))
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: n - n % self.world]
        elif order:
            pad = self.num_padded
            order += (order * (pad // n + 1))[:pad]
        return order

    @property
    def skipped_batches(self) -> int:
        """The batches the next pass skips: ``start_batch`` in the resumed epoch, else 0."""
        return self.start_batch if self.epoch == self.resume_epoch else 0

    def indices(self) -> list[int]:
        """This rank's items for the next pass (after the skipped batches)."""
        return self._order()[self.rank :: self.world][self.skipped_batches * self.batch_size :]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices, epoch = self.indices(), self.epoch
        if self.epoch_keys:
            return iter([(i, epoch) for i in indices])
        return iter(indices)

    def __len__(self) -> int:
        return len(self.indices())


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    distributed: tuple[int, int] | None = None,
    drop_last: bool,
    pin_memory: bool | None = None,
    start_batch: int = 0,
    epoch: int = 0,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochSampler` (``distributed=(rank, world)``)
    and :func:`collate_clips`.

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``:
    a dataset with ``epoch_keys`` (:class:`VideoClipDataset`) then receives the epoch with every
    index, which persistent workers need. ``start_batch`` skips that many batches of the first
    pass (resuming mid-epoch). Workers persist between epochs when ``num_workers > 0``;
    ``pin_memory`` defaults to whether CUDA is available.
    """
    if not isinstance(dataset, Sized):
        kind = type(dataset).__name__
        raise InvalidTypeError(f"dataset must have a length (a map-style Dataset), got {kind}")
    rank, world = distributed if distributed is not None else (0, 1)
    sampler = EpochSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world=world,
        drop_last=drop_last,
        batch_size=batch_size,
        start_batch=start_batch,
        epoch=epoch,
        epoch_keys=bool(getattr(dataset, "epoch_keys", False)),
    )
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        # the workers' base seed comes from here, not from the global generator
        generator=torch.Generator().manual_seed(mix_seeds(seed, -1)),
    )
