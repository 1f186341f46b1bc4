"""A folder of images with captions, in the convention of the Hugging Face `imagefolder` loader.

    photos/metadata.jsonl     {"file_name": "beach/001.jpg", "text": "a dog runs on the beach"}   one line per image
    photos/metadata.csv       file_name,text  (the same as CSV; used when there is no metadata.jsonl)
    photos/beach/001.jpg ...  jpg, png, webp, bmp, gif, tiff, in any subfolder

Metadata files are found recursively; `file_name` is relative to the folder of its metadata file, as the
loader has it. The caption column is `text` unless caption_field names another. Every image under the folder
is one record: an image no metadata row names is a bad sample (missing caption), as is a row whose file is
missing, an empty caption, or an unreadable or too small image.
"""

from __future__ import annotations

import csv
import json
import os
from operator import itemgetter
from pathlib import Path

from mmgen.data.documents import Document
from mmgen.data.external import ReadOptions, RecordStream, caption_document, load_image, safe_key
from mmgen.data.shards import Split
from mmgen.errors import DataError, SampleError

EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
Record = tuple[str, str | None]  # (path relative to the root, caption or None when no row names the file)


def _rows(meta: Path, column: str) -> list[dict]:
    try:
        if meta.suffix == ".jsonl":
            lines = meta.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        with open(meta, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{meta}: unreadable metadata ({e}); one JSON object per line (or a CSV with a header "
                        f"row) with 'file_name' and '{column}'") from e  # fmt: skip


def scan(root: str | Path, caption_field: str = "") -> list[Record]:
    """Every image under `root` with its caption from the metadata files, in sorted path order."""
    root, column = Path(root), caption_field or "text"
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder (an imagefolder layout is a folder of images with "
                        f"metadata.jsonl or metadata.csv)")  # fmt: skip
    captions: dict[str, str] = {}
    images: list[str] = []
    n_meta = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        meta = here / "metadata.jsonl" if "metadata.jsonl" in files else here / "metadata.csv"
        if meta.name in files:
            n_meta += 1
            for row in _rows(meta, column):
                if "file_name" not in row:
                    raise DataError(f"{meta}: a row without 'file_name' ({row}); every row names its image")
                rel = os.path.normpath(os.path.relpath(here / row["file_name"], root))
                captions[rel] = str(row.get(column) or "")
        images += [os.path.relpath(here / f, root) for f in files if Path(f).suffix.lower() in EXTS]
    if n_meta == 0:
        raise DataError(f"{root}: no metadata.jsonl or metadata.csv; write one with a row per image: "
                        f'{{"file_name": "001.jpg", "{column}": "a caption"}}')  # fmt: skip
    records: list[Record] = [(rel, captions.get(rel)) for rel in sorted(images)]
    present = set(images)
    records += [(rel, cap) for rel, cap in sorted(captions.items()) if rel not in present]  # file missing
    if not records:
        raise DataError(f"{root}: no images ({', '.join(EXTS)}) and no metadata rows")
    return records


class FolderRecord:
    """(relative path, caption) -> a one-image captioned Document; SampleError when unusable."""

    def __init__(self, root: str | Path, opts: ReadOptions):
        self.root, self.opts = Path(root), opts

    def __call__(self, rec: Record) -> Document:
        rel, caption = rec
        if caption is None:
            raise SampleError(f"{rel}: no caption (no row of a metadata file names it)")
        path = self.root / rel
        if not path.is_file():
            raise SampleError(f"{rel}: named in the metadata but the file does not exist")
        try:
            image = load_image(path.read_bytes(), path.suffix[1:].lower(), self.opts, {"file": rel})
        except SampleError as e:
            raise SampleError(f"{rel}: {e}") from e
        return caption_document(safe_key(str(Path(rel).with_suffix(""))), caption, image, self.opts, "imagefolder")


def imagefolder_stream(path: str, opts: ReadOptions, split: Split, *, seed: int = 0, shuffle: bool = True,
                       epochs: int | None = None) -> RecordStream:  # fmt: skip
    return RecordStream(scan(path, opts.caption_field), FolderRecord(path, opts), split, seed=seed, shuffle=shuffle,
                        epochs=epochs, name=itemgetter(0), what=f"images in {path}")  # fmt: skip
