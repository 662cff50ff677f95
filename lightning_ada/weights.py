"""Checkpoint files read without executing pickled code, and weights checked to be finite.

Used wherever a checkpoint's weights are taken in: the model's source checkpoint, a strategy's
source artifacts, and the run layer's checkpoint writer (which refuses to save non-finite
weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_ada.errors import CheckpointError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``: never executes pickled code.

    Raises:
        CheckpointError: if the file is missing or is not a (weights-only loadable) checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def load_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (see :func:`read_checkpoint`).

    Raises:
        CheckpointError: if the file is missing, not a checkpoint, or holds no state_dict.
    """
    state = read_checkpoint(path).get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no 'state_dict' in this file; is it a Lightning checkpoint?")
    return state


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or infinity."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
        and not bool(torch.isfinite(v).all())
    ]


def check_finite_weights(path: str | Path, state_dict: dict[str, Any]) -> None:
    """Refuse weights read from ``path`` that hold NaN or infinity (a diverged run's).

    Raises:
        CheckpointError: naming the file and the first broken weights.
    """
    bad = non_finite_weights(state_dict)
    if bad:
        raise CheckpointError(f"{path}: weights {bad[:3]} hold NaN or infinity (a diverged run?)")
