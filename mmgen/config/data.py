"""The data configs: where training documents come from (`DataConfig`) and the procedural shapes set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from mmgen.config.ranges import AT_LEAST_0, MAX_SEQ_LEN, UNIT, Range, _check


@dataclass
class ShapesConfig:
    """The procedural `shapes` data set: coloured shapes with captions and checkable ground truth."""

    image_size: int = 32
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle", "diamond"])
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow", "purple", "white"])
    sizes: list[str] = field(default_factory=lambda: ["small", "large"])
    p_two_objects: float = 0.5
    background: list[int] = field(default_factory=lambda: [0, 0, 0])
    # Mix of document layouts: caption then image, image then caption, several images with text between.
    p_caption_image: float = 0.6
    p_image_caption: float = 0.15
    p_interleaved: float = 0.25
    seed: int = 0
    split: Literal["train", "test"] = "train"
    # "colour shape" pairs the train split never draws (e.g. "red triangle"), so prompts that ask for them
    # test generalisation to unseen combinations; the test split draws every pair
    holdout: list[str] = field(default_factory=list)
    # documents per drawn caption: documents i*repeat .. i*repeat + repeat-1 share layout and captions and differ
    # in placement, and a stream deals them to one worker in a row, so with imm.group_by = prompt an IMM group
    # holds `repeat` images of one caption instead of one image each of M captions
    repeat: int = 1

    RANGES: ClassVar[dict[str, Range]] = {
        "image_size": Range(16, 1024),
        "p_two_objects": UNIT,
        "background": Range(0, 255),
        "p_caption_image": UNIT,
        "p_image_caption": UNIT,
        "p_interleaved": UNIT,
        "seed": AT_LEAST_0,
        "repeat": Range(1, 64),
    }

    def __post_init__(self) -> None:
        _check(self.image_size >= 16, f"image_size must be >= 16, got {self.image_size}")
        _check(len(self.shapes) > 0 and len(self.colors) > 0, "shapes and colors must not be empty")
        _check(0.0 <= self.p_two_objects <= 1.0, "p_two_objects must lie in [0, 1]")
        _check(self.repeat >= 1, f"repeat (documents per drawn caption) must be >= 1, got {self.repeat}")
        total = self.p_caption_image + self.p_image_caption + self.p_interleaved
        _check(total > 0, "the layout probabilities must not all be 0")
        for pair in self.holdout:
            color, _, shape = pair.partition(" ")
            _check(
                color in self.colors and shape in self.shapes,
                f"holdout pair {pair!r} is not '<colour> <shape>' with colour in {self.colors} and shape in "
                f"{self.shapes}",
            )
        _check(len(self.holdout_pairs) < len(self.colors) * len(self.shapes), "holdout must leave a pair to draw")
        for shape in self.shapes:
            _check(
                any((c, shape) not in self.holdout_pairs for c in self.colors),
                f"holdout removes every colour of {shape!r}; keep at least one",
            )

    @property
    def holdout_pairs(self) -> set[tuple[str, str]]:
        """The held-out (colour, shape) pairs."""
        return {tuple(p.split(" ", 1)) for p in self.holdout}  # type: ignore[misc]


@dataclass
class DataConfig:
    """Where training documents come from and how they are packed into fixed-length rows."""

    source: Literal["shapes", "shards", "img2dataset", "imagefolder", "jsonl"] = "shapes"
    shards: str = ""  # a directory written by scripts/prepare_data.py, or a glob of .tar files
    # img2dataset / imagefolder / jsonl: data in those layouts, read as it is (data/README.md)
    path: str = ""  # img2dataset: folder, glob or brace pattern of .tar; imagefolder: folder; jsonl: file/folder/glob
    caption_field: str = ""  # "" = the layout's convention: img2dataset {key}.txt, imagefolder column "text"
    caption_layout: Literal["caption_image", "image_caption", "both"] = "caption_image"  # captioned-image order
    min_image_size: int = 0  # shorter side below this: a skipped bad sample (0 = image_size; 1 = any size)
    latents: bool = False  # data.shards holds latents from scripts/cache_latents.py (checked against the tokenizer)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    image_size: int = 32  # every image is centre-cropped and resized to this (pixels)
    seq_len: int = 256  # tokens per packed row
    rows: int = 8  # rows per micro-batch
    num_workers: int = 0
    shuffle_buffer: int = 256
    seed: int = 0

    RANGES: ClassVar[dict[str, Range]] = {
        "image_size": Range(8, 1024),
        "seq_len": Range(8, MAX_SEQ_LEN),
        "rows": Range(1, 4096),
        "num_workers": Range(0, 256),
        "shuffle_buffer": AT_LEAST_0,
        "seed": AT_LEAST_0,
        "min_image_size": AT_LEAST_0,
    }

    def __post_init__(self) -> None:
        _check(self.source != "shards" or bool(self.shards), "source 'shards' needs data.shards=<dir or glob>")
        _check(
            self.source in ("shapes", "shards") or bool(self.path),
            f"source '{self.source}' needs data.path=<where the data is> (see data/README.md)",
        )
        _check(
            not self.latents or self.source == "shards",
            "data.latents=true reads shards written by scripts/cache_latents.py: set data.source=shards",
        )
