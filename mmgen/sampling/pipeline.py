"""`MMGenPipeline`: load a release folder and continue interleaved prompts.

    pipe = MMGenPipeline.from_pretrained("runs/shapes_tiny/release")
    out = pipe(["a large red circle <image:in.png> the same shape in blue"], steps=4, guidance=1.5)
    out[0].text, out[0].images; out[0].save("outputs/")   # PNGs + index.html

A prompt is a string with image references `<image:path>`, or a list of segments (str, numpy image, or
{"text": ...} / {"image": path}). Every check (files, sizes, context length, options, tokenizer match) runs
before any generation. Prompt images of another size are centre-cropped and resized to the model's size.
"""

from __future__ import annotations

import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from mmgen.data.documents import to_rgb8
from mmgen.errors import PromptError, TokenizerError
from mmgen.models.model import MMGenModel
from mmgen.sampling.interleaved import InterleavedSampler, SamplingOptions

IMAGE_REF = re.compile(r"<image:([^>]+)>")


def read_image(path: str | Path, where: str = "") -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise PromptError(f"image not found: {p}{where}")
    try:
        with PILImage.open(io.BytesIO(p.read_bytes())) as im:
            return to_rgb8(im)
    except Exception as e:
        raise PromptError(f"cannot read image {p}{where}: {type(e).__name__}: {e}") from e


def check_text(text: str, where: str) -> str:
    """Prompt text must be printable: no bytes that were not UTF-8 (surrogates) and no control characters
    other than tab and newline (a binary file passed as a prompt)."""
    bad = next(
        (c for c in text if "\ud800" <= c <= "\udfff" or (ord(c) < 32 and c not in "\t\n\r") or c == "\x7f"), None
    )
    if bad is not None:
        raise PromptError(
            f"prompt text{where} is not plain text (character {bad!r} at position {text.index(bad)}); "
            f"give UTF-8 text, and images as <image:path>"
        )
    return text


def parse_prompt(prompt: Any, index: int = 0) -> list[str | np.ndarray]:
    """String with <image:path> references, JSON text of a segment list, or a segment list -> segments."""
    where = f" (prompt {index + 1})"
    if isinstance(prompt, str) and prompt.lstrip().startswith("["):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError as e:
            raise PromptError(f"prompt {index + 1} looks like JSON but does not parse: {e}") from e
    if isinstance(prompt, str):
        segs: list[str | np.ndarray] = []
        pos = 0
        check_text(prompt, where)
        for m in IMAGE_REF.finditer(prompt):
            if prompt[pos : m.start()].strip():
                segs.append(prompt[pos : m.start()].strip())
            segs.append(read_image(m.group(1).strip(), where))
            pos = m.end()
        if prompt[pos:].strip():
            segs.append(prompt[pos:].strip())
        return segs
    if isinstance(prompt, (list, tuple)):
        segs = []
        for s in prompt:
            if isinstance(s, np.ndarray):
                segs.append(s)
            elif isinstance(s, str):
                segs.append(check_text(s, where))
            elif isinstance(s, dict) and isinstance(s.get("text"), str):
                segs.append(check_text(s["text"], where))
            elif isinstance(s, dict) and isinstance(s.get("image"), str):
                segs.append(read_image(s["image"], where))
            else:
                raise PromptError(
                    f"prompt {index + 1}: a segment must be text, an image array, {{'text': str}} "
                    f"or {{'image': path str}}, got {s!r:.80}"
                )
        return segs
    raise PromptError(f"prompt {index + 1} must be a string or a list of segments, got {type(prompt).__name__}")


@dataclass
class Result:
    prompt: list[str | np.ndarray]
    generated: list[str | np.ndarray] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s for s in self.generated if isinstance(s, str))

    @property
    def images(self) -> list[np.ndarray]:
        return [s for s in self.generated if isinstance(s, np.ndarray)]

    def save(self, folder: str | Path, name: str = "result") -> Path:
        """PNG per image and an HTML page showing prompt and continuation in order; returns the page."""
        return write_page([self], folder, name)

    def html(self, folder: Path, name: str) -> str:
        """This result as one HTML paragraph; its images are written to `folder` as `{name}-{role}-{i}.png`."""
        parts, n = [], 0
        for role, segs in (("prompt", self.prompt), ("generated", self.generated)):
            for s in segs:
                if isinstance(s, str):
                    parts.append(f'<span class="{role}">{html.escape(s)}</span>')
                else:
                    fn = f"{name}-{role}-{n}.png"
                    PILImage.fromarray(s).save(folder / fn)
                    parts.append(
                        f'<img class="{role}" src="{fn}" width="{4 * s.shape[1]}" style="image-rendering:pixelated">'
                    )
                    n += 1
        return "<p>" + " ".join(parts) + "</p>"


