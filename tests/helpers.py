"""Helpers that several test modules share (test modules import from here, never from each other): the tiny
model and its inputs, the tiny training run, packed batches, the compiled-vs-eager check, the objective's setup,
two-process launches, and running a script by its command line."""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from conftest import REPO

from mmgen.config import ModelConfig, ObjectiveConfig, RunConfig, ShapesConfig, from_dict, load_config
from mmgen.data.packing import Packer, PackSpec
from mmgen.data.plan import KIND_NOISY, KIND_TEXT, TokenPlan
from mmgen.data.shapes import ShapesGenerator
from mmgen.data.shards import Item
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.objectives.multimodal import MultimodalLoss
from mmgen.tokenizer.text import SPECIAL_IDS

# ------------------------------------------------------------------------------------------- tiny model


def tiny_config(image_size: int = 16, **kw) -> MMGenConfig:
    """The 16-px test model of the unit tests (2x2 latent tokens per image, 160-token context); `kw` for
    ModelConfig."""
    m = ModelConfig(depth=2, aspect_ratio=32, head_dim=16, **kw)
    return MMGenConfig.from_model_config(
        m,
        vocab_size=320,
        latent_channels=4,
        image_size=image_size,
        downsample=4,
        seq_len=160,
        sigma_d=0.5,
        image_objective="imm",
        special_ids=SPECIAL_IDS,
    )


def _inputs(b: TokenPlan, cfg: MMGenConfig, seed: int = 0, uncond_every: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, L = b.shape
    img = b.kind != KIND_TEXT
    noisy = b.kind == KIND_NOISY
    t = torch.where(noisy, torch.rand(B, L, generator=g), torch.zeros(B, L))
    s = t * torch.rand(B, L, generator=g)
    uncond = img & (b.image % uncond_every == 0) if uncond_every else torch.zeros_like(img)
    tokens = torch.randn(B, L, cfg.patch_dim, generator=g)
    return replace(b, image_tokens=tokens, t=t, s=s, uncond=uncond).model_inputs()


def _randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial weights everywhere (the zero-initialised adaLN and heads too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------- batches, objective


def packed(tok, rows: int, seq_len: int, start: int = 0):
    """A packed batch of shapes documents (16-px images, 2x2 latent tokens): many documents per row."""
    spec = PackSpec.from_config(MMGenConfig(image_grid=(2, 2), image_size=16), rows=rows, seq_len=seq_len)
    packer = Packer(tok, spec)
    gen = ShapesGenerator(ShapesConfig(image_size=16, p_interleaved=0.5))
    return next(packer.batches(Item(gen.document(i), 0, 0, i) for i in range(start, start + 100000)))


def objective_setup(batch, **objective):
    """(objective config, randomized tiny model, its MultimodalLoss, clean latents x0 of `batch`'s images)."""
    cfg = from_dict(ObjectiveConfig, objective)
    mc = tiny_config()
    model = MMGenModel(mc)
    _randomize(model)
    loss_fn = MultimodalLoss(cfg, mc.patch_size, mc.image_grid, mc.latent_channels)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch.images.shape[0], 4, 4, 4, generator=g) * 0.5
    return cfg, model, loss_fn, x0


# ---------------------------------------------------------------------------------------- training, compile


def tiny_run(assets: Path, out: Path, *overrides: str) -> RunConfig:
    base = [
        f"text_tokenizer={assets / 'text'}",
        f"image_tokenizer={assets / 'image'}",
        "model.depth=2",
        "model.aspect_ratio=32",
        "model.head_dim=32",
        "data.image_size=16",
        "data.seq_len=96",
        "data.rows=2",
        f"train.output_dir={out}",
        "train.steps=6",
        "train.log_every=1",
        "train.sample_every=0",
        "train.ckpt_every=0",
        "train.warmup_steps=2",
        "train.grad_clip=0.0",
        "sample.prompts=[a large red circle]",
        "sample.steps=2",
    ]
    return load_config(RunConfig, None, base + list(overrides))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@contextlib.contextmanager
def flex_cpu_backward():
    """Let torch's eager FlexAttention reference run with gradients on a CPU (see the module doc)."""
    import torch.nn.attention.flex_attention as fa

    saved = fa._validate_device
    fa._validate_device = lambda *a: None
    try:
        yield
    finally:
        fa._validate_device = saved


def compiled_equals_eager(
    cfg, batch, dev: torch.device, compile_kwargs: dict, out_tol: tuple[float, float], grad_tol: tuple[float, float]
) -> None:
    """The `train.compile` path: a model whose blocks are compiled with `compile_kwargs` gives the eager model's
    forward and gradients on `batch` (same weights), within (rtol, atol) `out_tol` and `grad_tol`, with no
    graph break. Shared by the CPU inductor test below and the GPU test (tests/test_gpu.py)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = MMGenModel(cfg)
    _randomize(eager)
    compiled = MMGenModel(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(**compile_kwargs)
    x = {k: v.to(dev) for k, v in _inputs(batch, cfg, uncond_every=3).items()}
    outs = []
    for m in (eager.to(dev), compiled.to(dev)):
        with flex_cpu_backward():
            out = m(**x)
            (out.logits.pow(2).mean() + out.image.pow(2).mean()).backward()
        outs.append(out)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    rtol, atol = out_tol
    torch.testing.assert_close(outs[1].logits, outs[0].logits, rtol=rtol, atol=atol)
    torch.testing.assert_close(outs[1].image, outs[0].image, rtol=rtol, atol=atol)
    rtol, atol = grad_tol
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=rtol, atol=atol, msg=n)


# ------------------------------------------------------------------------------------------------ processes


def launch(
    accelerate_cfg: str, run_cfg: Path, *extra: str, processes: int = 2, check: bool = True
) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / accelerate_cfg),
        "--num_processes",
        str(processes),
        str(REPO / "scripts" / "train.py"),
        "--config",
        str(run_cfg),
        *extra,
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 or not check, out.stdout[-3000:] + out.stderr[-6000:]
    return out


def run_script(name: str, *argv: str) -> int:
    """Run scripts/<name>.py as `python scripts/<name>.py ARGV` would, in this process (no interpreter start per
    call): what is tested is its command line, no function of it is imported. Returns the exit code (0 when it
    returns); any other exception propagates (with MMGEN_DEBUG=1 the expected errors do too)."""
    path = REPO / "scripts" / f"{name}.py"
    saved = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved
    return 0
