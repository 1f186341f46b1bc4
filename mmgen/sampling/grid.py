"""Image grids (PNG) for sample sheets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def save_grid(
    images: list[np.ndarray], path: Path, ncol: int = 4, scale: int = 4, labels: list[str] | None = None
) -> Path:
    """Images (H, W, 3) uint8 in rows of `ncol`, upscaled (nearest) by `scale`; one label per row."""
    h, w = images[0].shape[:2]
    nrow = -(-len(images) // ncol)
    pad = 14 if labels else 0
    sheet = Image.new("RGB", (ncol * w * scale + (ncol + 1) * 2, nrow * (h * scale + pad) + (nrow + 1) * 2), "gray")
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        x, y = 2 + c * (w * scale + 2), 2 + r * (h * scale + pad + 2)
        if labels and c == 0 and r < len(labels):
            draw.text((x, y), labels[r][: 8 * ncol * w * scale // 60], fill="white")
        sheet.paste(Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST), (x, y + pad))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)
    return path
