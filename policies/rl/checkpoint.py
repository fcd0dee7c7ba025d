"""Checkpoints: plain tensors and JSON-like values in a file written atomically (temp file, fsync, rename),
loaded with `weights_only=True` (never pickled objects). A training store keeps them as
`STORE.data/rl-step-NNNNNNNN.pt`; the latest one is the one with the highest step."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "aec-rl-checkpoint-1"
_NAME = re.compile(r"^rl-step-(\d{8,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not an aec RL checkpoint."""


def checkpoint_dir(store: str | Path) -> Path:
    """Where a training store keeps its checkpoint files (beside it, as the campaign store keeps data)."""
    store = Path(store)
    return store.parent / (store.name + ".data")


def checkpoint_name(step: int) -> str:
    return f"rl-step-{step:08d}.pt"


def list_checkpoints(store: str | Path) -> list[Path]:
    """The store's checkpoint files, oldest step first."""
    folder = checkpoint_dir(store)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1]))


def resolve(path: str | Path) -> Path:
    """A checkpoint file as given, or the latest checkpoint of a training store."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".pt":
        return p
    if not p.exists() and not checkpoint_dir(p).is_dir():
        raise CheckpointError(f"{p}: no such checkpoint file or training store")
    found = list_checkpoints(p)
    if not found:
        raise CheckpointError(f"{p}: the training store holds no checkpoint yet (run `aec train-rl` first)")
    return found[-1]


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (file or training store) as tensors and plain values; CheckpointError if it is not one."""
    p = resolve(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        first = (str(exc).strip().splitlines() or [""])[0]  # one line: torch's messages run over many
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an aec RL checkpoint (format {FORMAT!r} expected)")
    payload["path"] = str(p)
    return payload
