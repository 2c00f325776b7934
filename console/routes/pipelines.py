"""The pipelines and their run forms: list them, show one's form, start a run from it.

A submitted form is checked by :mod:`pillars.console.forms` (the same rules as ``pillars run``); any
error comes back on the form at its field, with what was typed kept, as a 200 page, and nothing is
queued. A valid form starts the run where the console is configured to: on KFP (``kfp_host``) or in
the console's own queue on this machine (kfp.local), then redirects to the run's page.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pillars.components.errors import ConfigError
from pillars.console import forms
from pillars.console.routes.context import Console, ConsoleDep, checked_form
from pillars.console.runs import submit_to_kfp
from pillars.pipelines.compile import PIPELINES

router = APIRouter()


@router.get("/pipelines", response_class=HTMLResponse)
def pipelines(request: Request, c: ConsoleDep) -> Response:
    """Every pipeline with its description, and where runs go."""
    rows = [(name, c.pipeline(name).component_spec.description or "") for name in PIPELINES]
    return c.page(request, "pipelines.html", title="Pipelines", nav="Pipelines", rows=rows,
                  target=c.settings.kfp_host or "this machine (kfp.local)")


@router.get("/pipelines/{name}", response_class=HTMLResponse)
def pipeline_form(request: Request, c: ConsoleDep, name: str) -> Response:
    """The run form of pipeline ``name``, empty."""
    return _form_page(request, c, name, {}, {})


@router.post("/pipelines/{name}")
async def submit(request: Request, c: ConsoleDep, name: str) -> Response:
    """Start a run of ``name`` from its form, or show the form again with each error at its field."""
    form = await checked_form(request)
    arguments, errors = forms.check_form(c.pipeline(name), form, c.policy)
    if not errors:
        try:
            return _start(c, name, arguments)
        except ConfigError as e:
            errors = {forms.FORM_ERROR: str(e)}
    # The form again, with each error at its field: a page like any other (200, as server-rendered
    # forms answer), so the browser logs no failed load; nothing was queued.
    return _form_page(request, c, name, form, errors)


def _form_page(request: Request, c: Console, name: str, values: dict[str, str], errors: dict[str, str]) -> Response:
    pipeline = c.pipeline(name)
    return c.page(request, "pipeline.html", title=f"Pipeline {name}", nav="Pipelines", name=name,
                  description=pipeline.component_spec.description or "", fields=forms.fields(pipeline),
                  values=values, errors=errors, form_error=forms.FORM_ERROR, target=c.settings.kfp_host)


def _start(c: Console, name: str, arguments: dict[str, Any]) -> Response:
    """Submit to KFP, or queue on this machine; then the run's page."""
    if c.settings.kfp_host:
        record = c.store.create(name, arguments, backend="kfp")
        record.kfp_run_id = submit_to_kfp(c.settings.kfp_host, c.settings.kfp_namespace, name, arguments,
                                          run_name=f"{name}-{record.id}")
        record.status = "submitted"
        c.store.save(record)
    else:
        record = c.store.create(name, {**arguments, "tracking_uri": c.tracking_uri})
        c.runs.submit(record)
    return RedirectResponse(f"/runs/{record.id}", status_code=303)
