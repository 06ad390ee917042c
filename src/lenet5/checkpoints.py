"""Checkpoints that are written atomically and read with clear errors.

A checkpoint is first written whole to a temporary file beside its destination, flushed to disk,
then renamed over it: a crash, a full disk or a killed process can leave the previous checkpoint
or the new one, never half of one (so 'last.ckpt' is always loadable). Our checkpoints hold only
tensors and primitive values, so `torch.load(path, weights_only=True)` reads them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, with the write made atomic (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialize in memory, so a failed write is the OS's plain error
        try:
            with temporary.open("wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise CheckpointError(f"could not write the checkpoint {path} ({error.strerror or error}); the previous "
                                  f"checkpoints are intact: free disk space, or set paths.output_dir elsewhere, and "
                                  f"resume with `python train.py resume={path.parent.parent}`") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ours, read with weights_only=True, or a CheckpointError that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass the .ckpt file of a run, e.g. "
                              f"outputs/runs/<date>/<time>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load fails in many ways on a bad file; all mean the same
        reason = f"{type(error).__name__}: " + " ".join(str(error).split()).split(". ")[0][:120]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file: {reason}); "
                              f"use another checkpoint of the run, e.g. its last.ckpt") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or \
            checkpoint.get("hyper_parameters", {}).get("net", {}).get("_target_") is None:
        raise CheckpointError(f"{path} is a PyTorch file but not a LeNet-5 checkpoint of this project "
                              f"(no network configuration in it)")
    return checkpoint
