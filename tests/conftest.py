"""Shared fixtures: small trained text tokenizer, shard folders, real-data availability, and the helpers of the
bad-input tests (a deadline that fails a hang, scripts/train.py in-process, the one-error-line check)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def real_data(rel: str) -> Path:
    """A path under the data root, or skip the test with a message saying how to provide it."""
    from mmgen.data.sources import data_root

    path = data_root() / rel
    if not path.exists():
        pytest.skip(f"real data '{rel}' not found under {data_root()} (set MMGEN_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def text_tokenizer(tmp_path_factory):
    from mmgen.config import CorpusSpec, TextTokenizerRecipe
    from mmgen.tokenizer.text import train_text_tokenizer

    recipe = TextTokenizerRecipe(name="test", vocab_size=320, corpora=[CorpusSpec("shapes", 2000)])
    return train_text_tokenizer(recipe, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def shapes_shards(tmp_path_factory):
    """200 shapes documents in 8 shards of 25."""
    from mmgen.config import ShapesConfig
    from mmgen.data.shapes import ShapesGenerator
    from mmgen.data.shards import write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards(ShapesGenerator(ShapesConfig()).documents(0, 200), out, prefix="shapes", max_count=25)
    return out


@pytest.fixture(scope="module")
def batch(text_tokenizer):
    """A packed batch: several documents per row, interleaved images, context-only images (no noisy copy),
    padding; 16-px images, latent grid 2x2 tokens."""
    from mmgen.config import ShapesConfig
    from mmgen.data.packing import Packer, PackSpec
    from mmgen.data.shapes import ShapesGenerator
    from mmgen.data.shards import Item
    from mmgen.models.model import MMGenConfig

    packer = Packer(
        text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(2, 2), image_size=16), rows=3, seq_len=160)
    )
    gen = ShapesGenerator(ShapesConfig(image_size=16, p_interleaved=0.5))
    items = []
    for i in range(200):
        doc = gen.document(i)
        for j, im in enumerate(doc.images):
            im.loss = (i + j) % 3 != 0
        items.append(Item(doc, 0, 0, i))
    return next(packer.batches(items))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory, text_tokenizer):
    """Folders `text/` (a trained tokenizer) and `image/` (a tiny, untrained KL image tokenizer, f = 4): enough
    to exercise training and sampling quickly."""
    import torch

    from mmgen.config import ImageTokenizerRecipe
    from mmgen.tokenizer.image import ImageTokenizer

    out = tmp_path_factory.mktemp("assets")
    text_tokenizer.save_pretrained(out / "text")
    torch.manual_seed(0)
    recipe = ImageTokenizerRecipe(
        name="tiny", kind="kl", downsample=4, width=8, channel_mult=[1, 1, 1], latent_channels=4, sources=["shapes"]
    )
    ImageTokenizer(recipe).save_pretrained(out / "image")
    return out


def tiny_model(assets: Path, **config):
    """(text tokenizer, image tokenizer, untrained MMGenModel) from `tiny_assets`, with `config` for
    MMGenConfig (vocab_size comes from the tokenizer); seeded, so every call builds the same weights."""
    import torch

    from mmgen.models.model import MMGenConfig, MMGenModel
    from mmgen.tokenizer.image import load_image_tokenizer
    from mmgen.tokenizer.text import load_text_tokenizer

    text = load_text_tokenizer(assets / "text")
    image = load_image_tokenizer(assets / "image")
    torch.manual_seed(0)
    return text, image, MMGenModel(MMGenConfig(vocab_size=len(text), **config))


def tiny_sizes(
    depth: int = 1, width: int = 32, head_dim: int = 16, image_size: int = 32, max_seq_len: int = 96, **config
) -> dict:
    """MMGenConfig sizes of an untrained test model for the f = 4 tokenizer of `tiny_assets` (4 latent
    channels) with 2x2 patches and an MLP of twice the width: a 32-px image is 8x8 latents -> 4x4 = 16 image
    tokens, a 16-px one 2x2 = 4. `config`: further MMGenConfig fields."""
    grid = image_size // 8
    return dict(
        depth=depth,
        width=width,
        head_dim=head_dim,
        mlp_hidden=2 * width,
        latent_channels=4,
        patch_size=2,
        image_grid=(grid, grid),
        image_size=image_size,
        downsample=4,
        max_seq_len=max_seq_len,
        **config,
    )


TINY = tiny_sizes()  # the untrained 32-px test model: 16 image tokens, 96-token context


def tiny_release(assets: Path, out: Path) -> Path:
    """An untrained 32-px model (f = 4 tokenizer: 8x8 latents, 16 tokens) from `tiny_assets`, released to `out`
    the way the trainer does (config.json, model.safetensors, tokenizer files, image_tokenizer/)."""
    from mmgen.models.model import MMGenModel
    from mmgen.train.checkpoint import export_release

    text, image, model = tiny_model(assets, **TINY)
    return export_release(out, MMGenModel, model.config, model.state_dict(), text, image)


# ------------------------------------------------------------------------- bad input through an entry point
HANG_S = 120  # any case still running after this long is a hang: the test fails


@contextlib.contextmanager
def deadline(seconds: int = HANG_S):
    """Fail the test (instead of waiting for ever) if the block runs longer than `seconds`. The alarm repeats
    every second after that: code that swallows one exception (webdataset's skip handler) meets the next."""

    def hung(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def train(tiny_assets, tmp_path_factory):
    """train(out, *args) -> (exit code, stdout, stderr) of `scripts/train.py` on the tiny test model, run by its
    command line in this process (`helpers.run_script`), under `deadline`."""
    from helpers import run_script, tiny_run

    from mmgen.config import dump_config

    base = dump_config(
        tiny_run(tiny_assets, tmp_path_factory.mktemp("cfg") / "unused"), tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    )
    cwd = os.getcwd()

    def run(out: Path, *args: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with deadline(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = run_script("train", "--config", str(base), f"train.output_dir={out}", *args)
        finally:
            os.chdir(cwd)  # train.py runs in the repository root
        return code, stdout.getvalue(), stderr.getvalue()

    return run


def assert_refused(result: tuple[int, str, str], message: str) -> None:
    """Exit code 2, the last line of stderr is `error: ...` matching `message`, and no traceback anywhere."""
    code, out, err = result
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
