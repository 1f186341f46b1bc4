"""Train an image tokenizer from its recipe: random crops, AdamW, checkpoints that resume exactly.

    python scripts/train_tokenizer.py image --recipe tokenizers/image/shapes_kl.yaml [key=value ...]

The artifact folder (default: next to the recipe, `tokenizers/image/NAME/`) receives `config.json` +
`model.safetensors` (release weights, with per-channel latent statistics), `recipe.yaml`, `summary.json`
and `metrics.jsonl`; resumable training state lives in its `checkpoints/` subfolder (`checkpoints.py`).
`ensure_image_tokenizer` loads an artifact, training it here first when only its recipe exists.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmgen.config import ImageTokenizerRecipe, dump_config, load_config
from mmgen.tokenizer.bottleneck import BottleneckOut
from mmgen.tokenizer.image import WEIGHTS_NAME, ImageTokenizer, load_image_tokenizer
from mmgen.tokenizer.text import resolve_artifact
from mmgen.tokenizer_study.checkpoints import load_checkpoint, resolve_resume, save_checkpoint
from mmgen.tokenizer_study.image_data import CropSampler, Pool, build_pools
from mmgen.tokenizer_study.metrics import psnr_per_image, to_unit
from mmgen.tokenizer_study.references import PCAReference

PCA_INIT_PATCHES = 4096  # f x f patches of the first training batches that the patch path's PCA start is fitted on


def tokenizer_loss(
    recipe: ImageTokenizerRecipe, x: torch.Tensor, recon: torch.Tensor, out: BottleneckOut
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + L2 on [-1, 1] pixels) plus the bottleneck's own weighted terms."""
    terms = {"l1": F.l1_loss(recon, x), "l2": F.mse_loss(recon, x)}
    weights = {
        "l1": recipe.l1_weight,
        "l2": recipe.l2_weight,
        "kl": recipe.kl_weight,
        "commitment": recipe.commitment_weight,
    }
    terms.update(out.losses)
    total = sum(weights[k] * v for k, v in terms.items())
    assert isinstance(total, torch.Tensor)
    return total, {k: float(v.detach()) for k, v in terms.items()}


