"""The model registry, read-only: models, one model's versions and champion history, one version, and
the artifacts a version's page shows.

Everything is read through :mod:`pillars.console.versions` and :mod:`pillars.components.registry`,
the same code the CLI uses; a missing model or version is the registry's own error, rendered as a 404
page by the app's one error handler. Artifacts are served from a local cache, only the kinds the
console shows; an HTML report is served sandboxed, so it can never run anything.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from pillars.components import registry
from pillars.console.routes.context import Console, ConsoleDep, PageNotFound
from pillars.console.runs import RunRecord
from pillars.console.versions import VersionDetail, compare, split_variants, version_detail

router = APIRouter()

REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""The policy an HTML artifact (the evaluation report) is served under: shown, never allowed to run anything."""


@router.get("/models", response_class=HTMLResponse)
def model_list(request: Request, c: ConsoleDep) -> Response:
    """Every registered model."""
    return c.page(request, "models.html", title="Models", nav="Models", models=registry.list_models())


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, c: ConsoleDep, name: str, a: str = "", b: str = "") -> Response:
    """One model: trained versions, optimised variants, champion history; versions ``a`` and ``b`` compared."""
    versions = registry.list_versions(name)
    comparison = (a, b, *compare(name, a, b)) if a and b else None
    trained, variants = split_variants(versions)
    keys = sorted({k for v in trained for k in v.metrics})
    return c.page(request, "model.html", title=f"Model {name}", nav="Models", name=name, versions=versions,
                  trained=trained, variants=variants, metric_keys=keys, comparison=comparison,
                  history=registry.history(name))


@router.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
def version_page(request: Request, c: ConsoleDep, name: str, version: str, done: str = "") -> Response:
    """One version: metrics, gate decision, tags, artifacts, and the console run that trained it."""
    detail = version_detail(name, version)
    return c.page(request, "version.html", title=f"{name} v{version}", nav="Models", v=detail,
                  done=done, console_run=_console_run(c, detail, c.store.list()))


@router.get("/artifacts/{run_id}/{path:path}")
def artifact(c: ConsoleDep, run_id: str, path: str) -> Response:
    """One artifact of MLflow run ``run_id`` that a version's page shows (cached privately for an hour)."""
    try:
        local = c.artifacts.get(run_id, path)
    except KeyError:
        raise PageNotFound(f"run {run_id} has no artifact {path!r} the console shows") from None
    headers = {"Cache-Control": "private, max-age=3600"}
    if path.endswith(".html"):
        headers["Content-Security-Policy"] = REPORT_CSP
    return FileResponse(local, headers=headers)


def _console_run(c: Console, detail: VersionDetail, records: list[RunRecord]) -> str | None:
    """The console run that trained ``detail`` (matched on the MLflow run id its train step output)."""
    for record in records:
        if record.backend == "local" and record.done:
            if record.id not in c.trained_by:
                train = c.progress(record).step("train")
                c.trained_by[record.id] = train.outputs.get("Output") if train else None
            if c.trained_by[record.id] == detail.run_id:
                return record.id
    return None
