"""What a checkpoint folder must hold: a manifest of every file (relative path, size, sha256), written last.

    write_manifest(folder)         after every other file of the checkpoint is on disk (rank 0)
    check_manifest(folder) -> str  '' when every listed file is there with its size and hash and no other
                                   file is; otherwise the first problem, in words

A truncated or half-deleted file, a file that is missing, and a file that the trainer did not write all fail
the check, so resumption passes over a damaged folder before loading anything from it. It is a check against
damage, not against an attacker: whoever can plant a pickle in the folder can rewrite the manifest to match.
What keeps a planted pickle from running is that no checkpoint file is ever unpickled with code allowed
(safetensors, `torch.load(weights_only=True)`; for DeepSpeed's files see `safe_torch_load` in distributed.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "manifest.json"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )


def write_manifest(folder: Path) -> dict:
    files = {rel: {"size": (folder / rel).stat().st_size, "sha256": sha256(folder / rel)} for rel in _files(folder)}
    manifest = {"version": 1, "files": files}
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(folder / MANIFEST_FILE)
    return manifest


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


def check_manifest(folder: Path) -> str:
    """'' if the folder matches its manifest exactly, else what is wrong (the first problem found)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return f"no {MANIFEST_FILE} (the checkpoint was never finished, or was written before manifests existed)"
    try:
        files = json.loads(path.read_text())["files"]
        listed = {str(rel): (int(v["size"]), str(v["sha256"])) for rel, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MANIFEST_FILE} ({type(e).__name__}: {e})"
    for rel, (size, digest) in sorted(listed.items()):
        f = folder / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, the manifest says {size} (truncated or replaced)"
        if sha256(f) != digest:
            return f"{rel} does not match its sha256 in the manifest (changed after it was written)"
    extra = [rel for rel in _files(folder) if rel not in listed]
    if extra:
        return f"{extra[0]} is not in the manifest (a file the trainer did not write)"
    return ""
