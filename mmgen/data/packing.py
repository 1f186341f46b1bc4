"""Documents -> packed fixed-length rows, and the token plan that everything downstream reads.

Layout of one document (positions restart at 0 in every document, so a packed document is seen exactly
as it would be alone):

    <s> text ... <boi> [noisy copy: G tokens] [clean copy: G tokens] <eoi> text ... </s>

An image that is a generation target (`Image.loss`) appears twice at the same rotary positions: a noisy
copy that carries the image loss and that no other token can see, and a clean copy that later tokens
attend to. A context-only image has only the clean copy; a target that ends its document has only the
noisy copy (nothing after it would read the clean one; this saves a third of the tokens of a
caption-then-image document).

Rotary positions are (t, h, w) triples (multimodal RoPE): a text token at 1-D position p has (p, p, p); the
image after a <boi> at p has (p+1, p+1+row, p+1+col) for its latent patch (row, col), and the text after it
resumes at p+1+max(gh, gw).

Next-token labels: each text token predicts the next text token of its document, except <boi> (an image
follows) and </s>. The token before <boi> learns to open an image; <eoi> predicts the text after it.

The plan, per packed micro-batch of R rows x L tokens (int tensors; -1 / -100 where not applicable):
    input_ids [R, L]   text ids (pad for image and padding tokens)
    labels    [R, L]   next-token target of the output at this position, -100 for none
    kind      [R, L]   0 text, 1 clean image token, 2 noisy image token (KIND_*)
    doc       [R, L]   document id, unique in the micro-batch; -1 for padding
    image     [R, L]   index into `images` for image tokens
    patch     [R, L]   patch index (row-major in the latent grid) for image tokens
    pos       [3, R, L] rotary positions (t, h, w)
    images    [N, 3, H, W] uint8 pixels, or [N, C, h, w] float latents when the source caches them
    image_loss [N]     the image has a noisy copy (is a generation target)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from mmgen.data.documents import Document, Image
from mmgen.data.plan import IGNORE, KIND_CLEAN, KIND_NOISY, KIND_TEXT
from mmgen.data.shards import Item
from mmgen.errors import DataError

__all__ = [
    "IGNORE",
    "KIND_CLEAN",
    "KIND_NOISY",
    "KIND_TEXT",
    "LATENTS_KEY",
    "EncodedDoc",
    "PackSpec",
    "Packer",
    "to_model_pixels",
]
LATENTS_KEY = "image_tokenizer_sha256"  # a cached document's meta: the tokenizer that made its latents


def to_model_pixels(img: Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to size x size; returns (3, size, size) uint8."""
    rgb = img.rgb()
    h, w = rgb.shape[:2]
    if (h, w) != (size, size):
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        pil = PILImage.fromarray(rgb[top : top + s, left : left + s])
        rgb = np.asarray(pil.resize((size, size), PILImage.BICUBIC, reducing_gap=3.0))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


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

    @property
    def image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def image_doc_len(self, noisy: bool = True) -> int:
        """Tokens of the smallest image document: <s> <boi> image [noisy image] <eoi> </s>."""
        return 4 + self.image_tokens * (2 if noisy else 1)


@dataclass
class EncodedDoc:
    """One document as token plan columns (numpy), before it is placed in a row."""

    ids: np.ndarray
    labels: np.ndarray
    kind: np.ndarray
    image: np.ndarray  # local image index within the document
    patch: np.ndarray
    pos: np.ndarray  # [3, n]
    images: list[Image]
    key: str

    def __len__(self) -> int:
        return len(self.ids)


