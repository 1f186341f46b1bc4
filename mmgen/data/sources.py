"""Readers for the real data sets, yielding interleaved `Document`s.

The data root is `$MMGEN_DATA` if set, else the first of `../shared/data` next to the repository or the
working directory. Layout expected under it (see its SOURCES.md):

    cifar10/cifar10_{train,test}_jpg.zip          "a photo of a {class}"
    flickr8k_subset/flickr8k_1000_images.zip      its 5 captions per image (captions.txt)
    mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz "a handwritten digit {n}"
    text/tinyshakespeare_input.txt, text/gutenberg/*.txt
    kodak/kodim01.png ... kodim24.png             (for tokenizer evaluation; see `image_files`)

Original image bytes are kept (JPEG stays JPEG), so writing shards never re-encodes a photo.
"""

from __future__ import annotations

import csv
import gzip
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmgen.data.documents import Document, Image, encode_png
from mmgen.errors import DataError, DataNotFound

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SOURCES = ("shapes", "cifar10", "flickr8k", "mnist", "text")


def data_root() -> Path:
    env = os.environ.get("MMGEN_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for cand in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", repo / "shared" / "data"):
        if cand.is_dir():
            return cand
    return repo.parent / "shared" / "data"


def require(rel: str, root: Path | None = None) -> Path:
    path = (root or data_root()) / rel
    if not path.exists():
        raise DataNotFound(
            f"{path} not found. Point MMGEN_DATA at a folder holding '{rel}' "
            f"(the layout is described in mmgen/data/sources.py)."
        )
    return path


def _caption_doc(key: str, caption: str, image: Image, image_first: bool, meta: dict) -> Document:
    segs = [image, caption] if image_first else [caption, image]
    return Document(key, segs, {**meta, "layout": "image_caption" if image_first else "caption_image"})


def _order(layout: str, i: int) -> bool:
    """image_first for document i under a layout: caption_image, image_caption or both (alternating)."""
    if layout not in ("caption_image", "image_caption", "both"):
        raise DataError(f"layout must be caption_image, image_caption or both, got {layout!r}")
    return layout == "image_caption" or (layout == "both" and i % 2 == 1)


def cifar10(
    split: str = "train", layout: str = "caption_image", limit: int = 0, root: Path | None = None
) -> Iterator[Document]:
    """CIFAR-10 from the JPEG zip: 'a photo of a {class}' and the image."""
    if split not in ("train", "test"):
        raise DataError(f"CIFAR-10 split must be train or test, got {split!r}")
    path = require(f"cifar10/cifar10_{split}_jpg.zip", root)
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        for i, name in enumerate(names[: limit or None]):
            cls = name.split("/")[-2]
            img = Image(data=zf.read(name), fmt="jpg", meta={"label": CIFAR10_CLASSES.index(cls), "class": cls})
            key = f"cifar10-{split}-{cls}-{Path(name).stem}"
            yield _caption_doc(key, f"a photo of a {cls}", img, _order(layout, i), {"source": "cifar10"})


