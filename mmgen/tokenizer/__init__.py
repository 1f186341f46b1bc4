"""Tokenizers as the model runs them: documents to tokens and latents, latents back to pixels.

- `text.py`: the sentencepiece text tokenizer (a `transformers` fast tokenizer), its fixed special ids, and
  `ensure_text_tokenizer` (its training is one in-process sentencepiece call, so it stays beside the loader).
- `image.py`: `ImageTokenizer` = encoder trunk (`autoencoder.py`) + bottleneck (`bottleneck.py`: KL, VQ, FSQ) +
  decoder trunk (+ an optional linear patch path, `patch_linear.py`); `encode` / `decode` / `normalize`, saved and
  loaded as config.json + model.safetensors.

How image tokenizers are trained from recipes and measured (metrics, reports, bit accounting, references) is in
`mmgen/tokenizer_study/`; nothing here imports it.
"""
