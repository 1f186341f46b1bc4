"""A folder of images with captions, in the convention of the Hugging Face `imagefolder` loader.

    photos/metadata.jsonl     {"file_name": "beach/001.jpg", "text": "a dog runs on the beach"}   one line per image
    photos/metadata.csv       file_name,text  (the same as CSV; used when there is no metadata.jsonl)
    photos/beach/001.jpg ...  jpg, png, webp, bmp, gif, tiff, in any subfolder

Metadata files are found recursively; `file_name` is relative to the folder of its metadata file, as the
loader has it. The caption column is `text` unless caption_field names another. Every image under the folder
is one record: an image no metadata row names is a bad sample (missing caption), as is a row whose file is
missing, an empty caption, or an unreadable or too small image. So is a metadata row that cannot be read
(malformed JSON) or names no file inside the folder (no string file_name, an absolute path, a '..').
"""

from __future__ import annotations

import csv
import json
import os
from operator import itemgetter
from pathlib import Path

from mmgen.data.documents import Document
from mmgen.data.external import (
    ReadOptions,
    RecordStream,
    caption_document,
    clean_caption,
    load_image,
    safe_key,
)
from mmgen.data.shards import Split
from mmgen.errors import DataError, SampleError

EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# (name, caption, problem): name is the image path relative to the root, or "metadata file:line" for a bad row;
# caption is None when no row names the image; problem is "" or why the row is a bad sample
Record = tuple[str, str | None, str]


def _rows(meta: Path) -> list[tuple[int, dict | str]]:
    """(line number, the row as a dict, or why it is unreadable) of a metadata.jsonl or metadata.csv."""
    if meta.suffix == ".jsonl":
        rows: list[tuple[int, dict | str]] = []
        for n, raw in enumerate(meta.read_bytes().splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError is a ValueError
                rows.append((n, f"not a JSON object ({e})"))
                continue
            rows.append((n, row if isinstance(row, dict) else f"a {type(row).__name__}, not a JSON object"))
        return rows
    try:
        with open(meta, newline="", encoding="utf-8") as f:
            return list(enumerate(csv.DictReader(f), start=2))  # line 1 is the header
    except (ValueError, csv.Error) as e:
        raise DataError(
            f"{meta}: unreadable metadata ({e}); a UTF-8 CSV with a header row naming 'file_name' "
            f"and the caption column"
        ) from e


def _row_file(row: dict, here: Path, root: Path) -> tuple[str, str]:
    """(the image path relative to the root, "") or ("", why the row names no usable file)."""
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        return "", f"'file_name' is {name!r}, not the image's path relative to the metadata file"
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return "", f"file_name {name!r} leaves the folder; give a path inside it (no leading '/', no '..')"
    return os.path.normpath(os.path.relpath(here / name, root)), ""


def scan(root: str | Path, caption_field: str = "") -> list[Record]:
    """Every image under `root` with its caption from the metadata files, in sorted path order, then the
    metadata rows that cannot name an image (bad samples)."""
    root, column = Path(root), caption_field or "text"
    if not root.is_dir():
        raise DataError(
            f"data.path: {root} is not a folder (an imagefolder layout is a folder of images with "
            f"metadata.jsonl or metadata.csv)"
        )
    captions: dict[str, str] = {}
    images: list[str] = []
    bad: list[Record] = []
    n_meta, columns = 0, set()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        meta = here / "metadata.jsonl" if "metadata.jsonl" in files else here / "metadata.csv"
        if meta.name in files:
            n_meta += 1
            where = os.path.relpath(meta, root)
            for n, row in _rows(meta):
                rel, problem = _row_file(row, here, root) if isinstance(row, dict) else ("", row)
                if problem:
                    bad.append((f"{where}:{n}", None, problem))
                    continue
                columns.update(k for k in row if isinstance(k, str))  # a long CSV row adds a None key
                captions[rel] = str(row.get(column) or "")
        images += [os.path.relpath(here / f, root) for f in files if Path(f).suffix.lower() in EXTS]
    if n_meta == 0:
        raise DataError(
            f"{root}: no metadata.jsonl or metadata.csv; write one with a row per image: "
            f'{{"file_name": "001.jpg", "{column}": "a caption"}}'
        )
    if captions and column not in columns:  # every caption would be empty: fail before decoding anything
        raise DataError(
            f"{root}: no metadata row has a {column!r} column (columns: {', '.join(sorted(columns))}); "
            f"set caption_field (--caption-field) to the caption column"
        )
    records: list[Record] = [(rel, captions.get(rel), "") for rel in sorted(images)]
    present = set(images)
    records += [(rel, cap, "") for rel, cap in sorted(captions.items()) if rel not in present]  # file missing
    records += bad
    if not records:
        raise DataError(f"{root}: no images ({', '.join(EXTS)}) and no metadata rows")
    return records


class FolderRecord:
    """(name, caption, problem) -> a one-image captioned Document; SampleError when unusable."""

    def __init__(self, root: str | Path, opts: ReadOptions):
        self.root, self.opts = Path(root), opts

    def __call__(self, rec: Record) -> Document:
        rel, caption, problem = rec
        if problem:
            raise SampleError(f"{rel}: {problem}")
        if caption is None:
            raise SampleError(f"{rel}: no caption (no row of a metadata file names it)")
        caption = clean_caption(caption, rel)  # before the costly decode
        path = self.root / rel
        if not path.is_file():
            raise SampleError(f"{rel}: named in the metadata but the file does not exist")
        image = load_image(path.read_bytes(), path.suffix[1:].lower(), self.opts, {"file": rel}, where=rel)
        return caption_document(safe_key(str(Path(rel).with_suffix(""))), caption, image, self.opts, "imagefolder")


def imagefolder_stream(
    path: str, opts: ReadOptions, split: Split, *, seed: int = 0, shuffle: bool = True, epochs: int | None = None
) -> RecordStream:
    return RecordStream(
        scan(path, opts.caption_field),
        FolderRecord(path, opts),
        split,
        seed=seed,
        shuffle=shuffle,
        epochs=epochs,
        name=itemgetter(0),
        what=f"images in {path}",
    )