def flickr8k_captions(root: Path | None = None) -> dict[str, list[str]]:
    caps: dict[str, list[str]] = {}
    with open(require("flickr8k_subset/captions.txt", root), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            caps.setdefault(row["image"], []).append(" ".join(row["caption"].split()))
    return caps


def flickr8k(
    split: str = "train",
    layout: str = "caption_image",
    captions_per_image: int = 5,
    test_fraction: float = 0.1,
    limit: int = 0,
    root: Path | None = None,
) -> Iterator[Document]:
    """The Flickr8k subset: one document per (image, caption); the last `test_fraction` of images is `test`."""
    path = require("flickr8k_subset/flickr8k_1000_images.zip", root)
    caps = flickr8k_captions(root)
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        n_test = int(round(len(names) * test_fraction))
        names = names[: len(names) - n_test] if split == "train" else names[len(names) - n_test :]
        count = 0
        for name in names:
            base = Path(name).name
            data = zf.read(name)
            for j, cap in enumerate(caps.get(base, [])[:captions_per_image]):
                img = Image(data=data, fmt="jpg", meta={"image": base, "captions": caps[base]})
                key = f"flickr8k-{split}-{Path(base).stem}-{j}"
                yield _caption_doc(key, cap, img, _order(layout, count), {"source": "flickr8k"})
                count += 1
                if limit and count >= limit:
                    return


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist(
    split: str = "train",
    layout: str = "caption_image",
    test_fraction: float = 0.1,
    limit: int = 0,
    root: Path | None = None,
) -> Iterator[Document]:
    """MNIST test idx files (the only split staged), divided into train / test by index."""
    images = _read_idx(require("mnist/t10k-images-idx3-ubyte.gz", root))
    labels = _read_idx(require("mnist/t10k-labels-idx1-ubyte.gz", root))
    n_test = int(round(len(images) * test_fraction))
    idx = range(len(images) - n_test) if split == "train" else range(len(images) - n_test, len(images))
    for count, i in enumerate(idx):
        if limit and count >= limit:
            return
        rgb = np.repeat(images[i][:, :, None], 3, axis=2)
        img = Image(data=encode_png(rgb), fmt="png", meta={"label": int(labels[i])})
        key = f"mnist-{split}-{i:05d}"
        yield _caption_doc(key, f"a handwritten digit {labels[i]}", img, _order(layout, count), {"source": "mnist"})


def text_files(spec: str = "tinyshakespeare", root: Path | None = None) -> list[Path]:
    """`tinyshakespeare`, `gutenberg` (all books), `gutenberg/<book>` or a path to a .txt file."""
    if spec.endswith(".txt") and Path(spec).is_file():
        return [Path(spec)]
    if spec == "tinyshakespeare":
        return [require("text/tinyshakespeare_input.txt", root)]
    if spec == "gutenberg":
        return sorted(p for p in require("text/gutenberg", root).glob("*.txt"))
    if spec.startswith("gutenberg/"):
        return [require(f"text/{spec}{'' if spec.endswith('.txt') else '.txt'}", root)]
    raise DataError(f"unknown text corpus {spec!r}: use tinyshakespeare, gutenberg, gutenberg/<book> or a .txt path")


def text(
    spec: str = "tinyshakespeare", chunk_chars: int = 1000, limit: int = 0, root: Path | None = None
) -> Iterator[Document]:
    """Plain text split at blank lines into documents of about `chunk_chars` characters."""
    count = 0
    for path in text_files(spec, root):
        raw = path.read_bytes().decode("latin-1").replace("\r\n", "\n")  # some books are latin-1 / CRLF
        buf: list[str] = []
        size = 0
        paragraphs = [" ".join(p.split()) for p in raw.split("\n\n")]
        for j, para in enumerate(p for p in paragraphs if p):
            buf.append(para)
            size += len(para)
            if size >= chunk_chars or j == len(paragraphs) - 1:
                yield Document(f"text-{path.stem}-{count:07d}", ["\n".join(buf)], {"source": f"text:{path.name}"})
                buf, size, count = [], 0, count + 1
                if limit and count >= limit:
                    return
        if buf:
            yield Document(f"text-{path.stem}-{count:07d}", ["\n".join(buf)], {"source": f"text:{path.name}"})
            count += 1


def image_files(spec: str = "kodak", root: Path | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, encoded bytes) of every image in a directory or zip; `kodak` is the 24 Kodak photographs."""
    path = require("kodak", root) if spec == "kodak" else Path(spec)
    if not path.exists():
        raise DataNotFound(f"{path} not found: give a directory or .zip of images")
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if p.suffix.lower() in exts:
                yield p.name, p.read_bytes()
    elif path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                for name in sorted(zf.namelist()):
                    if name.lower().endswith(exts):
                        yield name, zf.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a corrupt archive or member
            raise DataError(
                f"{path} is not a readable zip file ({e}); give a directory or an intact .zip of images"
            ) from e
    else:
        yield path.name, path.read_bytes()


def open_source(
    name: str,
    split: str = "train",
    limit: int = 0,
    layout: str = "caption_image",
    root: Path | None = None,
    shapes_cfg=None,
) -> Iterator[Document]:
    """Documents of a named source: shapes, cifar10, flickr8k, mnist, text[:corpus]."""
    if name == "shapes":
        from mmgen.config import ShapesConfig
        from mmgen.data.shapes import ShapesGenerator

        cfg = shapes_cfg or ShapesConfig(split=split)  # type: ignore[arg-type]
        return ShapesGenerator(cfg).documents(0, limit or 10000)
    if name == "cifar10":
        return cifar10(split, layout, limit=limit, root=root)
    if name == "flickr8k":
        return flickr8k(split, layout, limit=limit, root=root)
    if name == "mnist":
        return mnist(split, layout, limit=limit, root=root)
    if name == "text" or name.startswith("text:"):
        return text(name.partition(":")[2] or "tinyshakespeare", limit=limit, root=root)
    raise DataError(f"unknown source {name!r}; known: {', '.join(SOURCES)} (text:<corpus>)")


def sentences(name: str, limit: int = 0, root: Path | None = None) -> Iterator[str]:
    """Text lines of a source, for tokenizer training (captions, or lines of a corpus)."""
    if name == "flickr8k":
        n = 0
        for caps in flickr8k_captions(root).values():
            for c in caps:
                yield c
                n += 1
                if limit and n >= limit:
                    return
        return
    if name == "text" or name.startswith("text:"):
        n = 0
        for path in text_files(name.partition(":")[2] or "tinyshakespeare", root):
            for line in path.read_bytes().decode("latin-1").splitlines():
                line = line.strip()
                if line:
                    yield line
                    n += 1
                    if limit and n >= limit:
                        return
        return
    if name == "cifar10":
        for i, cls in enumerate(CIFAR10_CLASSES * max(1, (limit or 10) // 10)):
            yield f"a photo of a {cls}"
            if limit and i + 1 >= limit:
                return
        return
    if name == "mnist":
        for i in range(limit or 10):
            yield f"a handwritten digit {i % 10}"
        return
    if name == "shapes":
        from mmgen.config import ShapesConfig
        from mmgen.data.shapes import ShapesGenerator

        yield from ShapesGenerator(ShapesConfig()).captions(limit or 10000)
        return
    raise DataError(f"unknown text source {name!r}; known: {', '.join(SOURCES)} (text:<corpus>)")
