"""Training checkpoints as plain data: tensors in safetensors, everything else in JSON.

A checkpoint is a folder holding ``tensors.safetensors`` (parameters, optimiser moments,
best-so-far weights) and ``state.json`` (epoch, early-stopping counters, history, config,
RNG states). It is written to a temporary sibling folder and renamed over the old one, so
a run killed at any moment leaves either the previous checkpoint or the new one, never a
mix. No pickle (``torch.save`` is pickle, so it is not used).

Like a bundle, a checkpoint is checked before anything of it is trusted: ``state.json``
records the sha256 of the tensor file and of its own content (a flipped bit or an edited
epoch is refused by name, and so is a checkpoint without the record), then every field
is checked (``check_state``) and the optimiser's moments are checked against the
parameters they belong to (``adam_state``). ``--resume`` never continues from a state
that fails any of these.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from melu.atomic import atomic_directory, recover
from melu.bundle_checks import file_sha256
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
        payload["digests"] = {TENSORS: file_sha256(tmp / TENSORS), STATE: _state_digest(payload)}
        (tmp / STATE).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def _state_digest(state: dict[str, Any]) -> str:
    """sha256 of the state's canonical JSON, its ``digests`` record left out."""
    rest = {k: v for k, v in state.items() if k != "digests"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def resign(folder: Path) -> None:
    """Record the present files' digests in ``state.json`` (tests and forensics only: it
    makes a damaged checkpoint look whole, so the field checks are what it meets)."""
    state = json.loads((folder / STATE).read_text())
    state["digests"] = {TENSORS: file_sha256(folder / TENSORS), STATE: _state_digest(state)}
    (folder / STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def _check_digests(folder: Path, state: dict[str, Any]) -> None:
    digests = state.get("digests")
    if not isinstance(digests, dict) or set(digests) != {TENSORS, STATE}:
        raise BundleError(
            f"{folder / STATE}: no digest record, so this checkpoint cannot be checked; "
            "start over without --resume (or use a new --out)"
        )
    if digests[TENSORS] != file_sha256(folder / TENSORS):
        raise BundleError(f"{folder / TENSORS}: content does not match the sha256 in {STATE}")
    if digests[STATE] != _state_digest(state):
        raise BundleError(f"{folder / STATE}: edited since it was written (sha256 mismatch)")


def load_checkpoint(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint folder; ``BundleError`` names the file at fault."""
    folder = recover(folder)
    if not (folder / STATE).is_file() or not (folder / TENSORS).is_file():
        raise BundleError(f"{folder}: no complete checkpoint here (need {STATE} and {TENSORS})")
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{folder / STATE}: unreadable ({str(exc)[:200]})") from exc
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise BundleError(f"{folder / STATE}: not a version {CHECKPOINT_VERSION} checkpoint")
    try:
        _check_digests(folder, state)
        tensors = load_file(str(folder / TENSORS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{folder / TENSORS}: unreadable or truncated ({exc})") from exc
    check_state(folder / STATE, state)
    for name, value in tensors.items():
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise BundleError(f"{folder / TENSORS}: {name} must be finite floats ({value.dtype})")
    return tensors, state


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_state(file: Path, state: dict[str, Any]) -> None:
    """The fields ``train`` resumes from, each checked (``BundleError`` naming it): the
    epoch counters are whole numbers that agree with the history (one row per epoch run),
    the best MAE a finite number or null, the config and RNG state objects."""
    for key, kind in (("train_state", dict), ("history", list), ("config", dict), ("rng", dict)):
        if not isinstance(state.get(key), kind):
            raise BundleError(
                f"{file}: {key} must be a JSON {kind.__name__ if kind is dict else 'list'}"
            )
    if not isinstance(state.get("data_fingerprint"), str):
        raise BundleError(f"{file}: data_fingerprint must be a string")
    run, history = state["train_state"], state["history"]
    for key in ("epoch", "best_epoch", "bad_epochs"):
        if not _whole(run.get(key)):
            raise BundleError(
                f"{file}: train_state.{key} must be a whole number (got {run.get(key)!r:.40})"
            )
    if run["epoch"] != len(history) or not all(
        isinstance(row, dict) and row.get("epoch") == i for i, row in enumerate(history, 1)
    ):
        raise BundleError(
            f"{file}: train_state.epoch {run['epoch']} does not match the history "
            f"({len(history)} epoch rows, numbered 1..)"
        )
    if run["best_epoch"] > run["epoch"] or run["bad_epochs"] > run["epoch"]:
        raise BundleError(f"{file}: train_state.best_epoch / bad_epochs exceed the epoch")
    best = run.get("best_mae")
    if best is not None and not (isinstance(best, int | float) and math.isfinite(best)):
        raise BundleError(f"{file}: train_state.best_mae must be a finite number or null")


ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")
_ADAM_NAME = re.compile(r"adam\.(\d{1,6})\.([a-z_]+)")


def adam_state(tensors: dict[str, Tensor], params: list[Tensor]) -> dict[int, dict[str, Tensor]]:
    """Adam's per-parameter state from the ``adam.<i>.<key>`` tensors, checked against
    ``params`` (the optimiser's parameters, in order): each name well formed, each index a
    parameter, each moment of that parameter's shape, ``step`` a scalar, each state whole."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("adam."):
            continue
        match = _ADAM_NAME.fullmatch(name)
        if match is None or int(match[1]) >= len(params) or match[2] not in ADAM_KEYS:
            raise BundleError(f"checkpoint: {name!r:.80} is not an optimiser state of this model")
        i, key = int(match[1]), match[2]
        expected = () if key == "step" else tuple(params[i].shape)
        if tuple(value.shape) != expected:
            raise BundleError(
                f"checkpoint: {name} has shape {tuple(value.shape)}, expected {expected}"
            )
        state.setdefault(i, {})[key] = value
    for i, entry in state.items():
        if set(entry) != set(ADAM_KEYS):
            missing = sorted(set(ADAM_KEYS) - set(entry))
            raise BundleError(f"checkpoint: adam.{i} lacks {', '.join(missing)}")
    return state
