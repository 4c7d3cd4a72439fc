"""Checkpoints: written atomically, loaded without executing code.

`save_checkpoint` writes to a temporary file and renames it over the target, so a crash at any
moment leaves the previous checkpoint intact, and records the format and the cifarkit version
that wrote it. `load_checkpoint` uses `torch.load(weights_only=True)`, which only rebuilds tensors
and plain containers; what those must hold is checked by train/checkpoint_schema.py.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from cifarkit import __version__
from cifarkit.errors import CheckpointError
from cifarkit.fsio import atomic_open

FORMAT = "cifarkit-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    state = {"format": FORMAT, "cifarkit_version": __version__, **state}
    # Serialize fully in memory first: a failure while pickling must not touch the target at all.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with atomic_open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        kept = "the previous checkpoint there is intact" if Path(path).exists() else "nothing was written"
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; {kept}") from None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        forbidden = _forbidden_global(e)
        if forbidden is None:     # not a pickle weights_only can read at all: random bytes, a damaged file
            raise CheckpointError(f"{path} is not a loadable cifarkit checkpoint (not a torch file, or a "
                                  "damaged one)") from None
        # weights_only refused an object that is not a tensor or plain container: never run it.
        raise CheckpointError(f"{path} is not a cifarkit checkpoint: it refers to '{forbidden}', an object "
                              "other than tensors and plain values, which could run code, so it is refused") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, AttributeError, OSError, KeyError,
            IndexError, TypeError):
        raise CheckpointError(f"{path} is not a loadable cifarkit checkpoint (truncated, or not a torch file)") from None
    marker = state.get("format") if isinstance(state, dict) else None
    if isinstance(marker, str) and marker.startswith("cifarkit-checkpoint-") and marker != FORMAT:
        version = state.get("cifarkit_version")
        by = f"cifarkit {str(version)[:20]}" if version is not None else "another cifarkit"
        raise CheckpointError(f"{path} was written in the format '{marker[:40]}' by {by}; this cifarkit "
                              f"({__version__}) reads '{FORMAT}'")
    if marker != FORMAT:
        raise CheckpointError(f"{path} is not a cifarkit checkpoint (no '{FORMAT}' marker)")
    return state


def _forbidden_global(error: pickle.UnpicklingError) -> str | None:
    """The global that torch's weights_only unpickler refused to import, if that is why it failed
    (torch names it as "GLOBAL module.name"); None for data that is not a readable pickle at all."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load weights, turning an architecture mismatch into one clear sentence."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"'{k}' has shape {tuple(state_dict[k].shape)} there but {tuple(own[k].shape)} here")
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise CheckpointError(f"{source} was saved from a different architecture: " + "; ".join(parts))
    model.load_state_dict(state_dict)
