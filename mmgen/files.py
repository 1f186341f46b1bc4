"""Reading saved JSON and safetensors files so that a missing, truncated or corrupt one is an error naming
the file and the fix, not a parser's traceback; writing the JSON result file of a script.

    config = read_json(folder / "config.json", TokenizerError, fix="retrain it with ...")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmgen.errors import MMGenError


def read_json(path: str | Path, error: type[MMGenError], fix: str) -> Any:
    """The parsed JSON of `path`; `error(...)` naming the file and `fix` when it is missing or does not parse."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p} is missing; {fix}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{p} is truncated or corrupt (not valid JSON: {e}); {fix}") from e


def save_json(result: dict, path: str | Path) -> Path:
    """Write a script's result (indented JSON), creating the folder; print where it went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"-> {path}")
    return path


def safetensors_shapes(path: str | Path, error: type[MMGenError], fix: str) -> dict[str, list[int]]:
    """Tensor name -> shape from the header of a safetensors file, which must cover the whole file (a
    truncated file fails here, before any weights are read)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise error(f"{p} is missing; {fix}")
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise error(f"{p} is truncated or corrupt ({e}); {fix}") from e


def check_shapes(path: str | Path, expected: dict[str, Any], error: type[MMGenError], fix: str) -> None:
    """The tensors of a safetensors file must be exactly `expected` (name -> tensor or shape) in name and shape."""
    found = safetensors_shapes(path, error, fix)
    want = {k: list(getattr(v, "shape", v)) for k, v in expected.items()}
    missing, extra = sorted(want.keys() - found.keys()), sorted(found.keys() - want.keys())
    if missing or extra:
        raise error(
            f"{path} holds other tensors than the config describes (missing: {missing[:3]}, "
            f"unexpected: {extra[:3]}); {fix}"
        )
    for k, shape in want.items():
        if found[k] != shape:
            raise error(
                f"{path} does not match its config: '{k}' is {found[k]} in the file, {shape} per the config; {fix}"
            )