def lr_at(recipe: ImageTokenizerRecipe, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from lr to min_lr_ratio * lr at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    frac = min(1.0, (step - recipe.warmup_steps) / span)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def validate(model: ImageTokenizer, val: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean per-image PSNR of deterministic reconstructions of held-out centre crops, per source."""
    was = model.training
    model.eval()
    res = {}
    for name, x in val.items():
        recon = torch.cat([model.decode(model.encode(b)) for b in x.split(64)])
        res[f"val_psnr/{name}"] = float(psnr_per_image(to_unit(recon), to_unit(x)).mean())
    model.train(was)
    return res


@torch.no_grad()
def latent_statistics(
    model: ImageTokenizer, sampler: CropSampler, first_step: int, batches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [C] of deterministic latents over `batches` training batches."""
    s1 = s2 = None
    n = 0
    for k in range(batches):
        z = model.encode(sampler(first_step + k)[1]).double()  # [N, C, h, w]
        s1 = z.sum((0, 2, 3)) if s1 is None else s1 + z.sum((0, 2, 3))
        s2 = z.square().sum((0, 2, 3)) if s2 is None else s2 + z.square().sum((0, 2, 3))
        n += z.numel() // z.shape[1]
    assert s1 is not None and s2 is not None
    mean = s1 / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def init_patch_linear(model: ImageTokenizer, images: list[torch.Tensor]) -> PCAReference:
    """Fit the principal components of the f x f patches of `images` (uint8 [N, 3, H, W] each) with as many
    components as latent channels, and start `model` (recipe.patch_linear) as that PCA tokenizer."""
    pca = PCAReference.fit(images, model.downsample, model.latent_channels)
    model.init_patch_pca(pca.mean, pca.components, torch.tensor(pca.fit_info["eigenvalues"]))
    return pca


def pca_init_crops(sampler: CropSampler, downsample: int, patches: int = PCA_INIT_PATCHES) -> list[torch.Tensor]:
    """The training batches of steps 0, 1, ... (a pure function of the seed) until they hold `patches` f x f
    patches."""
    crops: list[torch.Tensor] = []
    n = 0
    while n < patches:
        crops.append(sampler(len(crops))[1])  # uint8 [B, 3, c, c]
        n += len(crops[-1]) * (crops[-1].shape[2] // downsample) * (crops[-1].shape[3] // downsample)
    return crops


# ------------------------------------------------------------------------------------------------ train
@dataclass
class _Session:
    """What one training session works on: the data, the model and its optimiser, the step it starts at."""

    recipe: ImageTokenizerRecipe
    out: Path
    sampler: CropSampler
    val: dict[str, torch.Tensor]  # source name -> held-out centre crops
    model: ImageTokenizer
    opt: torch.optim.Optimizer
    start: int


def _read_data(
    recipe: ImageTokenizerRecipe, pools: tuple[list[Pool], list[Pool]] | None
) -> tuple[CropSampler, dict[str, torch.Tensor]]:
    """The training crop sampler and the validation centre crops (source name -> uint8 [n, 3, crop, crop])."""
    train_pools, val_pools = pools or (build_pools(recipe, "train"), build_pools(recipe, "test", recipe.val_images))
    weights = recipe.source_weights or [1.0] * len(train_pools)
    sampler = CropSampler(train_pools, weights, recipe.crop_size, recipe.batch_size, recipe.seed)
    return sampler, {p.name: p.center_crops(recipe.val_images) for p in val_pools}


def _open_session(
    recipe: ImageTokenizerRecipe, out: Path, resume: str | None, sampler: CropSampler, val: dict[str, torch.Tensor]
) -> _Session:
    """Seed, build the model and AdamW, and load the checkpoint to resume from (if any)."""
    torch.manual_seed(recipe.seed)
    model = ImageTokenizer(recipe).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
    start = 0
    ckpt = resolve_resume(out, resume)
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt)
        print(f"resumed from {ckpt} at step {start}")
    elif recipe.patch_linear:  # a fresh run starts at the principal-component tokenizer of the training patches
        init_patch_linear(model, pca_init_crops(sampler, recipe.downsample))
    return _Session(recipe, out, sampler, val, model, opt, start)


def _step(s: _Session, step: int) -> tuple[str, torch.Tensor, torch.Tensor, dict[str, float]]:
    """One optimiser step; returns (source, batch, loss, loss terms)."""
    recipe = s.recipe
    torch.manual_seed(recipe.seed * 1_000_003 + step)  # per-step RNG: resumed runs draw the same noise
    source, batch = s.sampler(step)
    x = s.model.pixels_to_float(batch)
    recon, bout = s.model(x)
    loss, terms = tokenizer_loss(recipe, x, recon, bout)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {step}: {terms}; lower lr or check the data")
    for g in s.opt.param_groups:
        g["lr"] = lr_at(recipe, step)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), recipe.grad_clip)
    s.opt.step()
    return source, batch, loss, terms


