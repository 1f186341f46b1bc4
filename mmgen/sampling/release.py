"""Loading a release folder (config.json, model.safetensors, the text tokenizer, image_tokenizer/) with every
file checked first: a missing, truncated or edited file is a `CheckpointError` or `TokenizerError` naming it,
and a device that this machine lacks is refused before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import torch

from mmgen.errors import CheckpointError, MissingInput, PromptError
from mmgen.files import check_shapes, read_json

SAMPLING_FILE = "sampling.json"  # the release's sampling defaults (steps, guidance, ...): what its card measured
# sampling.json may also map a number of steps to its own guidance ({"1": 1.0, "2": 1.5}): a flow map's 1-step
# jump does not survive the extrapolation of classifier-free guidance that a 4-step sample needs
GUIDANCE_BY_STEPS = "guidance_by_steps"
FIX = "copy the release folder again, or export it again from its run (train.py writes release/ at the end)"


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device that exists on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PromptError(f"device {device!r} is not a device name ({e}); use cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise PromptError(
                f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                f"use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise PromptError(f"device {device!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PromptError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return dev


def load_release(path: str | Path, device: str | torch.device = "cpu"):
    """(model, text tokenizer, image tokenizer) of a release folder, on `device`."""
    from mmgen.models.model import MMGenConfig, MMGenModel
    from mmgen.tokenizer.image import load_image_tokenizer
    from mmgen.tokenizer.text import load_text_tokenizer

    path = Path(path)
    dev = resolve_device(device)
    if not (path / "config.json").is_file():
        raise MissingInput(
            f"no mmgen release at {path} (expected config.json, model.safetensors, tokenizer "
            f"files and image_tokenizer/); train one with `accelerate launch scripts/train.py`"
        )
    read_json(path / "config.json", CheckpointError, FIX)
    try:
        config = MMGenConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path / 'config.json'} does not describe an mmgen model ({e}); {FIX}") from e
    with torch.device("meta"):  # shapes only, no memory
        shell = MMGenModel(config)
    check_shapes(path / "model.safetensors", shell.state_dict(), CheckpointError, FIX)
    # built and filled directly, not with from_pretrained: under an active DeepSpeed ZeRO-3 config transformers
    # builds from_pretrained models inside zero.Init, as empty shards that no engine gathers (a distillation
    # teacher loaded during a ZeRO-3 run); and the weights are copied into the model's own memory, not left as
    # views of a memory-mapped file that a rerun of its stage may overwrite. The model is fp32: bf16 files upcast
    from safetensors.torch import load_file

    model = MMGenModel(config)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model = model.to(dev).eval()
    text = load_text_tokenizer(path, fix=FIX)  # the release's own tokenizers: retraining one would not match
    image = load_image_tokenizer(path / "image_tokenizer", fix=FIX).to(dev).eval()
    return model, text, image


def load_sampling_defaults(path: str | Path) -> dict:
    """The release's `sampling.json` ({} when absent): SamplingOptions fields its model card was measured with."""
    from mmgen.sampling.interleaved import SamplingOptions

    file = Path(path) / SAMPLING_FILE
    if not file.is_file():
        return {}
    defaults = read_json(file, CheckpointError, FIX)
    known = set(SamplingOptions.__dataclass_fields__) | {GUIDANCE_BY_STEPS}
    if not isinstance(defaults, dict) or set(defaults) - known:
        raise CheckpointError(
            f"{file}: expected an object of sampling options ({', '.join(sorted(known))}), got "
            f"{sorted(defaults) if isinstance(defaults, dict) else type(defaults).__name__}; {FIX}"
        )
    try:
        if "guidance_interval" in defaults:
            defaults["guidance_interval"] = tuple(defaults["guidance_interval"])
        by_steps = defaults.get(GUIDANCE_BY_STEPS, {})
        if not isinstance(by_steps, dict) or not all(k.isdigit() for k in by_steps):
            raise ValueError(f'{GUIDANCE_BY_STEPS} must map step counts ("1", "2", ...) to guidance weights')
        for steps, guidance in by_steps.items():
            SamplingOptions(steps=int(steps), guidance=guidance).validate()
        if by_steps:  # JSON keys are strings: "1" (or "01") -> 1, so a lookup by the number of steps finds it
            defaults[GUIDANCE_BY_STEPS] = {int(k): v for k, v in by_steps.items()}
        SamplingOptions(**{k: v for k, v in defaults.items() if k != GUIDANCE_BY_STEPS}).validate()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}; {FIX}") from e
    return defaults
