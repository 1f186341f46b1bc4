"""Text tokenizer: special tokens, save/load, and the `tokenizers` name is not shadowed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from mmgen.tokenizer.text import BOI, EOI, SPECIAL_IDS, load_text_tokenizer, resolve_artifact


def test_special_tokens_encode_and_decode(text_tokenizer):
    tok = text_tokenizer
    ids = tok(f"a small red circle {BOI}{EOI} the same circle in blue").input_ids
    assert ids[0] == SPECIAL_IDS["bos"]
    assert ids.count(SPECIAL_IDS["boi"]) == 1 and ids.count(SPECIAL_IDS["eoi"]) == 1
    assert tok.convert_ids_to_tokens(SPECIAL_IDS["boi"]) == BOI
    text = tok.decode(ids, skip_special_tokens=True)
    assert "a small red circle" in text and "the same circle in blue" in text and BOI not in text
    assert (tok.pad_token_id, tok.eos_token_id) == (SPECIAL_IDS["pad"], SPECIAL_IDS["eos"])
    # byte fallback: text outside the training corpus still round-trips
    odd = "Größe 😀 Ω"
    assert tok.decode(tok(odd, add_special_tokens=False).input_ids) == odd


def test_save_load_round_trip(text_tokenizer, tmp_path):
    text_tokenizer.save_pretrained(tmp_path / "tok")
    again = load_text_tokenizer(tmp_path / "tok")
    s = f"a large green triangle {BOI}{EOI} and then a small blue square"
    assert again(s).input_ids == text_tokenizer(s).input_ids
    assert len(again) == len(text_tokenizer)
    assert resolve_artifact("tokenizers/text/shapes.yaml").as_posix() == "tokenizers/text/shapes"


def test_missing_tokenizer_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py text"):
        load_text_tokenizer(tmp_path / "nothing")


def test_import_tokenizers_is_hugging_face_from_repo_root():
    """A `tokenizers/` folder with Python in it would shadow the Hugging Face package `transformers` needs."""
    assert not list((REPO / "tokenizers").rglob("*.py")), "tokenizers/ must hold recipes and artifacts only"
    code = "import tokenizers, transformers; print(tokenizers.__file__); assert hasattr(tokenizers, 'Encoding')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "site-packages" in out.stdout
