"""Where the work runs: ``auto``, ``cpu``, ``cuda`` or ``mps``, resolved to a :class:`torch.device`.

``auto`` picks a CUDA GPU, then Apple's MPS, when PyTorch sees one, and the CPU otherwise. A device asked for by name
that this machine lacks is an error saying so, never a quiet fall back to the CPU: whoever asked for the GPU wants to
know they are not getting it.

The CLI's ``--device`` and the app (``CNNVIZ_DEVICE``, set by ``cnnviz app --device``) go through :func:`resolve`;
training, probing, Grad-CAM and activation maximisation then follow the model to its device.
"""

from __future__ import annotations

import torch

NAMES = ("auto", "cpu", "cuda", "mps")
ENV = "CNNVIZ_DEVICE"  # the app's device, from `cnnviz app --device` (cnnviz.ui.state reads it)


class DeviceError(ValueError):
    """A device this machine does not have, or a name that is not a device; the message says which exist."""


def available() -> list[str]:
    """The devices PyTorch can use here, CPU last: e.g. ``["cuda", "cpu"]``."""
    found = ["cuda"] if torch.cuda.is_available() else []
    if torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve(name: str | torch.device = "auto") -> torch.device:
    """``name`` (one of :data:`NAMES`, ``"cuda:N"``, or a ``torch.device``) → the device to use.

    Raises :class:`DeviceError` for a device that is not here, with the reason and what is.
    """
    if name == "auto":
        return torch.device(available()[0])
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in NAMES:
        raise DeviceError(f"expected a device ({', '.join(NAMES)}), got {name!r}")
    if device.type == "cuda":
        _check_cuda(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        why = "this Mac's macOS is too old for it" if torch.backends.mps.is_built() else "it exists only on Macs"
        raise DeviceError(f"there is no Apple MPS device here ({why}); use one of: {_choices()}")
    return device


def _check_cuda(device: torch.device) -> None:
    if torch.version.cuda is None:
        raise DeviceError(f"there is no CUDA GPU here: this PyTorch ({torch.__version__}) was built without CUDA; "
                          f"use one of: {_choices()}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"there is no CUDA GPU here: PyTorch (built for CUDA {torch.version.cuda}) finds no GPU or "
                          f"no driver for one; use one of: {_choices()}")
    if device.index is not None and device.index >= count:
        raise DeviceError(f"there is no GPU {device}: this machine has {count} (cuda:0 to cuda:{count - 1})")


def _choices() -> str:
    return ", ".join(["auto", *available()])
