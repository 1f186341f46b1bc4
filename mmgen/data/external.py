"""Data in the layouts the field already uses, read as it is: the parts the three readers share.

    img2dataset   webdataset tars of {key}.jpg + {key}.txt / {key}.json       (img2dataset.py)
    imagefolder   a folder of images with metadata.jsonl or metadata.csv       (imagefolder.py)
    jsonl         interleaved documents, OBELICS / MMC4 style                  (interleaved_jsonl.py)

Every reader keeps the contract of `ShardStream`: a deterministic stream per (rank, logical worker), a cursor
(epoch, index) that resumes exactly, and bad samples (missing caption, unreadable or too small image, empty
document) skipped, logged and reported in `Item.skipped`, so the trainer counts them. The tar layout reuses
`ShardStream` itself; the file layouts are lists of records (a metadata row, a JSONL line) read by
`RecordStream`, which deals records instead of shards (both are a `DealtStream` of shards.py). A pass that
reads nothing goes on to the next epoch; once consecutive empty passes have gone over every record the
stream can be dealt, it is a DataError naming them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mmgen.data.documents import Document, Image
from mmgen.data.packing import to_model_pixels
from mmgen.data.shards import DealtStream, Item, Split
from mmgen.data.sources import _caption_doc, _order
from mmgen.errors import DataError, SampleError

LAYOUTS = ("img2dataset", "imagefolder", "jsonl")


@dataclass(frozen=True)
class ReadOptions:
    image_size: int = 0  # centre-crop and resize every image to this many pixels a side (0: keep the file's bytes)
    min_image_size: int = 1  # an image whose shorter side is below this is a bad sample
    caption_field: str = ""  # "" = the layout's convention (img2dataset: {key}.txt, imagefolder: column "text")
    caption_layout: str = "caption_image"  # caption_image, image_caption or both (chosen per document by key)

    @classmethod
    def of(
        cls, image_size: int, min_image_size: int = 0, caption_field: str = "", caption_layout: str = "caption_image"
    ) -> ReadOptions:
        """The options of a config or command line, where min_image_size 0 means the image size (else any)."""
        return cls(image_size, min_image_size or image_size or 1, caption_field, caption_layout)


def load_image(data: bytes, fmt: str, opts: ReadOptions, meta: dict | None = None, where: str = "") -> Image:
    """Decoded, size-checked and (with opts.image_size) centre-cropped and resized; SampleError (its message
    prefixed with `where`) if not usable."""
    try:
        img = Image(data=data, fmt=fmt, meta=meta or {})
        h, w = img.rgb().shape[:2]
        if min(h, w) < opts.min_image_size:
            raise SampleError(f"image is {w}x{h}, below min_image_size={opts.min_image_size}")
    except SampleError as e:
        raise SampleError(f"{where}: {e}" if where else str(e)) from e
    if opts.image_size:
        img = Image(pixels=to_model_pixels(img, opts.image_size).transpose(1, 2, 0), meta=img.meta)
    return img


def safe_key(name: str) -> str:
    """A document key from a file name or id: shard writers split keys on '.' and '/'."""
    return re.sub(r"[./\\\s]+", "_", name).strip("_") or "doc"


def clean_caption(caption: str, where: str) -> str:
    """The caption with its whitespace collapsed; SampleError when nothing is left (checked before decoding)."""
    caption = " ".join(caption.split())
    if not caption:
        raise SampleError(f"{where}: empty caption")
    return caption


def caption_document(key: str, caption: str, image: Image, opts: ReadOptions, source: str) -> Document:
    """One captioned image (caption from `clean_caption`) as a document; with caption_layout=both the order
    is a function of the key."""
    image_first = _order(opts.caption_layout, hashlib.sha1(key.encode()).digest()[0])
    return _caption_doc(key, caption, image, image_first, {"source": source})


class RecordStream(DealtStream):
    """Documents decoded from records (one per document), dealt to (rank, logical worker) in a seeded order
    per epoch; iterate with `items(worker, start)` exactly as a `ShardStream`. The units are record indices."""

    what = "record(s)"
    fix = "Fix the data (data/README.md lists what each layout needs)"

    def __init__(
        self,
        records: Sequence[Any],
        decode: Callable[[Any], Document],
        split: Split,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        name: Callable[[Any], str] = str,
        what: str = "records",
    ):
        self.records, self.name = records, name
        super().__init__(
            list(range(len(records))),
            split,
            seed=seed,
            shuffle=shuffle,
            epochs=epochs,
            decode=decode,
            noun=what,
            more="add data or use fewer DataLoader workers",
        )

    def __len__(self) -> int:
        return len(self.records)

    def _raw(self, epoch: int, worker: int, skipped: list[tuple[str, str]]) -> Iterator[Any]:
        return (self.records[i] for i in self.units_for(epoch, worker))  # a record is read when decoded

    def _name(self, raw: Any) -> str:
        return self.name(raw)

    def _unit_name(self, unit: int) -> str:
        return self.name(self.records[unit])


def open_layout(
    layout: str,
    path: str,
    opts: ReadOptions,
    split: Split | None = None,
    *,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 256,
    epochs: int | None = None,
):
    """The stream of one external layout (`LAYOUTS`) at `path`."""
    split = split or Split()
    if layout == "img2dataset":
        from mmgen.data.img2dataset import img2dataset_stream

        return img2dataset_stream(
            path, opts, split, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, epochs=epochs
        )
    if layout == "imagefolder":
        from mmgen.data.imagefolder import imagefolder_stream

        return imagefolder_stream(path, opts, split, seed=seed, shuffle=shuffle, epochs=epochs)
    if layout == "jsonl":
        from mmgen.data.interleaved_jsonl import jsonl_stream

        return jsonl_stream(path, opts, split, seed=seed, shuffle=shuffle, epochs=epochs)
    raise DataError(f"unknown data layout {layout!r}; known: {', '.join(LAYOUTS)}")


def read_items(spec: str, opts: ReadOptions, start: int = 0, split: str = "train", limit: int = 0):
    """One pass in stored order from raw index `start` (which counts skipped samples too), at most `limit`
    documents from there (0 = all), for prepare_data and cache_latents: (items, their total or None, a callable
    giving the samples skipped after the last item). `spec` is `<layout>:PATH`, `shards:DIR` (prepare_data's
    shards) or a named source of sources.py."""
    kind, _, path = spec.partition(":")
    if kind == "shards" or kind in LAYOUTS:
        if not path:
            raise DataError(f"source {spec!r} needs a path: {kind}:PATH")
        if kind == "shards":
            from mmgen.data.shards import ShardStream

            stream = ShardStream(path, Split(), shuffle=False, epochs=1)
        else:
            stream = open_layout(kind, path, opts, shuffle=False, epochs=1)
        items = stream.items(0, (0, start))
        if limit:
            items = itertools.islice(items, limit)
        total = len(stream) if isinstance(stream, RecordStream) else None
        return items, total, lambda: getattr(stream, "unreported", [])
    from mmgen.data.sources import open_source

    end = start + limit if limit else 0  # a named source has no bad samples: raw index = document index
    docs = itertools.islice(open_source(spec, split=split, limit=end, layout=opts.caption_layout), start, None)
    return (Item(d, 0, 0, i) for i, d in enumerate(docs, start=start)), end or None, lambda: []


def add_read_args(ap) -> None:
    """The command-line options of the external layouts (prepare_data.py, cache_latents.py)."""
    ap.add_argument(
        "--caption-field",
        default="",
        help="img2dataset: a .json field instead of {key}.txt; imagefolder: the metadata column (default text)",
    )
    ap.add_argument(
        "--min-image-size",
        type=int,
        default=0,
        help="skip images whose shorter side is below this (0: the --image-size, else any size)",
    )


def read_options(args, image_size: int) -> ReadOptions:
    return ReadOptions.of(image_size, args.min_image_size, args.caption_field, args.layout)
