"""Running a pipeline on this machine with ``kfp.local`` (the embedded default: no cluster)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from kfp import local

from pillars.components.settings import Settings
from pillars.components.tracking import configure_tracking

logger = logging.getLogger("pillars.local")


def run_local(pipeline: Callable[..., Any], arguments: Mapping[str, Any], settings: Settings | None = None,
              caching: bool = True, log_file: Path | None = None, output: TextIO | None = None) -> str:
    """Run ``pipeline`` through ``kfp.local``'s SubprocessRunner in the current Python environment.

    MLflow is the server at ``MLFLOW_TRACKING_URI`` when set, else the local store under
    ``PILLARS_HOME``; task outputs go to ``<home>/pipeline_root``.

    Args:
        log_file: a file the steps' output goes to (kfp.local prints it); None: to this process's stdout.
        output: a stream the steps' output goes to instead (e.g. :class:`pillars.pipelines.progress.StepReporter`'s).

    Returns:
        The tracking URI the run used.
    """
    from pillars.pipelines.training import check_arguments, check_model_owner

    check_arguments(pipeline, dict(arguments))
    settings = settings or Settings()
    home = settings.resolved_home()
    uri = configure_tracking(arguments.get("tracking_uri") or None, settings)
    check_model_owner(pipeline, dict(arguments))
    args = {"tracking_uri": uri, "checkpoint_root": str(settings.resolved_checkpoint_root()), **arguments}
    root = home / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=caching, cache_root=str(Path(root) / ".cache"), raise_on_error=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # kfp.local notes that resource requests do nothing locally and that the components name
        # an image it does not use: both expected for the embedded default.
        warnings.filterwarnings("ignore", module="kfp.local")
        stream = output
        if stream is None and log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            stream = stack.enter_context(open(log_file, "w"))
        if stream is not None:
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
        pipeline(**args)
    return uri
