"""The feature network of the in-project Frechet distance: a small CIFAR-10 classifier trained here.

No pretrained Inception weights can be downloaded on these machines, so reconstruction FD uses the
penultimate features (global average pool, 128-d) of this classifier, on 32x32 tiles of full-resolution
images. The number ranks tokenizers against each other; it is NOT comparable to published rFID.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmgen.errors import MissingInput

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "results" / "tokenizers" / "feature_net"
TILE = 32


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class FeatureNet(nn.Module):
    """[N, 3, 32, 32] in [0, 1] -> logits [N, 10]; `features` gives the [N, 4 * width] pooled features."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2), _block(2 * width, 4 * width)
        )
        self.head = nn.Linear(4 * width, classes)
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _cifar(split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    from mmgen.data.sources import cifar10

    imgs, labels = [], []
    for d in cifar10(split, limit=limit):
        imgs.append(d.images[0].rgb())
        labels.append(d.images[0].meta["label"])
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]
    return x, torch.tensor(labels)


def train_feature_net(
    folder: str | Path = DEFAULT_FOLDER,
    epochs: int = 3,
    width: int = 16,
    batch: int = 128,
    limit: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> FeatureNet:
    """Train on CIFAR-10 train (random flips and 4-px shifts), report test accuracy, save to `folder`."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.manual_seed(seed)
    x, y = _cifar("train", limit)
    xt, yt = _cifar("test", limit // 5 if limit else 0)
    net = FeatureNet(width)
    steps = epochs * (len(x) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="feature net", disable=not progress, dynamic_ncols=True)
    g = torch.Generator().manual_seed(seed)
    for step in bar:
        idx = torch.randint(len(x), (batch,), generator=g)
        xb = x[idx].float() / 255.0
        if torch.rand((), generator=g) < 0.5:
            xb = xb.flip(3)
        dx, dy = torch.randint(-4, 5, (2,), generator=g).tolist()
        xb = torch.roll(xb, (dy, dx), dims=(2, 3))
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix_str(f"loss={float(loss.detach()):.3f}")
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b.float() / 255.0).argmax(1) for b in xt.split(500)])
    acc = float((pred == yt).float().mean())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    info = {
        "width": width,
        "epochs": epochs,
        "train_images": len(x),
        "test_accuracy": round(acc, 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "note": "in-project CIFAR-10 classifier; FD on its features is not comparable to rFID",
    }
    (folder / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    return net


def load_feature_net(folder: str | Path = DEFAULT_FOLDER) -> FeatureNet:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise MissingInput(
            f"no feature network at {folder}; train it with `python scripts/eval_tokenizer.py --train-feature-net` "
            f"(about 5 minutes on 2 CPU cores) or pass --no-fd"
        )
    info = json.loads((folder / "config.json").read_text())
    net = FeatureNet(info["width"])
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    return net.eval()


@torch.no_grad()
def tile_features(net: FeatureNet, images: torch.Tensor) -> np.ndarray:
    """Features of every non-overlapping 32x32 tile of images [N, 3, H, W] in [0, 1] -> [N * tiles, D]."""
    n, c, h, w = images.shape
    tiles = images[:, :, : h - h % TILE, : w - w % TILE].unfold(2, TILE, TILE).unfold(3, TILE, TILE)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, TILE, TILE)
    return torch.cat([net.features(b) for b in tiles.split(1024)]).numpy()