_STYLE = (
    "<style>body{font-family:sans-serif;background:#222;color:#ddd} .prompt{color:#9cf} .generated{color:#fd8}"
    " img{vertical-align:middle;margin:4px;border:2px solid #555} img.generated{border-color:#fd8}</style>"
)


def write_page(results: list[Result], folder: str | Path, name: str, title: str = "") -> Path:
    """One HTML page `{folder}/{name}.html` showing every result (prompt, then continuation) in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(r.html(folder, name if len(results) == 1 else f"{name}-{i:03d}") for i, r in enumerate(results))
    head = f"<h2>{html.escape(title)}</h2>" if title else ""
    page = folder / f"{name}.html"
    page.write_text(f"<!doctype html><meta charset='utf-8'>{_STYLE}{head}{body}")
    return page


class MMGenPipeline:
    def __init__(self, model: MMGenModel, text_tok, image_tok, defaults: dict[str, Any] | None = None):
        """`defaults`: SamplingOptions fields used where a call gives none (a release's sampling.json)."""
        self.model, self.text_tok, self.image_tok = model.eval(), text_tok, image_tok
        check_match(model.config, text_tok, image_tok)
        self.sampler = InterleavedSampler(model, text_tok, image_tok)
        self.defaults = dict(defaults or {})

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> MMGenPipeline:
        from mmgen.sampling.release import load_release, load_sampling_defaults

        return cls(*load_release(path, device), defaults=load_sampling_defaults(path))

    def __call__(self, prompts: Any, **options: Any) -> list[Result]:
        """Continue each prompt. Options are `SamplingOptions` fields (steps, guidance, max_new_tokens, ...)."""
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and not isinstance(prompts[0], (str, list, tuple))
        ):
            prompts = [prompts]
        unknown = set(options) - set(SamplingOptions.__dataclass_fields__)
        if unknown:
            raise PromptError(
                f"unknown option(s) {sorted(unknown)}; known: {sorted(SamplingOptions.__dataclass_fields__)}"
            )
        opts = SamplingOptions(**{**self.release_defaults(options), **options})
        try:
            opts.validate()
        except ValueError as e:
            raise PromptError(str(e)) from e
        parsed = [parse_prompt(p, i) for i, p in enumerate(prompts)]
        rows = self.sampler.run(parsed, opts)
        return [Result(p, r.segments) for p, r in zip(parsed, rows)]

    def release_defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        """The defaults a call with `options` gets: sampling.json's fields, with the guidance its
        guidance_by_steps names for the call's number of steps, unless the call sets guidance itself."""
        from mmgen.sampling.release import GUIDANCE_BY_STEPS

        defaults = dict(self.defaults)
        by_steps = defaults.pop(GUIDANCE_BY_STEPS, {})
        steps = options.get("steps", defaults.get("steps", SamplingOptions.steps))
        if "guidance" not in options and steps in by_steps:
            defaults["guidance"] = by_steps[steps]
        return defaults

    def text_to_image(self, prompts: list[str], batch: int = 50, seed: int = 0, **options: Any) -> list[np.ndarray]:
        """One image per prompt (image first, no text), in batches of `batch`; batch i uses seed + its first
        index, so a prompt's image does not depend on the other prompts' count. Options as in `__call__`."""
        images: list[np.ndarray] = []
        for i in range(0, len(prompts), batch):
            res = self(
                prompts[i : i + batch],
                image_first=True,
                stop_after_image=True,
                max_new_tokens=0,
                seed=seed + i,
                **options,
            )
            images += [r.images[0] for r in res]
        return images


def check_match(config, text_tok, image_tok) -> None:
    """The tokenizers must be the ones the model was trained with (sizes and special ids)."""
    problems = []
    if len(text_tok) != config.vocab_size:
        problems.append(f"text tokenizer has {len(text_tok)} tokens, the model {config.vocab_size}")
    for name in ("bos", "eos", "pad"):
        if getattr(text_tok, f"{name}_token_id") != getattr(config, f"{name}_token_id"):
            problems.append(f"{name} id differs")
    if text_tok.convert_tokens_to_ids("<boi>") != config.boi_token_id:
        problems.append("<boi> id differs")
    if image_tok.latent_channels != config.latent_channels or image_tok.downsample != config.downsample:
        problems.append(
            f"image tokenizer is f{image_tok.downsample} x {image_tok.latent_channels} channels, the model "
            f"expects f{config.downsample} x {config.latent_channels}"
        )
    if problems:
        raise TokenizerError(
            "the tokenizers do not match this checkpoint: "
            + "; ".join(problems)
            + ". Use the tokenizers saved with the release folder."
        )
