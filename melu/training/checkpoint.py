"""Training checkpoints as plain data: tensors in safetensors, everything else in JSON.

A checkpoint is a folder holding ``tensors.safetensors`` (parameters, optimiser moments,
best-so-far weights) and ``state.json`` (epoch, early-stopping counters, history, config,
RNG states). It is written to a temporary sibling folder and renamed over the old one, so
a run killed at any moment leaves either the previous checkpoint or the new one, never a
mix. No pickle (``torch.save`` is pickle, so it is not used).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from melu.atomic import atomic_directory, recover
from melu.errors import BundleError

TENSORS = "tensors.safetensors"
STATE = "state.json"
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and, when present, CUDA) as JSON-safe base64 strings."""
    out: dict[str, Any] = {
        "cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    }
    if torch.cuda.is_available():
        out["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""

    def decode(text: str) -> Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(decode(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in state["cuda"]])


def save_checkpoint(folder: Path, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Write ``tensors`` and ``state`` to ``folder`` atomically (temp folder + rename)."""
    with atomic_directory(folder) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS)
        )
        payload = {"checkpoint_version": CHECKPOINT_VERSION, **state}
        (tmp / STATE).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def load_checkpoint(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint folder; ``BundleError`` names the file at fault."""
    folder = recover(folder)
    if not (folder / STATE).is_file() or not (folder / TENSORS).is_file():
        raise BundleError(f"{folder}: no complete checkpoint here (need {STATE} and {TENSORS})")
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{folder / STATE}: unreadable ({exc})") from exc
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise BundleError(f"{folder / STATE}: not a version {CHECKPOINT_VERSION} checkpoint")
    try:
        tensors = load_file(str(folder / TENSORS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{folder / TENSORS}: unreadable or truncated ({exc})") from exc
    return tensors, state
