"""Batches from worker processes: a `torch.utils.data.DataLoader` over the plan's batch order.

The order is the one `runtime.train.data` computes (`TrainData.epoch`); the loader's sampler yields it
batch by batch from the position training starts at (0, or a checkpoint's), so a resumed run reads the
same batches as an uninterrupted one. Workers (`data.loader.workers` of the plan) read, check, decode
and augment whole batches ahead of the step, `data.loader.prefetch` batches each; with 0 workers the
batches are made in the training process, as they are consumed.

A batch's randomness (flip, crop, colour jitter, caption dropout and shuffling) comes from its own
generator, seeded from the plan's seed and the batch's place in the run (`data_seed`): whichever process
makes a batch, and however many there are, it is the same batch. A worker that meets an image whose
bytes changed (`InputChanged`) or cannot be decoded hands the error back with the batch, and the training
process raises it as if it had read the image itself: the run stops with exit 3, never with a worker's
traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from runtime import RunError
from runtime.train.data import Batch, TrainData, make_batch, note_bad


class Ticket(NamedTuple):
    """One batch to make: where it sits in the run, its samples and the seed of its randomness."""

    epoch: int
    index: int  # within this rank's epoch
    indices: tuple[int, ...]
    seed: int


@dataclass(frozen=True)
class Loader:
    """The plan's `data.loader`."""

    workers: int
    prefetch: int
    pin_memory: bool

    @classmethod
    def of(cls, plan: dict[str, Any]) -> Loader:
        section = plan["data"]["loader"]
        return cls(int(section["workers"]), int(section["prefetch"]), bool(section["pin_memory"]))


@dataclass
class Failed:
    """A worker's known failure, handed back instead of a batch."""

    error: RunError


def data_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of a batch's augmentation and caption randomness, from the run's seed and the batch's
    global position (index × processes + rank): the same wherever and whenever the batch is made."""
    digest = hashlib.sha256(f"data:{seed}:{epoch}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def batch_stream(data: TrainData, epoch: int = 0, start: int = 0) -> Iterator[tuple[int, int, list[int]]]:
    """Batches in training order from (epoch, start) on: (epoch, index within the epoch, sample indices)."""
    while True:
        for index, indices in enumerate(data.epoch(epoch)):
            if index >= start:
                yield epoch, index, indices
        epoch, start = epoch + 1, 0


class Order(Sampler[Ticket]):
    """The run's batches from a position on, endlessly (the loop stops at the plan's last step)."""

    def __init__(self, data: TrainData, epoch: int, start: int) -> None:
        self.data, self.epoch, self.start = data, epoch, start

    def __iter__(self) -> Iterator[Ticket]:
        data = self.data
        for epoch, index, indices in batch_stream(data, self.epoch, self.start):
            seed = data_seed(data.seed, epoch, index * data.world + data.rank)
            yield Ticket(epoch, index, tuple(indices), seed)


class Batches(Dataset[Any]):
    """Makes the batch of a ticket; the images a batch had to skip travel with it (`Batch.skipped`)."""

    def __init__(self, data: TrainData, pixels: bool) -> None:
        self.data, self.pixels = data, pixels

    def __getitem__(self, ticket: Ticket) -> tuple[Ticket, Batch | Failed]:
        data = self.data
        known = len(data.skips)
        try:
            batch = make_batch(data, list(ticket.indices), random.Random(ticket.seed), pixels=self.pixels,
                               substitute=True)
        except RunError as exc:
            return ticket, Failed(exc)
        batch.skipped = data.skips[known:]
        return ticket, batch

    def __len__(self) -> int:  # the order is endless; DataLoader never asks with a sampler given
        raise TypeError("the batch order has no length")


def _keep(item: Any) -> Any:
    return item


def make_loader(data: TrainData, loader: Loader, pixels: bool, epoch: int, start: int) -> DataLoader[Any]:
    """The DataLoader of a run from (epoch, start) on. Its own generator seeds the workers, so making
    it draws nothing from the training process's random state."""
    workers = loader.workers
    return DataLoader(
        Batches(data, pixels),
        batch_size=None,
        sampler=Order(data, epoch, start),
        num_workers=workers,
        prefetch_factor=loader.prefetch if workers > 0 else None,
        pin_memory=loader.pin_memory and torch.cuda.is_available(),
        collate_fn=_keep,
        generator=torch.Generator().manual_seed(data.seed),
    )


@contextlib.contextmanager
def batches(data: TrainData, loader: Loader, pixels: bool, epoch: int = 0,
            start: int = 0) -> Iterator[Iterator[tuple[Ticket, Batch]]]:
    """The run's batches in training order from (epoch, start); the workers stop when the block ends."""
    iterator = iter(make_loader(data, loader, pixels, epoch, start))
    try:
        yield _received(data, iterator)
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _received(data: TrainData,
              iterator: Iterator[tuple[Ticket, Batch | Failed]]) -> Iterator[tuple[Ticket, Batch]]:
    """Batches as they arrive: a worker's failure raised here, its skipped images noted in `data`."""
    while True:
        try:
            ticket, batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise RunError(f"a data loading worker stopped: {exc}; fewer workers (`loader workers N`) "
                           "need less memory") from exc
        if isinstance(batch, Failed):
            raise batch.error
        for image, warning in batch.skipped:  # already noted without workers (the same `data`)
            note_bad(data, image, warning)
        yield ticket, batch
