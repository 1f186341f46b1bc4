"""Image tokenizers as they are made and studied: trained from recipes, measured, compared.

- `train.py` (+ `checkpoints.py`, `image_data.py` for the crops): the recipe runner behind
  `scripts/train_tokenizer.py image`, and `ensure_image_tokenizer`, which loads an artifact and trains it first
  when only its recipe exists.
- `evaluate.py`, `metrics.py`, `feature_net.py`, `report.py`: PSNR / SSIM / code usage / Frechet distance on a
  set of images, and the tables and figures of tokenizers/RESULTS.md.
- `bits.py`, `kbit.py`, `references.py` (+ `patches.py`): bit accounting, k-bit quantised latents, and the
  network-free PCA / k-means reference tokenizers.
- `options.py`: the `--images` / `--limit` options of the study scripts.

Training lives here, not in `mmgen/tokenizer/`: it is a recipe runner that writes the artifact the runtime only
loads, it validates with this package's metrics, and it shares its image pipeline (`image_data.py`) with the
evaluation. The runtime package stays free of it, and this one imports the runtime, never the reverse.
"""
