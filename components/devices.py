"""Which torch device a step or the server runs on: one rule for training and serving.

``auto`` is the GPU when torch sees one, else the CPU. A named device (``cpu``, ``cuda``, ``cuda:1``,
``mps``) is used as given; asking for CUDA where there is none is refused at once, naming it, rather than
failing later at the first tensor moved (a server would report ready, then answer every request 500).
"""

from __future__ import annotations

import torch

from pillars.components.errors import ConfigError


def pick_device(requested: str = "auto") -> torch.device:
    """The device ``requested`` names (``auto``: ``cuda`` when available, else ``cpu``).

    Raises:
        ConfigError: ``requested`` is not a device name torch knows, or names CUDA and none is available.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {requested!r} is not a device name (auto, cpu, cuda, cuda:N): {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} asked for, but no CUDA device is available")
    return device