class Packer:
    """Tokenizes documents and packs them into micro-batches of `rows` x `seq_len` tokens."""

    def __init__(self, tokenizer, spec: PackSpec, use_latents: bool = False, latents_of: str = ""):
        self.tok = tokenizer
        self.spec = spec
        self.use_latents = use_latents
        self.latents_of = latents_of  # the sha256 of the tokenizer every cached document must name ("": any)

    # ------------------------------------------------------------------ one document
    def _text_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def encode(self, doc: Document, max_len: int | None = None) -> list[EncodedDoc]:
        """A document as one EncodedDoc (or several, for text longer than a row). Trailing segments that do
        not fit are dropped; a document whose first image does not fit returns []."""
        if self.latents_of and doc.images and doc.meta.get(LATENTS_KEY) != self.latents_of:
            made = doc.meta.get(LATENTS_KEY)
            whose = (
                f"of another image tokenizer (sha256 {made[:12]}"
                if made
                else "that do not name their tokenizer (an older cache"
            )
            raise DataError(
                f"document {doc.key!r} holds latents {whose}; expected {self.latents_of[:12]}): its "
                f"shard is not the cache's; re-cache with scripts/cache_latents.py --restart"
            )
        sp = self.spec
        max_len = max_len or sp.seq_len
        gh, gw = sp.grid
        cols: dict[str, list] = {k: [] for k in ("ids", "kind", "image", "patch", "t", "h", "w")}
        images: list[Image] = []
        p = 0  # 1-D position

        def text(ids: list[int]) -> None:
            nonlocal p
            n = len(ids)
            cols["ids"] += ids
            cols["kind"] += [KIND_TEXT] * n
            cols["image"] += [-1] * n
            cols["patch"] += [-1] * n
            rng = list(range(p, p + n))
            cols["t"] += rng
            cols["h"] += rng
            cols["w"] += rng
            p += n

        def copies(img: Image, last: bool) -> list[int]:
            """The image's copies: noisy (a generation target), then clean. A target that ends its document
            needs no clean copy: no later token would attend to it."""
            clean = [] if (last and img.loss and not sp.trailing_clean) else [KIND_CLEAN]
            return ([KIND_NOISY] if img.loss else []) + clean

        def image(img: Image, last: bool) -> None:
            nonlocal p
            text([sp.boi])
            rows, cc = np.divmod(np.arange(gh * gw), gw)
            for kind in copies(img, last):
                cols["ids"] += [sp.pad] * (gh * gw)
                cols["kind"] += [kind] * (gh * gw)
                cols["image"] += [len(images)] * (gh * gw)
                cols["patch"] += list(range(gh * gw))
                cols["t"] += [p] * (gh * gw)
                cols["h"] += (p + rows).tolist()
                cols["w"] += (p + cc).tolist()
            images.append(img)
            p += max(gh, gw)
            text([sp.eoi])

        text([sp.bos])
        has_image = any(isinstance(s, Image) for s in doc.segments)
        for i, seg in enumerate(doc.segments):
            if isinstance(seg, Image):
                last = i == len(doc.segments) - 1
                need = 2 + sp.image_tokens * len(copies(seg, last)) + 1  # <boi>, copies, <eoi>, + room for </s>
                if len(cols["ids"]) + need > max_len:
                    break
                image(seg, last)
            else:
                ids = self._text_ids(seg)
                room = max_len - len(cols["ids"]) - 1
                if has_image and len(ids) > room:
                    break
                text(ids)
        text([sp.eos])
        if has_image and not images:
            return []
        enc = self._finish(cols, images, doc.key)
        if len(enc) <= max_len:
            return [enc]
        return self._split_text(enc, max_len)

    @staticmethod
    def _labels(ids: np.ndarray, kind: np.ndarray, boi: int, eos: int) -> np.ndarray:
        labels = np.full(len(ids), IGNORE, dtype=np.int64)
        where = np.flatnonzero(kind == KIND_TEXT)
        src, dst = where[:-1], where[1:]
        ok = (ids[src] != boi) & (ids[src] != eos)
        labels[src[ok]] = ids[dst[ok]]
        return labels

    def _finish(self, cols: dict[str, list], images: list[Image], key: str) -> EncodedDoc:
        ids = np.asarray(cols["ids"], dtype=np.int64)
        kind = np.asarray(cols["kind"], dtype=np.int64)
        return EncodedDoc(
            ids=ids,
            labels=self._labels(ids, kind, self.spec.boi, self.spec.eos),
            kind=kind,
            image=np.asarray(cols["image"], dtype=np.int64),
            patch=np.asarray(cols["patch"], dtype=np.int64),
            pos=np.stack([np.asarray(cols[k], dtype=np.int64) for k in ("t", "h", "w")]),
            images=images,
            key=key,
        )

    @staticmethod
    def _split_text(enc: EncodedDoc, max_len: int) -> list[EncodedDoc]:
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
                    enc.ids[a:b],
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

    # ------------------------------------------------------------------ micro-batches
    def collate(self, rows: list[list[EncodedDoc]]) -> dict[str, Any]:
        sp = self.spec
        R, L = sp.rows, sp.seq_len
        ids = torch.full((R, L), sp.pad, dtype=torch.long)
        labels = torch.full((R, L), IGNORE, dtype=torch.long)
        kind = torch.zeros((R, L), dtype=torch.long)
        doc = torch.full((R, L), -1, dtype=torch.long)
        image = torch.full((R, L), -1, dtype=torch.long)
        patch = torch.full((R, L), -1, dtype=torch.long)
        pos = torch.zeros((3, R, L), dtype=torch.long)
        images: list[Image] = []
        keys: list[str] = []
        n_doc = 0
        for r, row in enumerate(rows):
            at = 0
            for enc in row:
                n = len(enc)
                sl = slice(at, at + n)
                ids[r, sl] = torch.from_numpy(enc.ids)
                labels[r, sl] = torch.from_numpy(enc.labels)
                kind[r, sl] = torch.from_numpy(enc.kind)
                doc[r, sl] = n_doc
                img_local = torch.from_numpy(enc.image)
                image[r, sl] = torch.where(img_local >= 0, img_local + len(images), img_local)
                patch[r, sl] = torch.from_numpy(enc.patch)
                pos[:, r, sl] = torch.from_numpy(enc.pos)
                images += enc.images
                keys.append(enc.key)
                n_doc += 1
                at += n
        batch: dict[str, Any] = {
            "input_ids": ids,
            "labels": labels,
            "kind": kind,
            "doc": doc,
            "image": image,
            "patch": patch,
            "pos": pos,
            "keys": keys,
            "image_loss": torch.tensor([im.loss for im in images], dtype=torch.bool),
            "image_meta": [im.meta for im in images],
        }
        batch["images"] = self._image_tensor(images)
        return batch

    def _image_tensor(self, images: list[Image]) -> torch.Tensor:
        sp = self.spec
        if not images:
            return torch.zeros((0, 3, sp.image_size, sp.image_size), dtype=torch.uint8)
        if self.use_latents:
            if any(im.latents is None for im in images):
                raise DataError(
                    "data.latents=true but a document has images without cached latents: write the "
                    "shards with scripts/cache_latents.py"
                )
            return torch.from_numpy(np.stack([im.latents for im in images])).float()
        if any(im.latents is not None and im.data is None and im.pixels is None for im in images):
            raise DataError(
                "the shards hold cached latents (scripts/cache_latents.py), not images: set data.latents=true"
            )
        return torch.from_numpy(np.stack([to_model_pixels(im, sp.image_size) for im in images]))

    def _place(self, rows: list[list[EncodedDoc]], used: int, pieces: list[EncodedDoc]) -> int | None:
        """Append `pieces` to the rows (greedy, in order) and return the new fill of the last row, or None
        (rows untouched) when they do not all fit in this micro-batch."""
        sp = self.spec
        n_rows, fill, plan = len(rows), used, []
        for piece in pieces:
            if fill + len(piece) > sp.seq_len:
                n_rows, fill = n_rows + 1, 0
            if n_rows > sp.rows:
                return None
            plan.append(n_rows - 1)
            fill += len(piece)
        for r, piece in zip(plan, pieces):
            while len(rows) <= r:
                rows.append([])
            rows[r].append(piece)
        return fill

    def batches(self, items: Iterable[Item], keep_last: bool = False) -> Iterator[dict[str, Any]]:
        """Greedy packing: documents fill rows in order; a document that does not fit starts the next row.
        A document is never split across micro-batches, and each micro-batch carries the cursor of the first
        document it did not take, so a resumed stream re-reads exactly that document. `keep_last` also
        yields the partial micro-batch at the end of a finite stream (evaluation), with cursor None."""
        sp = self.spec
        rows: list[list[EncodedDoc]] = [[]]
        used = 0
        skipped: list[tuple[str, str]] = []
        for item in items:
            pieces = self.encode(item.doc)[: sp.rows]  # text beyond a whole micro-batch is dropped
            if not pieces:
                skipped += item.skipped
                skipped.append((item.doc.key, f"its first image needs more than seq_len={sp.seq_len} tokens"))
                continue
            fill = self._place(rows, used, pieces)
            if fill is None:  # micro-batch full: emit it; this document opens the next one
                batch = self.collate(rows)
                batch["cursor"] = {"worker": item.worker, "epoch": item.epoch, "index": item.index}
                batch["skipped"], skipped = skipped, []
                yield batch
                rows = [[]]
                fill = self._place(rows, 0, pieces)
                assert fill is not None
            skipped += item.skipped
            used = fill
        # a partial micro-batch at the end of a finite stream is dropped unless keep_last (training streams never end)
        if keep_last and any(rows):
            batch = self.collate(rows)
            batch["cursor"], batch["skipped"] = None, skipped
            yield batch
