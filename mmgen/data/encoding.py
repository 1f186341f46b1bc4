"""One document -> token plan columns (numpy), in the layout that `mmgen/data/packing.py` describes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmgen.data.documents import Document, Image
from mmgen.data.plan import IGNORE, KIND_CLEAN, KIND_NOISY, KIND_TEXT


@dataclass(frozen=True)
class PackSpec:
    seq_len: int
    rows: int
    image_size: int  # pixels per side after resizing
    grid: tuple[int, int]  # image tokens per side (gh, gw)
    bos: int
    eos: int
    pad: int
    boi: int
    eoi: int
    trailing_clean: bool = False  # keep the clean copy of a target image that ends its document

    @classmethod
    def from_config(
        cls, model_cfg: Any, *, rows: int, seq_len: int | None = None, trailing_clean: bool = False
    ) -> PackSpec:
        """The spec of a model (`MMGenConfig`): its image size, latent grid and special ids (the text
        tokenizer's, checked equal when it is loaded: `mmgen.tokenizer.text.check_special_ids`); `seq_len`
        defaults to the model's context."""
        c = model_cfg
        ids = (c.bos_token_id, c.eos_token_id, c.pad_token_id, c.boi_token_id, c.eoi_token_id)
        grid = (int(c.image_grid[0]), int(c.image_grid[1]))
        return cls(seq_len or c.max_seq_len, rows, c.image_size, grid, *ids, trailing_clean=trailing_clean)

    @property
    def image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def image_doc_len(self, noisy: bool = True) -> int:
        """Tokens of the smallest image document: <s> <boi> image [noisy image] <eoi> </s>."""
        return 4 + self.image_tokens * (2 if noisy else 1)


@dataclass
class EncodedDoc:
    """One document as token plan columns (numpy), before it is placed in a row."""

    input_ids: np.ndarray
    labels: np.ndarray
    kind: np.ndarray
    image: np.ndarray  # local image index within the document
    patch: np.ndarray
    pos: np.ndarray  # [3, n]
    images: list[Image]
    key: str

    def __len__(self) -> int:
        return len(self.input_ids)

    def prefix(self, n: int) -> EncodedDoc:
        """Its first n tokens (the images are kept)."""
        cut = (self.input_ids[:n], self.labels[:n], self.kind[:n], self.image[:n], self.patch[:n])
        return EncodedDoc(*cut, self.pos[:, :n], self.images, self.key)


def copies(img: Image, last: bool, spec: PackSpec) -> list[int]:
    """The image's copies: noisy (a generation target), then clean. A target that ends its document needs no
    clean copy: no later token would attend to it."""
    clean = [] if (last and img.loss and not spec.trailing_clean) else [KIND_CLEAN]
    return ([KIND_NOISY] if img.loss else []) + clean


@dataclass
class _Columns:
    """The columns of one document as they grow, and the next 1-D position."""

    spec: PackSpec
    cols: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in ("input_ids", "kind", "image", "patch", "t", "h", "w")}
    )
    images: list[Image] = field(default_factory=list)
    p: int = 0  # 1-D position

    def __len__(self) -> int:
        return len(self.cols["input_ids"])

    def text(self, ids: list[int]) -> None:
        cols, n = self.cols, len(ids)
        cols["input_ids"] += ids
        cols["kind"] += [KIND_TEXT] * n
        cols["image"] += [-1] * n
        cols["patch"] += [-1] * n
        rng = list(range(self.p, self.p + n))
        cols["t"] += rng
        cols["h"] += rng
        cols["w"] += rng
        self.p += n

    def image(self, img: Image, last: bool) -> None:
        """<boi>, the copies at (p, p + row, p + col), <eoi>; text resumes at p + max(gh, gw)."""
        sp, cols = self.spec, self.cols
        gh, gw = sp.grid
        self.text([sp.boi])
        p = self.p
        rows, cc = np.divmod(np.arange(gh * gw), gw)
        for kind in copies(img, last, sp):
            cols["input_ids"] += [sp.pad] * (gh * gw)
            cols["kind"] += [kind] * (gh * gw)
            cols["image"] += [len(self.images)] * (gh * gw)
            cols["patch"] += list(range(gh * gw))
            cols["t"] += [p] * (gh * gw)
            cols["h"] += (p + rows).tolist()
            cols["w"] += (p + cc).tolist()
        self.images.append(img)
        self.p += max(gh, gw)
        self.text([sp.eoi])

    def finish(self, key: str) -> EncodedDoc:
        cols = self.cols
        ids = np.asarray(cols["input_ids"], dtype=np.int64)
        kind = np.asarray(cols["kind"], dtype=np.int64)
        return EncodedDoc(
            input_ids=ids,
            labels=next_token_labels(ids, kind, self.spec.boi, self.spec.eos),
            kind=kind,
            image=np.asarray(cols["image"], dtype=np.int64),
            patch=np.asarray(cols["patch"], dtype=np.int64),
            pos=np.stack([np.asarray(cols[k], dtype=np.int64) for k in ("t", "h", "w")]),
            images=self.images,
            key=key,
        )


def encode_document(
    doc: Document, spec: PackSpec, text_ids: Callable[[str], list[int]], max_len: int
) -> list[EncodedDoc]:
    """A document as one EncodedDoc (or several, for text longer than `max_len`). Trailing segments that do
    not fit are dropped; a document whose first image does not fit returns []."""
    cols = _Columns(spec)
    cols.text([spec.bos])
    has_image = any(isinstance(s, Image) for s in doc.segments)
    for i, seg in enumerate(doc.segments):
        if isinstance(seg, Image):
            last = i == len(doc.segments) - 1
            need = 2 + spec.image_tokens * len(copies(seg, last, spec)) + 1  # <boi>, copies, <eoi>, + room for </s>
            if len(cols) + need > max_len:
                break
            cols.image(seg, last)
        else:
            ids = text_ids(seg)
            room = max_len - len(cols) - 1
            if has_image and len(ids) > room:
                break
            cols.text(ids)
    cols.text([spec.eos])
    if has_image and not cols.images:
        return []
    enc = cols.finish(doc.key)
    if len(enc) <= max_len:
        return [enc]
    return split_text(enc, max_len)


def next_token_labels(ids: np.ndarray, kind: np.ndarray, boi: int, eos: int) -> np.ndarray:
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    where = np.flatnonzero(kind == KIND_TEXT)
    src, dst = where[:-1], where[1:]
    ok = (ids[src] != boi) & (ids[src] != eos)
    labels[src[ok]] = ids[dst[ok]]
    return labels


def split_text(enc: EncodedDoc, max_len: int) -> list[EncodedDoc]:
    """Cut a long text-only document into row-sized pieces (positions restart in each piece)."""
    out = []
    for a in range(0, len(enc), max_len):
        b = min(a + max_len, len(enc))
        labels = enc.labels[a:b].copy()
        if b < len(enc):
            labels[-1] = IGNORE  # its target lies in the next piece
        n = b - a
        pos = np.broadcast_to(np.arange(n), (3, n)).copy()
        out.append(
            EncodedDoc(
                enc.input_ids[a:b],
                labels,
                enc.kind[a:b],
                enc.image[a:b],
                enc.patch[a:b],
                pos,
                [],
                f"{enc.key}#{a // max_len}",
            )
        )
    return out
