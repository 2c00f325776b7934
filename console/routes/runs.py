"""The console's runs: the list, one run's page, its live fragment, its progress as JSON, a step's log.

A local run's steps come from its kfp.local log (:meth:`Console.progress`); what a finished run
produced (:func:`run_result`) is read from its steps' outputs and the registry. A run on KFP shows the
state KFP reports. A run or step that does not exist is a 404 page, never a 500.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from pillars.components.errors import PillarsError
from pillars.console.routes.context import Console, ConsoleDep, PageNotFound
from pillars.console.runs import RunRecord, kfp_status
from pillars.console.versions import version_detail

router = APIRouter()

LOG_TAIL_CHARS = 4000
"""How much of each step's log the progress JSON carries."""


@router.get("/runs", response_class=HTMLResponse)
def run_list(request: Request, c: ConsoleDep) -> Response:
    """Every console run, newest first, and how many wait in the queue."""
    return c.page(request, "runs.html", title="Runs", nav="Runs", runs=c.store.list(), waiting=c.runs.waiting())


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, c: ConsoleDep, run_id: str) -> Response:
    """One run: its arguments, steps and result."""
    record = c.record(run_id)
    return c.page(request, "run.html", title=f"Run {run_id}", nav="Runs", run=record,
                  progress=c.progress(record), result=run_result(c, record))


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
def run_live(request: Request, c: ConsoleDep, run_id: str) -> Response:
    """The part of a run's page that changes while it runs."""
    record = c.record(run_id)
    return c.page(request, "run_fragment.html", run=record, progress=c.progress(record), result=run_result(c, record))


@router.get("/runs/{run_id}/progress.json")
def run_progress(c: ConsoleDep, run_id: str) -> JSONResponse:
    """A run's status, steps (each with its log's tail) and result, for scripts and the live page."""
    record = c.record(run_id)
    progress = c.progress(record)
    body = progress.to_dict()
    for step, data in zip(progress.steps, body["steps"], strict=True):
        data["log_tail"] = step.log[-LOG_TAIL_CHARS:]
    return JSONResponse({"status": record.status, "done": record.done, "seconds": record.seconds,
                         "error": record.error, **body, "result": run_result(c, record)})


@router.get("/runs/{run_id}/steps/{step}/log")
def step_log(c: ConsoleDep, run_id: str, step: str) -> PlainTextResponse:
    """One step's whole log as plain text."""
    found = c.progress(c.record(run_id)).step(step)
    if found is None:
        raise PageNotFound(f"run {run_id} has no step {step!r}")
    return PlainTextResponse(found.log or "(no output)")


def run_result(c: Console, record: RunRecord) -> dict[str, Any]:
    """What a finished run produced: MLflow run, registered version, the gate's decision."""
    if record.backend == "kfp":
        settings = c.settings
        state = kfp_status(settings.kfp_host, settings.kfp_namespace, record.kfp_run_id) if record.kfp_run_id else None
        return {"kfp_state": state}
    progress = c.progress(record)
    train, register, validate = (progress.step(n) for n in ("train", "register", "validate"))
    result: dict[str, Any] = {"mlflow_run_id": train.outputs.get("Output") if train else None,
                              "approved": None, "reasons": [], "model": None, "version": None,
                              "kfp_run_id": progress.job_name}
    if validate and "Output" in validate.outputs:
        result["approved"] = validate.outputs["Output"] == "True"
    if register and register.outputs.get("version"):
        result["model"], result["version"] = register.outputs.get("model_name"), register.outputs["version"]
        with contextlib.suppress(PillarsError):
            detail = version_detail(result["model"], result["version"])
            result["reasons"] = detail.gate_reasons
            result["experiment_id"] = detail.experiment_id
            result["artifacts"] = detail.artifacts
    return result
