"""Evaluation and benchmark loops that scripts and tests share: quality against sampling steps (steps.py), with
its shapes (shapes.py) and CIFAR-10 (cifar.py) measures, and the timing harness (timing.py) of the backbone
(backbone.py) and generation (generation.py) benchmarks on preset models (presets.py)."""
