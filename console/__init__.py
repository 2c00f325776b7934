"""The Pillars console: pipelines, runs, the model registry and endpoints in a browser."""

from pillars.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings"]
