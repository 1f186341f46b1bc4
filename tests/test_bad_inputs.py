"""Bad input to the command-line entry points is one named error line and exit code 2, never a traceback,
a hang or a silent acceptance (config ranges, generation, data preparation, tokenizer files).

Each row runs a script by its command line, in-process (`helpers.run_script`); `{name}` in an argument is
replaced by a file of the `world` fixture (a release and broken copies of it, binary and 16-bit files, a corrupt
zip) or by `{tmp}`, the row's own temporary folder. A few rows run as a subprocess, where only the real command line
shows the behaviour (bytes that are not UTF-8 in argv, an unbounded loop).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, deadline, tiny_release
from helpers import run_script
from PIL import Image as PILImage

from mmgen.config import RunConfig, load_config

# train.py rows run with these, so that a check that is missing trains no step and writes nothing under runs/
TRAIN_FIRST, TRAIN_LAST = ["--stop-after", "0"], "train.output_dir={tmp}/run"
GEN = ["--model", "{release}", "--out", "{tmp}/out", "--max-new-tokens", "2", "--max-images", "0"]


def _truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _edit_json(path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


# broken copies of the release: name -> what is done to the copy
RELEASE_DAMAGE = {
    "no_weights": lambda r: (r / "model.safetensors").unlink(),
    "cut_weights": lambda r: _truncate(r / "model.safetensors", 5000),
    "cut_weights_tail": lambda r: _truncate(r / "model.safetensors", (r / "model.safetensors").stat().st_size - 100),
    "cut_config": lambda r: _truncate(r / "config.json", 50),
    "vocab_edited": lambda r: _edit_json(r / "config.json", vocab_size=400),
    "cut_image_tok": lambda r: _truncate(r / "image_tokenizer" / "model.safetensors", 3000),
    "cut_image_tok_config": lambda r: _truncate(r / "image_tokenizer" / "config.json", 30),
    "no_tokenizer_json": lambda r: (r / "tokenizer.json").unlink(),
    "cut_tokenizer_json": lambda r: _truncate(r / "tokenizer.json", 200),
}


@pytest.fixture(scope="module")
def world(tiny_assets, tmp_path_factory):
    """Paths every row may name: a good release, its broken copies, and bad files."""
    root = tmp_path_factory.mktemp("bad_inputs")
    w = {"release": str(tiny_release(tiny_assets, root / "release"))}
    for name, damage in RELEASE_DAMAGE.items():
        copy = root / f"release_{name}"
        shutil.copytree(w["release"], copy)
        damage(copy)
        w[f"release_{name}"] = str(copy)
    (root / "binary").write_bytes(bytes(range(256)) * 4)
    (root / "afile.txt").write_text("a file where a folder belongs\n")
    (root / "bad.zip").write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    tok = root / "image_tok_cut"
    shutil.copytree(tiny_assets / "image", tok)
    _truncate(tok / "model.safetensors", 3000)
    tok_cfg = root / "image_tok_cut_config"
    shutil.copytree(tiny_assets / "image", tok_cfg)
    _truncate(tok_cfg / "config.json", 30)
    (root / "images").mkdir()
    PILImage.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "a.png")
    w |= {
        k: str(root / v)
        for k, v in [
            ("binary", "binary"),
            ("afile", "afile.txt"),
            ("bad_zip", "bad.zip"),
            ("image_tok_cut", "image_tok_cut"),
            ("image_tok_cut_config", "image_tok_cut_config"),
            ("images", "images"),
        ]
    }
    return w


# (id, script, argv, the error message must contain this)
ROWS = [
    # ---- training: config values out of range, named with key, value, range and file
    ("train-lr-negative", "train", ["train.lr=-1"], "'train.lr' = -1.0 is out of range (allowed: (0, 1])"),
    ("train-lr-nan", "train", ["train.lr=nan"], "'train.lr' must be a finite number, got 'nan'"),
    ("train-lr-huge", "train", ["train.lr=1e9"], "'train.lr' = 1000000000.0 is out of range (allowed: (0, 1])"),
    ("train-lr-text", "train", ["train.lr=fast"], "'train.lr' must be float, got str 'fast'"),
    (
        "train-betas",
        "train",
        ["train.betas=[2.0,-1.0]"],
        "'train.betas' = [2.0, -1.0] is out of range (allowed for each item: [0, 1))",
    ),
    ("train-betas-one", "train", ["train.betas=[0.9]"], "betas must have two values"),
    (
        "train-min-lr-ratio",
        "train",
        ["train.min_lr_ratio=-3"],
        "'train.min_lr_ratio' = -3.0 is out of range (allowed: [0, 1])",
    ),
    ("train-warmup", "train", ["train.warmup_steps=-5"], "'train.warmup_steps' = -5 is out of range (allowed: >= 0)"),
    (
        "train-weight-decay",
        "train",
        ["train.weight_decay=-1"],
        "'train.weight_decay' = -1.0 is out of range (allowed: [0, 10])",
    ),
    ("train-grad-clip", "train", ["train.grad_clip=-1"], "'train.grad_clip' = -1.0 is out of range (allowed: >= 0)"),
    ("train-ckpt-every", "train", ["train.ckpt_every=-1"], "'train.ckpt_every' = -1 is out of range (allowed: >= 0)"),
    ("train-log-every", "train", ["train.log_every=0"], "'train.log_every' = 0 is out of range (allowed: >= 1)"),
    ("train-steps-zero", "train", ["train.steps=0"], "'train.steps' = 0 is out of range (allowed: >= 1)"),
    ("train-ema-decay", "train", ["train.ema_decay=1"], "'train.ema_decay' = 1.0 is out of range (allowed: [0, 1))"),
    (
        "train-seq-len-huge",
        "train",
        ["data.seq_len=1000000"],
        "'data.seq_len' = 1000000 is out of range (allowed: [8, 65536])",
    ),
    ("train-rows-zero", "train", ["data.rows=0"], "'data.rows' = 0 is out of range (allowed: [1, 4096])"),
    ("train-depth-zero", "train", ["model.depth=0"], "'model.depth' = 0 is out of range (allowed: [1, 256])"),
    (
        "train-cond-dropout",
        "train",
        ["objective.imm.cond_dropout=1.5"],
        "'objective.imm.cond_dropout' = 1.5 is out of range (allowed: [0, 1))",
    ),
    (
        "train-sample-steps",
        "train",
        ["sample.steps=5000"],
        "'sample.steps' = 5000 is out of range (allowed: [1, 1000])",
    ),
    ("train-steps-type", "train", ["train.steps=many"], "'train.steps' must be int, got str 'many'"),
    ("train-unknown-key", "train", ["train.stepz=3"], "unknown key 'train.stepz' (did you mean 'train.steps'?)"),
    ("train-override-syntax", "train", ["train.steps"], "override 'train.steps' must look like key.sub=value"),
    ("train-shards-missing", "train", ["data.source=shards"], "source 'shards' needs data.shards=<dir or glob>"),
    (
        "train-range-names-file",
        "train",
        ["--config", str(REPO / "configs/train/shapes_tiny.yaml"), "train.lr=-1"],
        "configs/train/shapes_tiny.yaml with overrides 'train.lr=-1'",
    ),
    (
        "train-output-dir-file",
        "train",
        ["train.output_dir={afile}"],
        "train.output_dir='{afile}' is an existing file, not a folder",
    ),
    ("train-config-binary", "train", ["--config", "{binary}"], "{binary}: not a text file (byte 128 is not UTF-8)"),
    ("train-stop-after", "train", ["--stop-after", "-1"], "--stop-after -1 is out of range (allowed: >= 0)"),
    ("train-config-missing", "train", ["--config", "{tmp}/none.yaml"], "config file not found: {tmp}/none.yaml"),
    # ---- generation
    (
        "gen-prompt-binary",
        "generate",
        [*GEN, "--prompt", "ab\x00\x01\x02\udcff"],
        "is not plain text (character '\\x00'",
    ),
    (
        "gen-prompt-segment-int",
        "generate",
        [*GEN, "--prompt", '[{"image": 5}]'],
        "a segment must be text, an image array, {'text': str} or {'image': path str}, got {'image': 5}",
    ),
    ("gen-prompt-text-null", "generate", [*GEN, "--prompt", '[{"text": null}]'], "a segment must be text"),
    ("gen-prompt-json-broken", "generate", [*GEN, "--prompt", '[{"text": "a"'], "looks like JSON but does not parse"),
    (
        "gen-prompt-image-missing",
        "generate",
        [*GEN, "--prompt", "x <image:{tmp}/no.png>"],
        "image not found: {tmp}/no.png",
    ),
    ("gen-prompt-image-binary", "generate", [*GEN, "--prompt", "x <image:{binary}>"], "cannot read image {binary}"),
    (
        "gen-prompts-file-missing",
        "generate",
        [*GEN, "--prompts-file", "{tmp}/none.txt"],
        "--prompts-file {tmp}/none.txt: no such file",
    ),
    (
        "gen-prompts-file-binary",
        "generate",
        [*GEN, "--prompts-file", "{binary}"],
        "--prompts-file {binary} is not a text file (byte 128 is not UTF-8)",
    ),
    ("gen-prompts-file-folder", "generate", [*GEN, "--prompts-file", "{tmp}"], "--prompts-file {tmp}: is a folder"),
    ("gen-out-file", "generate", [*GEN, "--prompt", "x", "--out", "{afile}"], "--out {afile} is an existing file"),
    ("gen-device-nonsense", "generate", [*GEN, "--prompt", "x", "--device", "gpu7"], "'gpu7' is not a device name"),
    (
        "gen-temperature",
        "generate",
        [*GEN, "--prompt", "x", "--temperature", "-1"],
        "temperature -1.0 is out of range (allowed: [0, 100])",
    ),
    (
        "gen-temperature-nan",
        "generate",
        [*GEN, "--prompt", "x", "--temperature", "nan"],
        "temperature nan is out of range",
    ),
    ("gen-top-k", "generate", [*GEN, "--prompt", "x", "--top-k", "-5"], "top_k -5 is out of range (allowed: >= 0)"),
    ("gen-top-p", "generate", [*GEN, "--prompt", "x", "--top-p", "0"], "top_p 0.0 is out of range (allowed: (0, 1])"),
    (
        "gen-steps-huge",
        "generate",
        [*GEN, "--prompt", "x", "--image-first", "--steps", "1000000"],
        "steps 1000000 is out of range (allowed: [1, 1000])",
    ),
    (
        "gen-steps-zero",
        "generate",
        [*GEN, "--prompt", "x", "--steps", "0"],
        "steps 0 is out of range (allowed: [1, 1000])",
    ),
    (
        "gen-guidance",
        "generate",
        [*GEN, "--prompt", "x", "--guidance", "99"],
        "guidance 99.0 is out of range (allowed: [0, 20])",
    ),
    ("gen-prompt-too-long", "generate", [*GEN, "--prompt", " ".join(["a large red circle"] * 40)], "context"),
    ("gen-no-release", "generate", [*GEN, "--prompt", "x", "--model", "{tmp}"], "no mmgen release at {tmp}"),
    (
        "gen-no-weights",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_no_weights}"],
        "{release_no_weights}/model.safetensors is missing",
    ),
    (
        "gen-cut-weights",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_cut_weights}"],
        "{release_cut_weights}/model.safetensors is truncated or corrupt",
    ),
    (
        "gen-cut-weights-tail",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_cut_weights_tail}"],
        "{release_cut_weights_tail}/model.safetensors is truncated or corrupt",
    ),
    (
        "gen-cut-config",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_cut_config}"],
        "{release_cut_config}/config.json is truncated or corrupt (not valid JSON",
    ),
    (
        "gen-vocab-edited",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_vocab_edited}"],
        "model.safetensors does not match its config: 'embed.weight' is [320, 32] in the file, [400, 32] per the config",
    ),
    (
        "gen-cut-image-tok",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_cut_image_tok}"],
        "{release_cut_image_tok}/image_tokenizer/model.safetensors is truncated or corrupt",
    ),
    (
        "gen-cut-image-tok-config",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_cut_image_tok_config}"],
        "{release_cut_image_tok_config}/image_tokenizer/config.json is truncated or corrupt",
    ),
    (
        "gen-no-tokenizer-json",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_no_tokenizer_json}"],
        "no text tokenizer at {release_no_tokenizer_json} (tokenizer.json is missing); copy the release folder again",
    ),
    (
        "gen-cut-tokenizer-json",
        "generate",
        [*GEN, "--prompt", "x", "--model", "{release_cut_tokenizer_json}"],
        "{release_cut_tokenizer_json}/tokenizer.json is truncated or corrupt",
    ),
    # ---- data preparation
    ("prep-source-unknown", "prepare_data", ["--source", "foo", "--out", "{tmp}/s"], "unknown source 'foo'"),
    (
        "prep-corpus-unknown",
        "prepare_data",
        ["--source", "text:nonexistent", "--out", "{tmp}/s"],
        "unknown text corpus 'nonexistent'",
    ),
    (
        "prep-limit",
        "prepare_data",
        ["--source", "shapes", "--limit", "-5", "--out", "{tmp}/s"],
        "--limit -5 is out of range (allowed: >= 0)",
    ),
    (
        "prep-out-file",
        "prepare_data",
        ["--source", "shapes", "--limit", "3", "--out", "{afile}"],
        "--out {afile} is an existing file",
    ),
    (
        "prep-shard-size",
        "prepare_data",
        ["--source", "shapes", "--limit", "3", "--shard-size", "0", "--out", "{tmp}/s"],
        "--shard-size 0 is out of range (allowed: >= 1)",
    ),
    # ---- tokenizer evaluation and training
    (
        "evaltok-zip",
        "eval_tokenizer",
        ["{image_tok_cut}", "--images", "{bad_zip}", "--no-fd", "--out", "{tmp}/e"],
        "{bad_zip} is not a readable zip file",
    ),
    (
        "evaltok-images-missing",
        "eval_tokenizer",
        ["{image_tok_cut}", "--images", "{tmp}/none", "--out", "{tmp}/e"],
        "{tmp}/none not found: give a directory or .zip of images",
    ),
    (
        "evaltok-cut-weights",
        "eval_tokenizer",
        ["{image_tok_cut}", "--images", "{images}", "--no-fd", "--out", "{tmp}/e"],
        "{image_tok_cut}/model.safetensors is truncated or corrupt",
    ),
    (
        "evaltok-cut-config",
        "eval_tokenizer",
        ["{image_tok_cut_config}", "--images", "{images}", "--no-fd", "--out", "{tmp}/e"],
        "{image_tok_cut_config}/config.json is truncated or corrupt",
    ),
    (
        "evaltok-out-file",
        "eval_tokenizer",
        ["{image_tok_cut}", "--images", "{images}", "--out", "{afile}"],
        "--out {afile} is an existing file",
    ),
    (
        "evaltok-limit",
        "eval_tokenizer",
        ["{image_tok_cut}", "--limit", "-1", "--out", "{tmp}/e"],
        "--limit -1 is out of range (allowed: >= 0)",
    ),
    (
        "evaltok-kbits",
        "eval_tokenizer",
        ["{image_tok_cut}", "--kbits", "4,x", "--out", "{tmp}/e"],
        "--kbits '4,x': give a comma list of bits per channel, each in 1..16",
    ),
    (
        "traintok-vocab",
        "train_tokenizer",
        ["text", "--recipe", str(REPO / "tokenizers/text/shapes.yaml"), "--out", "{tmp}/t", "vocab_size=10"],
        "'vocab_size' = 10 is out of range (allowed: [64, 1048576])",
    ),
    (
        "traintok-image-lr",
        "train_tokenizer",
        ["image", "--recipe", str(REPO / "tokenizers/image/shapes_kl.yaml"), "--out", "{tmp}/t", "lr=-1"],
        "'lr' = -1.0 is out of range",
    ),
    ("traintok-recipe-missing", "train_tokenizer", ["text", "--recipe", "{tmp}/none.yaml"], "config file not found"),
    ("traintok-recipe-binary", "train_tokenizer", ["text", "--recipe", "{binary}"], "not a text file"),
    (
        "traintok-out-file",
        "train_tokenizer",
        ["text", "--recipe", str(REPO / "tokenizers/text/shapes.yaml"), "--out", "{afile}"],
        "--out {afile} is an existing file",
    ),
    # ---- the inference-first studies: the same ranges on their configs
    (
        "study-fit-lr",
        "inference_first",
        ["continuous", "fit.lr=-1", "--out", "{tmp}"],
        "'fit.lr' = -1.0 is out of range (allowed: (0, 1])",
    ),
    (
        "study-steps",
        "inference_first",
        ["continuous", "steps=[1,0]", "--out", "{tmp}"],
        "'steps' = [1, 0] is out of range (allowed for each item: [1, 1000])",
    ),
    ("study-heads", "inference_first", ["discrete", "heads=0", "--out", "{tmp}"], "'heads' = 0 is out of range"),
    # ---- evaluation scripts load releases through the same checks
    (
        "evalshapes-no-weights",
        "eval_shapes",
        ["--model", "{release_no_weights}", "--out", "{tmp}/e.json"],
        "{release_no_weights}/model.safetensors is missing",
    ),
    (
        "evalshapes-batch",
        "eval_shapes",
        ["--model", "{release}", "--batch", "0", "--out", "{tmp}/e.json"],
        "--batch 0 is out of range (allowed: >= 1)",
    ),
    (
        "evalshapes-steps",
        "eval_shapes",
        ["--model", "{release}", "--steps", "1", "5000", "--out", "{tmp}/e.json"],
        "--steps 5000 is out of range (allowed: [1, 1000])",
    ),
    (
        "evalshapes-seed-twice",
        "eval_shapes",
        ["--model", "{release}", "--seed", "0", "0", "--out", "{tmp}/e.json"],
        "--seed 0 0 names a seed twice; give each noise seed once",
    ),
    (
        "evalcifar-per-class",
        "eval_cifar",
        ["--model", "{release}", "--per-class", "-1", "--out", "{tmp}/e.json"],
        "--per-class -1 is out of range (allowed: >= 1)",
    ),
    (
        "evaltext-cut-config",
        "eval_text",
        ["--model", "{release_cut_config}", "--shards", "{tmp}"],
        "{release_cut_config}/config.json is truncated or corrupt",
    ),
]


def _fill(text: str, world: dict, tmp) -> str:
    """`{name}` -> the path of that name in `world` (`{tmp}`: the row's folder); other braces stay."""
    values = {**world, "tmp": str(tmp)}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("name, script, argv, expected", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_named_error(name, script, argv, expected, world, tmp_path, capsys, monkeypatch):
    if script == "train":
        argv = [*TRAIN_FIRST, *argv] + ([] if any(a.startswith("train.output_dir=") for a in argv) else [TRAIN_LAST])
    argv = [_fill(a, world, tmp_path) for a in argv]
    expected = _fill(expected, world, tmp_path)
    monkeypatch.chdir(REPO)  # train.py moves to the repository; this puts the working folder back afterwards
    with deadline():  # a hang fails the row
        code = run_script(script, *argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_generate_device_cuda_without_cuda(world, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = run_script("generate", *(_fill(a, world, tmp_path) for a in GEN), "--prompt", "x", "--device", "cuda")
    err = capsys.readouterr().err
    assert code == 2 and "error: device 'cuda': CUDA is not available on this machine" in err, err


# rows that need the real command line: bytes that are not UTF-8 in argv, and a loop that would not end
SUBPROCESS_ROWS = [
    ("gen-prompt-bytes", "generate", [*GEN, "--prompt", b"\xff\xfe\x01\x02binary"], "is not plain text"),
    (
        "gen-steps-unbounded",
        "generate",
        [*GEN, "--prompt", "x", "--image-first", "--steps", "1000000"],
        "steps 1000000 is out of range",
    ),
    ("train-config-binary-cli", "train", [*TRAIN_FIRST, "--config", "{binary}", TRAIN_LAST], "not a text file"),
]


@pytest.mark.parametrize("name, script, argv, expected", SUBPROCESS_ROWS, ids=[r[0] for r in SUBPROCESS_ROWS])
def test_bad_input_on_the_real_command_line(name, script, argv, expected, world, tmp_path):
    argv = [a if isinstance(a, bytes) else _fill(a, world, tmp_path) for a in argv]
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{script}.py"), *argv],
        capture_output=True,
        timeout=60,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # a hang fails the test here
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and expected in err and "Traceback" not in err, err


def test_override_order_does_not_matter(tmp_path):
    """`data.source=shards` needs `data.shards`: the rule is checked after every override, in either order."""
    a = load_config(RunConfig, None, ["data.source=shards", f"data.shards={tmp_path}"])
    b = load_config(RunConfig, None, [f"data.shards={tmp_path}", "data.source=shards"])
    assert a == b and a.data.source == "shards" and a.data.shards == str(tmp_path)


def test_sixteen_bit_prompt_image_is_scaled_not_clipped(tmp_path):
    from mmgen.sampling.pipeline import read_image

    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    PILImage.fromarray(ramp).save(tmp_path / "grey16.png")  # a 16-bit greyscale PNG
    assert PILImage.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = read_image(tmp_path / "grey16.png")
    want = np.rint(ramp / 257.0).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert (rgb == want[..., None]).all()
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb == 255).mean() < 0.01  # clipping made 99.6 % white
    PILImage.fromarray(want).save(tmp_path / "grey8.png")  # the 8-bit image of the same ramp reads the same
    assert (read_image(tmp_path / "grey8.png") == rgb).all()


def test_only_expected_errors_become_one_line(monkeypatch, capsys):
    """An MMGenError (a missing path the user named is a MissingInput, still a FileNotFoundError for callers)
    is one line and exit code 2; any other OSError is a fault that keeps its traceback; MMGEN_DEBUG=1 keeps the
    traceback of the expected errors too."""
    from mmgen.cli import cli_main
    from mmgen.errors import MissingInput

    @cli_main
    def main(exc: Exception):
        raise exc

    monkeypatch.delenv("MMGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(MissingInput("no shards found at 'x'"))
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: no shards found at 'x'\n"
    assert isinstance(MissingInput("x"), FileNotFoundError)
    with pytest.raises(PermissionError):
        main(PermissionError(13, "Permission denied", "/root/x"))
    monkeypatch.setenv("MMGEN_DEBUG", "1")
    with pytest.raises(MissingInput, match="no shards found"):
        main(MissingInput("no shards found at 'x'"))
