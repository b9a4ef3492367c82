"""Which torch device a network runs on: one parser for every ``device`` option of wsbench."""

from __future__ import annotations

import torch
from torch import nn

DEVICES = "cpu, cuda, cuda:N or mps"


def torch_device(name: str) -> torch.device:
    """The torch device called ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Raises ``ValueError`` naming ``name`` when it is not a device, or when this machine (or this
    torch build) has no such device, so that a run asks for a GPU it cannot get before any work.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={name!r} is not a torch device; use {DEVICES}") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = (
                "no CUDA GPU is visible"
                if torch.version.cuda
                else f"torch {torch.__version__} is built without CUDA"
            )
            raise ValueError(f"device={name!r} but {why} on this machine; use device=cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device={name!r} but this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} but Apple MPS is not available here; use device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not supported; use {DEVICES}")
    return device


def module_device(module: object) -> torch.device:
    """The device of ``module``'s first parameter; the CPU for anything without parameters
    (e.g. the closed-form test autoencoders)."""
    if isinstance(module, nn.Module):
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")
