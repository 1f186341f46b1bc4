"""The text tokenizer: sentencepiece (BPE or unigram) trained in-process, exposed as a `transformers` fast tokenizer.

Special tokens (fixed ids, so every mmgen tokenizer agrees on them):
    0 <unk>   1 <s> (bos)   2 </s> (eos)   3 <pad>   4 <boi>   5 <eoi>
`<boi>` / `<eoi>` open and close an image; they are sentencepiece user-defined symbols (never split) and
registered as additional special tokens on the transformers side.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmgen.config import TextTokenizerRecipe, dump_config, load_config
from mmgen.errors import MissingInput, TokenizerError
from mmgen.files import read_json

BOI, EOI = "<boi>", "<eoi>"
SPECIAL_IDS = {"unk": 0, "bos": 1, "eos": 2, "pad": 3, "boi": 4, "eoi": 5}


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    boi: int
    eoi: int

    @classmethod
    def of(cls, tok) -> SpecialIds:
        boi, eoi = tok.convert_tokens_to_ids([BOI, EOI])
        return cls(tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, boi, eoi)


def recipe_sentences(recipe: TextTokenizerRecipe) -> Iterator[str]:
    from mmgen.data.sources import sentences

    for corpus in recipe.corpora:
        for s in sentences(corpus.source, limit=corpus.limit):
            if s.strip():
                yield s[: recipe.max_sentence_length]


def train_sentencepiece(sentences: Iterable[str], recipe: TextTokenizerRecipe) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=recipe.model_type,
        vocab_size=recipe.vocab_size,
        character_coverage=recipe.character_coverage,
        byte_fallback=recipe.byte_fallback,
        unk_id=SPECIAL_IDS["unk"],
        bos_id=SPECIAL_IDS["bos"],
        eos_id=SPECIAL_IDS["eos"],
        pad_id=SPECIAL_IDS["pad"],
        user_defined_symbols=[BOI, EOI],
        max_sentence_length=recipe.max_sentence_length,
        hard_vocab_limit=False,  # small corpora may not support the full vocab; take what they have
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()


def wrap(folder: str | Path):
    """A `transformers` fast tokenizer over the `tokenizer.model` in `folder`."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True, add_eos_token=False, pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": [BOI, EOI]})
    return tok


def train_text_tokenizer(recipe: TextTokenizerRecipe, out_dir: str | Path, sentences: Iterable[str] | None = None):
    """Train from the recipe's corpora (or `sentences`), save to `out_dir` with `save_pretrained`, return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = train_sentencepiece(sentences if sentences is not None else recipe_sentences(recipe), recipe)
    (out / "tokenizer.model").write_bytes(model)
    tok = wrap(out)
    tok.save_pretrained(str(out))
    dump_config(recipe, out / "recipe.yaml")
    check_special_ids(tok, out)
    return tok


def check_special_ids(tok, where: str | Path) -> SpecialIds:
    ids = SpecialIds.of(tok)
    expected = SpecialIds(*(SPECIAL_IDS[k] for k in ("bos", "eos", "pad", "boi", "eoi")))
    if ids != expected:
        raise TokenizerError(f"tokenizer at {where} has special ids {ids}, expected {expected}: retrain it with mmgen")
    return ids


TEXT_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")  # what save_pretrained writes and loading needs


def load_text_tokenizer(path: str | Path, fix: str = ""):
    """Load a saved tokenizer folder. Given a recipe `X.yaml`, loads the folder `X/` next to it. `fix`: what
    an error about a missing or broken file tells the user to do (default: retrain from the recipe)."""
    from transformers import AutoTokenizer

    folder = resolve_artifact(path)
    train = f"train it with `python scripts/train_tokenizer.py text --recipe {folder}.yaml`"
    for name in TEXT_TOKENIZER_FILES:
        if not (folder / name).is_file():
            raise MissingInput(
                f"no text tokenizer at {folder} ({name} is missing); "
                + (fix or f"{train} (or pass a folder saved by save_pretrained)")
            )
        read_json(folder / name, TokenizerError, fix or f"copy the folder again or {train}")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # the tokenizers parser raises a bare Exception on a file it cannot use
        raise TokenizerError(
            f"the text tokenizer at {folder} does not load ({type(e).__name__}: {e}); "
            + (fix or f"copy the folder again or {train}")
        ) from e
    check_special_ids(tok, folder)
    return tok


def resolve_artifact(path: str | Path) -> Path:
    """A recipe path `tokenizers/x/name.yaml` names its artifact folder `tokenizers/x/name/`."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".yaml", ".yml") else p


def ensure_text_tokenizer(path: str | Path):
    """Load the tokenizer, training it from its recipe first when the artifact is missing."""
    p = Path(path)
    folder = resolve_artifact(p)
    if not (folder / "tokenizer_config.json").is_file() and p.suffix in (".yaml", ".yml"):
        train_text_tokenizer(load_config(TextTokenizerRecipe, p), folder)
    return load_text_tokenizer(folder)
