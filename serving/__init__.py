"""The inference service: a KServe model server for registered Pillars models (HTTP, gRPC, metrics, batching, drift).

Importing the package is cheap; the names below load their modules (torch, KServe) on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Batcher", "DriftMonitor", "PillarsModel", "PillarsModelServer", "ServingSettings", "main", "query_once"]

_WHERE = {
    "Batcher": "pillars.serving.batching",
    "DriftMonitor": "pillars.serving.monitoring.drift",
    "PillarsModel": "pillars.serving.model",
    "PillarsModelServer": "pillars.serving.server",
    "ServingSettings": "pillars.serving.settings",
    "main": "pillars.serving.__main__",
    "query_once": "pillars.serving.demo",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pillars.serving' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
