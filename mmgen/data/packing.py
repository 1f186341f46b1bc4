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

The plan, per packed micro-batch of R rows x L tokens, is a `TokenPlan` (`mmgen/data/plan.py`): the columns
input_ids, labels, kind, doc, image, patch, pos, and the images with their `image_loss` flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image as PILImage

from mmgen.data.documents import Document, Image
from mmgen.data.encoding import EncodedDoc, PackSpec, encode_document
from mmgen.data.plan import IGNORE, KIND_CLEAN, KIND_NOISY, KIND_TEXT, TokenPlan
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
    "TokenPlan",
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
        """A document as one EncodedDoc (or several, for text longer than a row): `encode_document`."""
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
        return encode_document(doc, self.spec, self._text_ids, max_len or self.spec.seq_len)

    # ------------------------------------------------------------------ micro-batches
    def collate(self, rows: list[list[EncodedDoc]]) -> TokenPlan:
        sp = self.spec
        R, L = sp.rows, sp.seq_len
        fill = {"input_ids": sp.pad, "labels": IGNORE, "kind": KIND_TEXT, "doc": -1, "image": -1, "patch": -1}
        cols = {k: torch.full((R, L), v, dtype=torch.long) for k, v in fill.items()}
        pos = torch.zeros((3, R, L), dtype=torch.long)
        images: list[Image] = []
        keys: list[str] = []
        for r, row in enumerate(rows):
            at = 0
            for enc in row:
                sl = slice(at, at + len(enc))
                for k in ("input_ids", "labels", "kind", "patch"):
                    cols[k][r, sl] = torch.from_numpy(getattr(enc, k))
                cols["doc"][r, sl] = len(keys)  # one id per document of the micro-batch
                img_local = torch.from_numpy(enc.image)  # the document's own image indices -> the batch's
                cols["image"][r, sl] = torch.where(img_local >= 0, img_local + len(images), img_local)
                pos[:, r, sl] = torch.from_numpy(enc.pos)
                images += enc.images
                keys.append(enc.key)
                at += len(enc)
        image_loss = torch.tensor([im.loss for im in images], dtype=torch.bool)
        meta = [im.meta for im in images]
        return TokenPlan(
            **cols, pos=pos, keys=keys, image_loss=image_loss, image_meta=meta, images=self._image_tensor(images)
        )

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

    def batches(self, items: Iterable[Item], keep_last: bool = False) -> Iterator[TokenPlan]:
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
                batch.cursor = {"worker": item.worker, "epoch": item.epoch, "index": item.index}
                batch.skipped, skipped = skipped, []
                yield batch
                rows = [[]]
                fill = self._place(rows, 0, pieces)
                assert fill is not None
            skipped += item.skipped
            used = fill
        # a partial micro-batch at the end of a finite stream is dropped unless keep_last (training streams never end)
        if keep_last and any(rows):
            batch = self.collate(rows)
            batch.cursor, batch.skipped = None, skipped
            yield batch
