"""What every route receives: the console's state, the page renderer, the CSRF-checked form, and the one
error handler.

- :class:`Console` is built once per app by :func:`pillars.console.app.create_app` and kept at
  ``app.state.console``; a route gets it through the :data:`ConsoleDep` dependency, never from a closure.
  Its caches (built pipelines, their planned steps, which console run trained which MLflow run) live as
  long as the app; nothing happens at import time.
- :func:`checked_form` is how a POST route reads its form: the CSRF token is checked before anything
  else happens (:class:`pillars.console.security.Guard`), and the body's size is already limited by
  :class:`pillars.console.security.BodyLimit`.
- :func:`render_error` is the app's one handler for :class:`PillarsError`: any of them, raised by a route
  or by the code it calls, is an HTML page with the error's own ``status`` and its one-line message.
  :class:`ConsoleError` and its subclasses are the console's own (a page or form that cannot be served).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from pillars.components.errors import PillarsError
from pillars.components.settings import Settings
from pillars.components.registry.tracking import configure_tracking, is_local_store
from pillars.console import charts, endpoints, forms, steplog
from pillars.console.runs import RunQueue, RunRecord, RunStore
from pillars.console.security import CSRF_FIELD, SESSION_COOKIE, Guard, LoginLimiter, is_loopback
from pillars.console.settings import ConsoleSettings
from pillars.console.versions import ArtifactCache, format_bytes
from pillars.pipelines.compile import PIPELINES, pipeline_factory
from pillars.pipelines.local.stack import Stack

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class ConsoleError(PillarsError):
    """A page or form the console cannot serve as asked (400 unless a subclass says otherwise)."""


class PageNotFound(ConsoleError, status=HTTPStatus.NOT_FOUND, grpc_code="NOT_FOUND"):
    """No pipeline, run, step or artifact by the name in the address."""


class StaleForm(ConsoleError, status=HTTPStatus.FORBIDDEN, grpc_code="PERMISSION_DENIED"):
    """A POSTed form whose CSRF token is missing or not this browser session's: nothing was done."""


@dataclass
class Console:
    """The console's state for one app: its settings, access rules, run queue, sampler and caches."""

    settings: ConsoleSettings
    guard: Guard
    limiter: LoginLimiter
    policy: forms.InputPolicy
    store: RunStore
    runs: RunQueue
    sampler: endpoints.Sampler
    artifacts: ArtifactCache
    stack: Stack
    tracking_uri: str
    mlflow_ui: str
    templates: Jinja2Templates
    built: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    trained_by: dict[str, str | None] = field(default_factory=dict)
    """Finished console run -> the MLflow run its train step made."""
    endpoint_token: str | None = field(default=None, repr=False)
    """The model servers' bearer token (``endpoint_token_file``), read once at start."""

    @classmethod
    def build(cls, settings: ConsoleSettings, token: str | None, home: Settings) -> Console:
        """The state for ``settings``: points MLflow at the tracking store (creating nothing), makes the
        artifact cache folder; the run queue and sampler start with the app (its lifespan)."""
        tracking_uri = configure_tracking(create=False)
        store = RunStore(home.resolved_home() / "console" / "runs")
        templates = Jinja2Templates(directory=str(TEMPLATES))
        templates.env.globals.update(format_value=charts.format_value, line_chart=charts.line_chart,
                                     format_bytes=format_bytes)
        return cls(
            settings=settings, guard=Guard(token, is_loopback(settings.host)),
            limiter=LoginLimiter(settings.login_attempts, settings.login_window_s),
            policy=forms.InputPolicy(settings.data_root, settings.allow_task_modules),
            store=store, runs=RunQueue(store, env={"MLFLOW_TRACKING_URI": tracking_uri}),
            sampler=endpoints.Sampler(settings.sample_interval_s),
            artifacts=ArtifactCache(Path(tempfile.mkdtemp(prefix="pillars-console-artifacts-"))),
            stack=Stack(home), tracking_uri=tracking_uri,
            mlflow_ui=settings.mlflow_ui_url or ("" if is_local_store(tracking_uri) else tracking_uri),
            templates=templates, endpoint_token=settings.endpoint_token())

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """``template`` rendered with ``context`` and what every page shows (CSRF token, sign-in, MLflow link)."""
        return self.templates.TemplateResponse(request, template, {
            "csrf_field": CSRF_FIELD, "csrf": self.guard.csrf_token(request.state.session),
            "auth": self.guard.auth_required, "mlflow_ui": self.mlflow_ui, **context}, status_code=status)

    def endpoints(self) -> list[endpoints.Endpoint]:
        """The model endpoints to show: the local stack's, the configured URLs, Prometheus's."""
        return endpoints.discover(self.stack.state(), self.settings.endpoint_urls(), self.settings.prometheus_url,
                                  self.endpoint_token)

    def pipeline(self, name: str) -> Any:
        """The pipeline ``name`` as ``pillars run`` builds it (built once: building compiles it).

        Raises:
            PageNotFound: no pipeline has that name.
        """
        if name not in PIPELINES:
            raise PageNotFound(f"no pipeline named {name!r}")
        if name not in self.built:
            self.built[name] = pipeline_factory(name)()
        return self.built[name]

    def record(self, run_id: str) -> RunRecord:
        """The console run ``run_id``.

        Raises:
            PageNotFound: there is no such run.
        """
        try:
            return self.store.get(run_id)
        except KeyError:
            raise PageNotFound(f"no run {run_id!r}") from None

    def progress(self, record: RunRecord) -> steplog.RunProgress:
        """A local run's steps as its log shows them so far (none for a run on KFP)."""
        if record.backend != "local":
            return steplog.RunProgress([])
        if record.pipeline not in self.planned:
            self.planned[record.pipeline] = steplog.planned_steps(self.pipeline(record.pipeline))
        progress = steplog.parse_log(self.store.log(record.id), self.planned[record.pipeline])
        return steplog.finish(progress, record.status == "failed") if record.done else progress


def console(request: Request) -> Console:
    """The dependency every route uses to reach its app's :class:`Console`."""
    return request.app.state.console


ConsoleDep = Annotated[Console, Depends(console)]


async def checked_form(request: Request) -> dict[str, str]:
    """The POSTed form (its size limited by :class:`BodyLimit`), after its CSRF token was checked.

    Raises:
        StaleForm: the token is missing or was not issued to this browser session.
    """
    form = await request.form(max_files=0, max_fields=200)
    if not console(request).guard.check_csrf(request.cookies.get(SESSION_COOKIE), form.get(CSRF_FIELD)):
        raise StaleForm("the form's CSRF token is missing or stale: reload the page and submit again")
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def render_error(request: Request, error: PillarsError) -> Response:
    """The one handler for every user-facing error: a page with the error's status and one-line message, or,
    for a ``.json`` route (what scripts and the live page read), ``{"error": message}`` with that status."""
    status = HTTPStatus(error.status)
    if request.url.path.endswith(".json"):
        return JSONResponse({"error": str(error)}, status_code=status)
    title = "Not found" if status == HTTPStatus.NOT_FOUND else "Error"
    return console(request).page(request, "error.html", status, title=title, message=str(error))
