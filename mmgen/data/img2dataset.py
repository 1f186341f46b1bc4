"""Image-text webdataset shards in the img2dataset layout, trained on as they are.

img2dataset (output_format=webdataset) writes, per shard, `00000.tar` with `00000.parquet` and
`00000_stats.json` beside it (ignored here). Each tar holds per sample

    000000012.jpg    the image (.jpg, .png or .webp: the encode format)
    000000012.txt    the caption (when a caption column was given)
    000000012.json   {"url": ..., "caption": ..., "key": "000000012", "status": "success", "width": ..., ...}

The caption is `{key}.txt` (caption_field "" or "txt"), falling back to the .json's "caption"; any other
caption_field names a .json field. Shards are a folder, a glob or a brace-expanded URL
(`/data/laion/{00000..00127}.tar`); reading reuses `ShardStream` (split, shuffle, cursor, tar damage).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmgen.data.documents import IMAGE_EXTS, Document, json_part
from mmgen.data.external import ReadOptions, caption_document, clean_caption, load_image, safe_key
from mmgen.data.shards import ShardStream, Split, list_shards
from mmgen.errors import DataError, SampleError


def list_urls(spec: str) -> list[str]:
    """A folder (its .tar files), a glob, or a brace pattern -> sorted tar paths that exist."""
    if "{" in spec:
        import braceexpand

        urls = list(braceexpand.braceexpand(spec))
        if "://" in spec or spec.startswith("pipe:"):
            return urls  # remote shards: webdataset opens them (http(s) through curl, pipe: a command)
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(urls)} shards of {spec!r} do not exist (first: "
                f"{missing[0]}): fix the brace range or point data.path at the folder"
            )
        return urls
    try:
        return list_shards(spec)
    except FileNotFoundError as e:
        raise DataError(
            f"no img2dataset shards (.tar) at {spec!r}: give the output folder of img2dataset, a glob "
            f"or a brace pattern like 'DIR/{{00000..00009}}.tar'"
        ) from e


class Img2DatasetSample:
    """webdataset sample dict of an img2dataset tar -> a one-image captioned Document (SampleError if bad)."""

    def __init__(self, opts: ReadOptions):
        self.opts = opts

    def caption(self, sample: dict[str, Any], key: str) -> str:
        field = self.opts.caption_field or "txt"
        if field == "txt" and "txt" in sample:
            return sample["txt"].decode("utf-8", errors="replace")
        if "json" not in sample:
            raise SampleError(f"sample {key!r} has no caption: neither {key}.txt nor {key}.json")
        meta = json_part(sample, key)
        if not isinstance(meta, dict):
            raise SampleError(f"sample {key!r}: {key}.json holds a {type(meta).__name__}, not an object with a caption")
        name = "caption" if field == "txt" else field
        if not isinstance(meta.get(name), str):
            raise SampleError(f"sample {key!r} has no caption: no {key}.txt and no string field {name!r} in its .json")
        return meta[name]

    def __call__(self, sample: dict[str, Any]) -> Document:
        key = sample.get("__key__", "?")
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise SampleError(
                f"sample {key!r} has no image ({', '.join(IMAGE_EXTS)}); parts: "
                f"{sorted(k for k in sample if not k.startswith('_'))}"
            )
        caption = clean_caption(self.caption(sample, key), f"sample {key!r}")  # before the costly decode
        image = load_image(sample[ext], ext, self.opts, where=f"sample {key!r}")
        return caption_document(safe_key(key), caption, image, self.opts, "img2dataset")


def img2dataset_stream(
    spec: str,
    opts: ReadOptions,
    split: Split,
    *,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 256,
    epochs: int | None = None,
) -> ShardStream:
    urls = list_urls(spec)
    try:
        return ShardStream(
            urls,
            split,
            seed=seed,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            epochs=epochs,
            decode=Img2DatasetSample(opts),
        )
    except ValueError as e:  # too few shards for the ranks x workers
        raise DataError(f"{spec}: {e}") from e


def write_img2dataset(docs: Iterable[Document], out: str | Path, per_shard: int = 1000) -> int:
    """Write captioned one-image documents the way img2dataset does (numbered keys, .jpg/.txt/.json, a
    _stats.json per shard); for tests, benchmarks and the end-to-end example. Returns the sample count."""
    import webdataset as wds

    from mmgen.data.documents import encode_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digits = len(str(per_shard - 1))
    counts: list[int] = []
    sink = None
    for doc in docs:
        texts, images = [s for s in doc.segments if isinstance(s, str)], doc.images
        if len(texts) != 1 or len(images) != 1:
            raise ValueError(f"document {doc.key!r}: the img2dataset layout holds one caption and one image")
        if not counts or counts[-1] == per_shard:
            if sink is not None:
                sink.close()
            counts.append(0)
            sink = wds.TarWriter(str(out / f"{len(counts) - 1:05d}.tar"))
        img = images[0]
        data, fmt = (img.data, img.fmt) if img.data is not None else (encode_png(img.rgb()), "png")
        key = f"{len(counts) - 1:05d}{counts[-1]:0{digits}d}"
        h, w = img.rgb().shape[:2]
        meta = {"url": doc.key, "caption": texts[0], "key": key, "status": "success", "width": w, "height": h}
        sink.write({"__key__": key, fmt: data, "txt": texts[0].encode(), "json": json.dumps(meta).encode()})
        counts[-1] += 1
    if sink is not None:
        sink.close()
    for i, c in enumerate(counts):  # written beside the tars, as img2dataset does; readers ignore them
        (out / f"{i:05d}_stats.json").write_text(json.dumps({"count": c, "successes": c, "failed_to_download": 0}))
    return sum(counts)
