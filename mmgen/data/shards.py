"""webdataset shards: writing documents, and reading them back as a resumable, split, shuffled stream.

Reading is deterministic: the stream seen by (rank, logical worker) in epoch e is a pure function of
(shard list, seed, e, rank, world size, number of workers). Shards are shuffled per epoch, dealt to ranks and
then to DataLoader workers; samples are shuffled in a seeded buffer. A cursor (epoch, index) per logical
worker says how many samples of that stream were consumed, so a resumed reader skips exactly those (before
decoding, so skipping is cheap).

A sample that cannot be read (truncated tar member, broken image, bad or malformed JSON) is skipped, logged
with its key (the first few, then a count: skips.py) and reported downstream in `Item.skipped`, so the trainer
counts it: never a crash, never a silent drop. A pass that reads nothing goes on to the next epoch (other
shards may be dealt to this stream then); once consecutive passes without one readable document have gone
over every shard the stream can be dealt (all of them when shuffled, its own share otherwise), it is a
DataError naming the shards: an endless stream would otherwise spin for ever.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from mmgen.data.documents import Document, SampleError, from_sample, to_sample
from mmgen.data.skips import SkipReport
from mmgen.errors import DataError, MissingInput

log = logging.getLogger(__name__)
INDEX_FILE = "index.json"


# --------------------------------------------------------------------------------------------- writing
def write_shards(
    docs: Iterable[Document], out_dir: str | Path, prefix: str = "shard", max_count: int = 1000, max_size: float = 256e6
) -> dict:
    """Write documents to `out_dir/{prefix}-000000.tar`, ... and an index.json with per-shard counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    pattern = str(out / f"{prefix}-%06d.tar")
    written = 0
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0) as sink:
        for doc in docs:
            sink.write(to_sample(doc))
            name = Path(sink.fname).name
            counts[name] = counts.get(name, 0) + 1
            written += 1
    index = {"prefix": prefix, "samples": written, "shards": counts}
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(out / INDEX_FILE)
    return index


def list_shards(spec: str | Path | list[str]) -> list[str]:
    """A directory (every .tar in it), a glob, or an explicit list -> sorted shard paths."""
    if isinstance(spec, list):
        paths = list(spec)
    else:
        p = Path(spec)
        paths = sorted(str(x) for x in p.glob("*.tar")) if p.is_dir() else sorted(glob.glob(str(spec)))
    if not paths:
        raise MissingInput(
            f"no shards found at {spec!r}; write them with `python scripts/prepare_data.py --source ... --out DIR`"
        )
    return paths


# --------------------------------------------------------------------------------------------- reading
@dataclass
class Item:
    """One document of a stream, with where it came from (for the cursor) and what was skipped before it."""

    doc: Document
    worker: int  # logical worker id
    epoch: int
    index: int  # position of this document in its (epoch, rank, worker) stream
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


@dataclass
class Split:
    """Which slice of the data this reader serves."""

    rank: int = 0
    world_size: int = 1
    num_workers: int = 1


def deal(items: list, index: int, count: int) -> list:
    """The items dealt to member `index` of `count` (round robin)."""
    return items[index::count]


class DealtStream(ABC):
    """Units (shards, records) in a seeded order per epoch, dealt to ranks and then to logical workers; the
    raw samples of a stream's units decoded into documents. A subclass gives `_raw` (the raw samples of a
    (epoch, worker) stream, in order), `_name` (a raw sample's name in skip reports) and `_unit_name` (a
    unit's, in errors). The cursor (epoch, index) counts raw samples, so a resumed stream skips them undecoded."""

    units: list
    what = "unit(s)"  # in messages: "shard(s)", "record(s)"
    fix = "fix the data"  # the end of the error when a stream can read nothing

    def __init__(
        self,
        units: list,
        split: Split,
        *,
        seed: int,
        shuffle: bool,
        epochs: int | None,
        decode: Callable[[Any], Document],
        noun: str,
        more: str,
    ):
        """`noun` names the units in the error when there are fewer than streams ("shards", "images in DIR"),
        `more` says how to get more."""
        self.units, self.split, self.seed, self.shuffle, self.epochs = units, split, seed, shuffle, epochs
        self.decode = decode  # raw sample -> Document, raising SampleError
        self.skip_report = SkipReport()  # logs the first few skipped samples, then one line per thousand
        self.unreported: list[tuple[str, str]] = []
        if len(units) < split.world_size * split.num_workers:
            raise DataError(
                f"{len(units)} {noun} cannot feed {split.world_size} ranks x {split.num_workers} "
                f"workers (each needs at least one): {more}"
            )

    def order(self, epoch: int) -> list:
        units = list(self.units)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(units)
        return units

    def units_for(self, epoch: int, worker: int) -> list:
        s = self.split
        return deal(deal(self.order(epoch), s.rank, s.world_size), worker, s.num_workers)

    @abstractmethod
    def _raw(self, epoch: int, worker: int, skipped: list[tuple[str, str]]) -> Iterator[Any]:
        """The raw samples of stream (epoch, worker) in order; damage that is no sample goes to `skipped`."""

    @abstractmethod
    def _name(self, raw: Any) -> str:
        """A raw sample's name in skip reports."""

    def _unit_name(self, unit: Any) -> str:
        return str(unit)

    def _log_skip(self, key: str, reason: str) -> None:
        if (line := self.skip_report.add(key, reason)) is not None:
            log.warning(line)

    def items(self, worker: int, start: tuple[int, int] = (0, 0)) -> Iterator[Item]:
        """Documents of logical worker `worker`, from cursor `start` = (epoch, index) on."""
        epoch, skip = start
        carry: list[tuple[str, str]] = []  # skipped samples not yet reported with an item
        reachable = set(self.units) if self.shuffle else set(self.units_for(epoch, worker))
        empty = EmptyPasses()  # the consecutive passes that read nothing, up to now
        while self.epochs is None or epoch < self.epochs:
            skipped: list[tuple[str, str]] = []  # _raw may append here too (tar damage)
            read = 0  # documents decoded in this pass, or passed over by the cursor
            for index, raw in enumerate(self._raw(epoch, worker, skipped)):
                if index < skip:
                    skipped.clear()  # damage before the cursor was reported by the run that read it
                    read += 1
                    continue
                try:
                    doc = self.decode(raw)
                except SampleError as e:
                    skipped.append((self._name(raw), str(e)))
                    self._log_skip(*skipped[-1])
                    continue
                read += 1
                report, carry = carry + skipped, []
                skipped.clear()
                yield Item(doc, worker, epoch, index, report)
            empty = empty.add(self.units_for(epoch, worker), skipped) if read == 0 else EmptyPasses()
            if empty.shards >= reachable:  # every pass from now on would read nothing either
                raise empty.error(self.what, self.fix, self._unit_name)
            carry += skipped
            epoch, skip = epoch + 1, 0
        self.unreported = carry  # skipped at the very end of a finite stream (also logged)


