"""Constants of the token plan (see `mmgen/data/packing.py` for the full description)."""

KIND_TEXT, KIND_CLEAN, KIND_NOISY = 0, 1, 2  # per-token kind: text, clean image copy, noisy image copy
IGNORE = -100  # label of positions without a next-token target
