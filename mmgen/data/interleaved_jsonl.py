"""Interleaved documents in JSONL, the OBELICS / MMC4 style: several images per document, in any position.

One document per line, in either form:

    {"texts": ["A tart.", null, "Bake it."], "images": [null, "img/tart.jpg", null]}
    {"segments": [{"type": "text", "text": "A tart."}, {"type": "image", "image": "img/tart.jpg"}]}

The first is OBELICS's: two lists of equal length, at each position a text or an image (the other null). An
optional "id" (or "key") names the document. Image paths are relative to the JSONL file (absolute paths work
too); URLs do not, download the images first. A path is a file, a folder of *.jsonl or a glob. A document
with an unreadable, missing or too small image is skipped whole, as is one with no text and no image.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from mmgen.data.documents import Document, Segment
from mmgen.data.external import ReadOptions, RecordStream, load_image, safe_key
from mmgen.data.shards import Split
from mmgen.errors import DataError, SampleError

Record = tuple[int, int, int]  # (file index, byte offset of the line, line number)


def jsonl_files(spec: str) -> list[Path]:
    p = Path(spec)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p] if p.is_file() else sorted(map(Path, glob.glob(spec)))
    if not files:
        raise DataError(f"no JSONL documents at {spec!r}: give a .jsonl file, a folder of them or a glob")
    return files


def index_lines(files: list[Path]) -> list[Record]:
    """Where every non-blank line starts: documents are read one line at a time, on demand."""
    records: list[Record] = []
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            offset = 0
            for n, line in enumerate(f, start=1):
                if line.strip():
                    records.append((i, offset, n))
                offset += len(line)
    return records


def _segments(doc: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """The document's ("text" | "image", value) segments in order, from either form."""
    if "texts" in doc or "images" in doc:
        texts, images = doc.get("texts") or [], doc.get("images") or []
        if not isinstance(texts, list) or not isinstance(images, list):
            raise SampleError(
                f"{where}: 'texts' and 'images' must be lists (with null where the other holds the "
                f"segment), got {type(texts).__name__} and {type(images).__name__}"
            )
        if len(texts) != len(images):
            raise SampleError(
                f"{where}: 'texts' has {len(texts)} entries and 'images' {len(images)}; "
                f"they must be of equal length, with null where the other holds the segment"
            )
        out = []
        for t, im in zip(texts, images):
            if t is not None and im is not None:
                raise SampleError(f"{where}: a position holds both a text and an image; one must be null")
            if im is not None:
                out.append(("image", im))
            elif t is not None:
                out.append(("text", t))
        return out
    if isinstance(doc.get("segments"), list):
        out = []
        for seg in doc["segments"]:
            kind = seg.get("type") if isinstance(seg, dict) else None
            if kind not in ("text", "image") or not isinstance(seg.get(kind), str):
                raise SampleError(
                    f"{where}: segment {seg!r} is not {{'type': 'text', 'text': ...}} or "
                    f"{{'type': 'image', 'image': PATH}}"
                )
            out.append((kind, seg[kind]))
        return out
    raise SampleError(f"{where}: neither 'texts' + 'images' lists nor a 'segments' list")


class JsonlRecord:
    """(file, offset, line) -> Document with its images in place; SampleError when unusable."""

    def __init__(self, files: list[Path], opts: ReadOptions):
        self.files, self.opts = files, opts

    def name(self, rec: Record) -> str:
        return f"{self.files[rec[0]].name}:{rec[2]}"

    def __call__(self, rec: Record) -> Document:
        path, where = self.files[rec[0]], self.name(rec)
        with open(path, "rb") as f:
            f.seek(rec[1])
            line = f.readline()
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise SampleError(f"{where}: not a JSON object ({e})") from e
        if not isinstance(doc, dict):
            raise SampleError(f"{where}: not a JSON object")
        segments: list[Segment] = []
        for kind, value in _segments(doc, where):
            if not isinstance(value, str):
                raise SampleError(f"{where}: a {kind} entry is a {type(value).__name__}, not a string")
            if kind == "text":
                if value.strip():
                    segments.append(value)
                continue
            if "://" in value:
                raise SampleError(f"{where}: image {value!r} is a URL; download the images and give local paths")
            file = path.parent / value
            if not file.is_file():
                raise SampleError(f"{where}: image {value} not found (paths are relative to {path.name})")
            image = load_image(
                file.read_bytes(), file.suffix[1:].lower(), self.opts, {"file": value}, where=f"{where}: image {value}"
            )
            segments.append(image)
        if not segments:
            raise SampleError(f"{where}: empty document (no text and no image)")
        key = safe_key(str(doc.get("id") or doc.get("key") or f"{path.stem}-{rec[2]}"))
        return Document(key, segments, {"source": "jsonl"})


def jsonl_stream(
    spec: str, opts: ReadOptions, split: Split, *, seed: int = 0, shuffle: bool = True, epochs: int | None = None
) -> RecordStream:
    files = jsonl_files(spec)
    decode = JsonlRecord(files, opts)
    return RecordStream(
        index_lines(files),
        decode,
        split,
        seed=seed,
        shuffle=shuffle,
        epochs=epochs,
        name=decode.name,
        what=f"documents in {spec}",
    )