class ShardStream(DealtStream):
    """Deterministic document stream for one (rank, logical worker); iterate with `items(worker, start)`."""

    what = "shard(s)"
    fix = "Check them (`tar tvf SHARD`), or write the shards again with scripts/prepare_data.py"

    def __init__(
        self,
        shards: str | Path | list[str],
        split: Split,
        *,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        epochs: int | None = None,
        decode: Callable[[dict], Document] = from_sample,
    ):
        # decode: sample dict -> Document (other tar layouts: img2dataset.py)
        super().__init__(
            list_shards(shards),
            split,
            seed=seed,
            shuffle=shuffle,
            epochs=epochs,
            decode=decode,
            noun="shards",
            more="write more, smaller shards (prepare_data.py --shard-size) or use fewer DataLoader workers",
        )
        self.shards = self.units
        self.shuffle_buffer = shuffle_buffer

    def shards_for(self, epoch: int, worker: int) -> list[str]:
        return self.units_for(epoch, worker)

    def _raw(self, epoch: int, worker: int, skipped: list[tuple[str, str]]) -> Iterator[dict]:
        def handler(exn: Exception) -> bool:  # tar-level damage: report, keep reading
            what = exn.args[0] if exn.args else exn  # webdataset appends (stream, url) to the args
            skipped.append((f"<tar:{getattr(exn, 'args', [''])[-1]}>", f"{type(exn).__name__}: {what}"))
            self._log_skip(*skipped[-1])
            return True

        stages: list[Callable | Iterable] = [
            wds.SimpleShardList(self.shards_for(epoch, worker)),
            wds.tarfile_to_samples(handler=handler),
        ]
        if self.shuffle and self.shuffle_buffer > 1:
            rng_seed = hash((self.seed, epoch, self.split.rank, worker)) & 0x7FFFFFFF
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=rng_seed))
        return iter(wds.DataPipeline(*stages))

    def _name(self, raw: dict) -> str:
        return f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"


@dataclass
class EmptyPasses:
    """Consecutive passes of one stream that read no document: the shards they went over, what they skipped."""

    passes: int = 0
    shards: set = field(default_factory=set)  # shard paths, record indices: the stream's units
    skipped: int = 0
    first: tuple[str, str] | None = None  # the first skipped sample or tar member: (key, reason)

    def add(self, shards: list, skipped: list[tuple[str, str]]) -> EmptyPasses:
        self.passes, self.skipped = self.passes + 1, self.skipped + len(skipped)
        self.shards.update(shards)
        self.first = self.first or (skipped[0] if skipped else None)
        return self

    def error(self, what: str = "shard(s)", fix: str = "", name: Callable[[Any], str] = str) -> DataError:
        """The error naming (`name`) the units gone over (`what`: "shard(s)", "record(s)"), ending with `fix`."""
        shards = sorted(self.shards)
        names = ", ".join(map(name, shards[:4])) + (f" and {len(shards) - 4} more" if len(shards) > 4 else "")
        found = (
            f"{self.skipped} unreadable sample(s), the first: {self.first[0]}: {self.first[1]}"
            if self.first
            else "they hold no samples"
        )
        passes = "a whole pass" if self.passes == 1 else f"{self.passes} consecutive passes"
        return DataError(f"no readable document in {passes} over {len(shards)} {what} ({names}): {found}. {fix}")


def read_documents(shards: str | Path | list[str]) -> Iterator[Document]:
    """Every readable document of a shard set, in stored order (no shuffle, one pass)."""
    stream = ShardStream(shards, Split(), shuffle=False, epochs=1)
    for item in stream.items(0):
        yield item.doc
