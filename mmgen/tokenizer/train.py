"""Train an image tokenizer from its recipe: random crops, AdamW, checkpoints that resume exactly.

    python scripts/train_tokenizer.py image --recipe tokenizers/image/shapes_kl.yaml [key=value ...]

The artifact folder (default: next to the recipe, `tokenizers/image/NAME/`) receives `config.json` +
`model.safetensors` (release weights, with per-channel latent statistics), `recipe.yaml`, `summary.json`
and `metrics.jsonl`; resumable training state lives in its `checkpoints/` subfolder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmgen.config import ImageTokenizerRecipe, dump_config, load_config, to_dict
from mmgen.errors import MissingInput
from mmgen.tokenizer.bottleneck import BottleneckOut
from mmgen.tokenizer.image import ImageTokenizer
from mmgen.tokenizer.image_data import CropSampler, Pool, build_pools
from mmgen.tokenizer.metrics import psnr_per_image, to_unit

# Recipe fields that may change when a run is resumed (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"steps", "log_every", "ckpt_every", "val_images", "stats_batches"}


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


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / "checkpoints").glob("step_*.pt"))


def save_checkpoint(folder: Path, model: ImageTokenizer, opt: torch.optim.Optimizer, step: int, keep: int = 1) -> Path:
    """Training state after `step` steps; written to a temp file and renamed; older ones pruned to `keep`."""
    path = folder / "checkpoints" / f"step_{step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "recipe": to_dict(model.recipe)}
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    for old in _checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def resolve_resume(folder: Path, resume: str | None) -> Path | None:
    """`auto`: the newest checkpoint in the folder (None if there is none); `none`: start fresh; else a path."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        found = _checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise MissingInput(f"--resume {resume}: no such checkpoint (use auto, none, or a step_*.pt path)")
    return path


def load_checkpoint(path: Path, model: ImageTokenizer, opt: torch.optim.Optimizer) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, now = state["recipe"], to_dict(model.recipe)
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"cannot resume {path}: the recipe changed ({diff}); use --resume none to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


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


# ------------------------------------------------------------------------------------------------ train
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
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train_pools, val_pools = pools or (build_pools(recipe, "train"), build_pools(recipe, "test", recipe.val_images))
    weights = recipe.source_weights or [1.0] * len(train_pools)
    sampler = CropSampler(train_pools, weights, recipe.crop_size, recipe.batch_size, recipe.seed)
    val = {p.name: p.center_crops(recipe.val_images) for p in val_pools}
    t_data = time.perf_counter() - t_start

    torch.manual_seed(recipe.seed)
    model = ImageTokenizer(recipe).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
    start = 0
    ckpt = resolve_resume(out, resume)
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt)
        print(f"resumed from {ckpt} at step {start}")
    log = open(out / "metrics.jsonl", "a" if start else "w")
    bar = tqdm(
        range(start, recipe.steps),
        initial=start,
        total=recipe.steps,
        disable=not progress,
        desc=recipe.name,
        dynamic_ncols=True,
    )
    t0, pixels = time.perf_counter(), 0
    for step in bar:
        if stop_at is not None and step >= stop_at:
            save_checkpoint(out, model, opt, step)
            bar.close()
            log.close()
            return model.eval()
        torch.manual_seed(recipe.seed * 1_000_003 + step)  # per-step RNG: resumed runs draw the same noise
        source, batch = sampler(step)
        x = model.pixels_to_float(batch)
        recon, bout = model(x)
        loss, terms = tokenizer_loss(recipe, x, recon, bout)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}: {terms}; lower lr or check the data")
        for g in opt.param_groups:
            g["lr"] = lr_at(recipe, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        pixels += batch[:, 0].numel()
        done = step + 1
        if done % recipe.log_every == 0 or done == recipe.steps:
            rate = pixels / max(time.perf_counter() - t0, 1e-9)
            row = {
                "step": done,
                "loss": float(loss.detach()),
                **terms,
                "lr": lr_at(recipe, step),
                "source": source,
                "mpix_per_s": rate / 1e6,
            }
            if done % recipe.ckpt_every == 0 or done == recipe.steps:
                row.update(validate(model, val))
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix_str(
                " ".join(
                    f"{k}={v:.4g}"
                    for k, v in row.items()
                    if isinstance(v, float) and k in ("loss", "l1", "kl", "commitment", "mpix_per_s")
                )
            )
        if done % recipe.ckpt_every == 0 or done == recipe.steps:
            save_checkpoint(out, model, opt, done)
    bar.close()
    log.close()
    t_train = time.perf_counter() - t0

    model.eval()
    mean, std = latent_statistics(model, sampler, recipe.steps, recipe.stats_batches)
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    model.save_pretrained(out)
    dump_config(recipe, out / "recipe.yaml")
    summary = {
        "name": recipe.name,
        "kind": recipe.kind,
        "steps": recipe.steps,
        "resumed_from": start,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds_this_session": round(t_train, 1),
        "data_seconds": round(t_data, 1),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu only'}",
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        **validate(model, val),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return model


def main(
    recipe_path: str, overrides: list[str] | tuple[str, ...] = (), out: str | None = None, resume: str | None = "auto"
) -> ImageTokenizer:
    """Entry point of `scripts/train_tokenizer.py image`."""
    from mmgen.tokenizer.text import resolve_artifact

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
