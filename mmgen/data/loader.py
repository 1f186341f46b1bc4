"""The training input: a document source split by rank and DataLoader worker, packed in the workers, with a
cursor that makes resumption exact.

Every (rank, logical worker) reads its own deterministic stream. The DataLoader hands out micro-batches
round robin over its workers, so the order of micro-batches is deterministic too. The cursor records, per
logical worker, the position of the first document not yet consumed, and whose turn is next; a resumed
loader rotates its workers so that the first micro-batch comes from that logical worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmgen.config import ShapesConfig
from mmgen.data.packing import Packer
from mmgen.data.plan import TokenPlan
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import Item, Split
from mmgen.errors import CheckpointError, MMGenError


class DocumentSource(Protocol):
    split: Split

    def items(self, worker: int, start: tuple[int, int] = (0, 0)) -> Iterator[Item]: ...


class ShapesStream:
    """The procedural shapes documents, dealt to (rank, worker) by index: endless, one 'epoch'. The `repeat`
    documents of one drawn caption go to one worker in a row (so they share a micro-batch)."""

    def __init__(self, cfg: ShapesConfig, split: Split):
        self.gen = ShapesGenerator(cfg)
        self.split = split

    def global_index(self, worker: int, i: int) -> int:
        s, R = self.split, self.gen.cfg.repeat
        drawn, copy = divmod(i, R)
        return ((drawn * s.world_size + s.rank) * s.num_workers + worker) * R + copy

    def items(self, worker: int, start: tuple[int, int] = (0, 0)) -> Iterator[Item]:
        i = start[1]
        while True:
            yield Item(self.gen.document(self.global_index(worker, i)), worker, 0, i)
            i += 1


@dataclass
class DataCursor:
    """Where each logical worker's stream stands, and which worker delivers the next micro-batch."""

    num_workers: int = 1
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    turn: int = 0
    batches: int = 0
    skipped: int = 0

    def update(self, batch: TokenPlan) -> None:
        c = batch.cursor
        self.positions[c["worker"]] = (c["epoch"], c["index"])
        self.turn = (c["worker"] + 1) % self.num_workers
        self.batches += 1
        self.skipped += len(batch.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "positions": {str(k): list(v) for k, v in self.positions.items()},
            "turn": self.turn,
            "batches": self.batches,
            "skipped": self.skipped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], num_workers: int) -> DataCursor:
        try:
            saved = int(state["num_workers"])
            pos = {int(k): (int(v[0]), int(v[1])) for k, v in state["positions"].items()}
            counts = int(state["turn"]), int(state["batches"]), int(state["skipped"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise CheckpointError(
                f"the checkpoint's data cursor is malformed ({type(e).__name__}: {e}): resume from "
                f"another checkpoint (--resume <folder>) or start afresh with --resume none"
            ) from e
        if saved != num_workers:
            raise CheckpointError(
                f"the checkpoint's data cursor was written with {saved} DataLoader workers, "
                f"this run has {num_workers}: resume with data.num_workers={saved}"
            )
        return cls(num_workers, pos, *counts)


class PackedDataset(IterableDataset):
    """Packed micro-batches of one rank; DataLoader workers become logical workers (rotated by the cursor).
    Without a packer it yields the stream's `Item`s (documents) themselves."""

    def __init__(self, source: DocumentSource, packer: Packer | None, cursor: DataCursor | None = None):
        super().__init__()
        self.source = source
        self.packer = packer
        self.cursor = cursor or DataCursor(max(1, source.split.num_workers))

    def __iter__(self) -> Iterator[TokenPlan | Item | WorkerError]:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != self.cursor.num_workers:
            raise ValueError(f"the source was split for {self.cursor.num_workers} workers but runs with {n}")
        logical = (wid + self.cursor.turn) % n
        start = self.cursor.positions.get(logical, (0, 0))
        if info is not None:
            torch.set_num_threads(1)  # workers decode and pack; the main process owns the cores
        items = self.source.items(logical, start)
        try:
            yield from (self.packer.batches(items) if self.packer is not None else items)
        except MMGenError as e:
            if info is None:
                raise
            yield WorkerError(e)


@dataclass
class WorkerError:
    """Bad input found in a DataLoader worker, carried to the main process as an item: re-raised there as
    itself (the DataLoader would paste the worker's traceback into its message)."""

    error: MMGenError


class Loader:
    """A DataLoader whose workers' bad-input errors are raised in the main process with their own message."""

    def __init__(self, dataloader: DataLoader):
        self.dataloader = dataloader

    def __iter__(self) -> Iterator[TokenPlan]:
        for item in self.dataloader:
            if isinstance(item, WorkerError):
                raise item.error
            yield item


def make_loader(dataset: PackedDataset, num_workers: int) -> Loader:
    """num_workers = 0 reads in the main process (one logical worker)."""
    n = num_workers
    if max(1, n) != dataset.cursor.num_workers:
        raise ValueError(f"the dataset is split for {dataset.cursor.num_workers} workers, not {n}")
    return Loader(
        DataLoader(
            dataset,
            batch_size=None,
            num_workers=n,
            prefetch_factor=4 if n > 0 else None,
            persistent_workers=False,
        )
    )