def _run_steps(s: _Session, progress: bool, stop_at: int | None) -> float | None:
    """Steps `start`..`steps` with logging and checkpoints; returns their seconds, or None when `stop_at` ended
    the session early (after a checkpoint)."""
    from tqdm import tqdm

    recipe = s.recipe
    log = open(s.out / "metrics.jsonl", "a" if s.start else "w")
    steps = range(s.start, recipe.steps)
    bar = tqdm(steps, initial=s.start, total=recipe.steps, disable=not progress, desc=recipe.name, dynamic_ncols=True)
    t0, pixels = time.perf_counter(), 0
    for step in bar:
        if stop_at is not None and step >= stop_at:
            save_checkpoint(s.out, s.model, s.opt, step)
            bar.close()
            log.close()
            return None
        source, batch, loss, terms = _step(s, step)
        pixels += batch[:, 0].numel()
        done = step + 1
        if done % recipe.log_every == 0 or done == recipe.steps:
            row = {"step": done, "loss": float(loss.detach()), **terms, "lr": lr_at(recipe, step), "source": source}
            row["mpix_per_s"] = pixels / max(time.perf_counter() - t0, 1e-9) / 1e6
            if done % recipe.ckpt_every == 0 or done == recipe.steps:
                row.update(validate(s.model, s.val))
            log.write(json.dumps(row) + "\n")
            log.flush()
            shown = ("loss", "l1", "kl", "commitment", "mpix_per_s")
            bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k in shown))
        if done % recipe.ckpt_every == 0 or done == recipe.steps:
            save_checkpoint(s.out, s.model, s.opt, done)
    bar.close()
    log.close()
    return time.perf_counter() - t0


def _release(s: _Session, t_train: float, t_data: float) -> None:
    """Measure the latent statistics, then write the release files, recipe.yaml and summary.json."""
    recipe, model = s.recipe, s.model
    model.eval()
    mean, std = latent_statistics(model, s.sampler, recipe.steps, recipe.stats_batches)
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    model.save_pretrained(s.out)
    dump_config(recipe, s.out / "recipe.yaml")
    summary = {
        "name": recipe.name,
        "kind": recipe.kind,
        "steps": recipe.steps,
        "resumed_from": s.start,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds_this_session": round(t_train, 1),
        "data_seconds": round(t_data, 1),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu only'}",
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        **validate(model, s.val),
    }
    (s.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def train_image_tokenizer(
    recipe: ImageTokenizerRecipe,
    out: str | Path,
    resume: str | None = "auto",
    pools: tuple[list[Pool], list[Pool]] | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> ImageTokenizer:
    """Train (or resume) and save the tokenizer to `out`; returns it in eval mode.

    `pools` = (train, validation) pools, for tests; by default they are read from the recipe's sources.
    `stop_at` < steps ends this session early after a checkpoint (a later call resumes; nothing is released).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    sampler, val = _read_data(recipe, pools)
    t_data = time.perf_counter() - t_start
    session = _open_session(recipe, out, resume, sampler, val)
    t_train = _run_steps(session, progress, stop_at)
    if t_train is None:
        return session.model.eval()
    _release(session, t_train, t_data)
    return session.model


def ensure_image_tokenizer(path: str | Path) -> ImageTokenizer:
    """Given a recipe `tokenizers/image/NAME.yaml`, load `tokenizers/image/NAME/`, training it first when
    missing; given a folder, load it."""
    p = Path(path)
    folder = resolve_artifact(p)
    if p.suffix in (".yaml", ".yml") and not (folder / WEIGHTS_NAME).is_file():
        train_image_tokenizer(load_config(ImageTokenizerRecipe, p), folder)
    return load_image_tokenizer(folder)


def main(
    recipe_path: str, overrides: list[str] | tuple[str, ...] = (), out: str | None = None, resume: str | None = "auto"
) -> ImageTokenizer:
    """Entry point of `scripts/train_tokenizer.py image`."""
    recipe = load_config(ImageTokenizerRecipe, recipe_path, overrides)
    folder = Path(out) if out else resolve_artifact(recipe_path)
    t0 = time.perf_counter()
    model = train_image_tokenizer(recipe, folder, resume=resume)
    summary = json.loads((folder / "summary.json").read_text())
    vals = ", ".join(f"{k.split('/')[-1]} {v:.2f} dB" for k, v in summary.items() if k.startswith("val_psnr"))
    print(
        f"trained {recipe.kind} image tokenizer '{recipe.name}' (f={model.downsample}, "
        f"{model.latent_channels} latent channels, {summary['parameters'] / 1e6:.2f}M parameters) in "
        f"{time.perf_counter() - t0:.0f}s -> {folder}\n  validation PSNR: {vals}"
    )
    return model
