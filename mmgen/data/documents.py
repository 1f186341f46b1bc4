"""Interleaved documents: a list of text and image segments, and their webdataset sample form.

A sample in a shard is `{key}.json` (the document structure) plus one file per image, named by its index:
`{key}.0.png`, `{key}.1.jpg` (original bytes kept, no re-encoding) or `{key}.0.npy` (cached latents).

    {"segments": [{"text": "a red circle"}, {"image": 0, "meta": {...}}, {"text": "..."}], "meta": {...}}
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage

from mmgen.errors import SampleError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class Image:
    """One image of a document: pixels (H, W, 3) uint8, or encoded bytes, or cached latents (C, h, w)."""

    pixels: np.ndarray | None = None
    data: bytes | None = None  # encoded file bytes (kept as-is when writing shards)
    fmt: str = "png"  # extension of `data`
    latents: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    loss: bool = True  # train the model to generate this image (False: context only)

    def rgb(self) -> np.ndarray:
        """Pixels as (H, W, 3) uint8, decoding `data` on first use."""
        if self.pixels is None:
            if self.data is None:
                raise SampleError("image has neither pixels nor encoded data")
            self.pixels = decode_image(self.data)
        return self.pixels


Segment = str | Image


@dataclass
class Document:
    key: str
    segments: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[Image]:
        return [s for s in self.segments if isinstance(s, Image)]

    def text_with_placeholders(self, placeholder: str = "<image>") -> str:
        return " ".join(s if isinstance(s, str) else placeholder for s in self.segments)


def to_rgb8(im: PILImage.Image) -> np.ndarray:
    """(H, W, 3) uint8 of any Pillow image. 16-bit greyscale (modes I;16*, and I as Pillow opens 16-bit PNGs)
    is scaled by 255 / 65535 (x / 257, rounded): Pillow's own convert("RGB") clips it at 255 instead, which
    turns nearly every pixel white."""
    if im.mode.startswith("I"):
        x = np.asarray(im).astype(np.float64)
        if x.min() < 0 or x.max() > 65535:
            raise ValueError(f"{im.mode} pixels outside 0..65535 (min {x.min():g}, max {x.max():g})")
        grey = np.rint(x / 257.0).astype(np.uint8)  # 65535 / 257 = 255 exactly
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def decode_image(data: bytes) -> np.ndarray:
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return to_rgb8(im)
    except Exception as e:  # PIL raises several types for broken files
        raise SampleError(f"cannot decode image ({type(e).__name__}: {e})") from e


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def to_sample(doc: Document) -> dict[str, Any]:
    """Document -> webdataset sample dict (bytes values, keyed by extension)."""
    if "." in doc.key or "/" in doc.key:
        raise ValueError(f"document key {doc.key!r} must not contain '.' or '/' (webdataset splits on them)")
    sample: dict[str, Any] = {"__key__": doc.key}
    segs, n = [], 0
    for seg in doc.segments:
        if isinstance(seg, str):
            segs.append({"text": seg})
            continue
        entry: dict[str, Any] = {"image": n}
        if seg.meta:
            entry["meta"] = seg.meta
        if not seg.loss:
            entry["loss"] = False
        if seg.latents is not None:
            buf = io.BytesIO()
            np.save(buf, seg.latents, allow_pickle=False)
            sample[f"{n}.npy"] = buf.getvalue()
        elif seg.data is not None:
            sample[f"{n}.{seg.fmt}"] = seg.data
        else:
            sample[f"{n}.png"] = encode_png(seg.rgb())
        segs.append(entry)
        n += 1
    sample["json"] = json.dumps({"segments": segs, "meta": doc.meta}).encode()
    return sample


def check_structure(spec: Any, key: str) -> list[dict[str, Any]]:
    """The segment entries of a sample's parsed .json, each checked: `{"text": str}` or
    `{"image": int >= 0, "meta": {...}?, "loss": bool?}`; anything else is a SampleError naming it."""

    def bad(what: str) -> SampleError:
        return SampleError(
            f'sample {key!r}: {what} (a document is {{"segments": [{{"text": "..."}}, {{"image": 0}}, '
            f'...], "meta": {{...}}}})'
        )

    segments = spec.get("segments") if isinstance(spec, dict) else None
    if not isinstance(segments, list) or not segments:
        found = f"segments {segments!r:.60}" if isinstance(spec, dict) else f"{spec!r:.60}"
        raise bad(f".json holds {found}, not a non-empty list of segments")
    if not isinstance(spec.get("meta", {}), dict):
        raise bad(f"meta is {spec['meta']!r:.60}, not an object")
    for i, entry in enumerate(segments):
        if not isinstance(entry, dict):
            raise bad(f"segment {i} is {entry!r:.60}, not an object")
        if "text" in entry:
            if not isinstance(entry["text"], str):
                raise bad(f"segment {i} has text {entry['text']!r:.60}, not a string")
        elif "image" in entry:
            n = entry["image"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise bad(f"segment {i} has image {n!r:.60}, not an image index >= 0")
            if not isinstance(entry.get("meta", {}), dict) or not isinstance(entry.get("loss", True), bool):
                raise bad(f"segment {i} has a meta that is not an object or a loss that is not true/false")
        else:
            raise bad(f"segment {i} has neither text nor image")
    return segments


def json_part(sample: dict[str, Any], key: str) -> Any:
    """The parsed `.json` part of a webdataset sample (present); unreadable JSON is a SampleError."""
    try:
        return json.loads(sample["json"])
    except Exception as e:  # JSONDecodeError, UnicodeDecodeError, RecursionError on deep nesting
        raise SampleError(f"sample {key!r}: unreadable .json ({type(e).__name__}: {e})") from e


def from_sample(sample: dict[str, Any]) -> Document:
    """webdataset sample dict -> Document; raises SampleError naming what is wrong."""
    key = sample.get("__key__", "?")
    if "json" not in sample:
        raise SampleError(f"sample {key!r} has no .json part (parts: {sorted(k for k in sample if k[0] != '_')})")
    spec = json_part(sample, key)
    segments: list[Segment] = []
    for entry in check_structure(spec, key):
        if "text" in entry:
            segments.append(entry["text"])
            continue
        i = entry.get("image")
        img = Image(meta=entry.get("meta", {}), loss=entry.get("loss", True))
        if f"{i}.npy" in sample:
            try:
                img.latents = np.load(io.BytesIO(sample[f"{i}.npy"]), allow_pickle=False)
            except Exception as e:
                raise SampleError(f"sample {key!r}: image {i}: unreadable latents ({e})") from e
        else:
            ext = next((e for e in IMAGE_EXTS if f"{i}.{e}" in sample), None)
            if ext is None:
                raise SampleError(f"sample {key!r}: image {i} is missing from the shard")
            img.data, img.fmt = sample[f"{i}.{ext}"], ext
            try:
                img.rgb()  # decode now, so a corrupt image is caught where the sample is read
            except SampleError as e:
                raise SampleError(f"sample {key!r}: image {i}: {e}") from e
        segments.append(img)
    return Document(key=key, segments=segments, meta=spec.get("meta", {}))
