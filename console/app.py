"""The console's web app: server-rendered pages (Jinja2) over the same code paths as the CLI.

:func:`create_app` builds the FastAPI app for given settings; nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from pillars.components import registry
from pillars.components.errors import ConfigError, PillarsError, RegistryError
from pillars.components.settings import Settings
from pillars.components.tracking import configure_tracking, is_local_store
from pillars.console import charts, endpoints, forms, steplog
from pillars.console.runs import RunQueue, RunStore, kfp_status, submit_to_kfp
from pillars.console.security import (AUTH_COOKIE, CSRF_FIELD, SESSION_COOKIE, BodyLimit, Guard, LoginLimiter,
                                      is_loopback)
from pillars.console.settings import ConsoleSettings
from pillars.console.versions import (ArtifactCache, compare, format_bytes, promote_version, rollback, split_variants,
                                      version_detail)
from pillars.pipelines.compile import PIPELINES, pipeline_factory
from pillars.pipelines.stack import Stack

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
PUBLIC_PATHS = ("/login", "/static/", "/healthz")


class ConsoleError(PillarsError):
    """A page cannot be shown; carries its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def create_app(settings: ConsoleSettings, token: str | None = None, home: Settings | None = None) -> FastAPI:
    """The console for ``settings``; ``token`` (from the token file) is required of every request when set."""
    home = home or Settings()
    tracking_uri = configure_tracking(create=False)
    guard = Guard(token, is_loopback(settings.host))
    limiter = LoginLimiter(settings.login_attempts, settings.login_window_s)
    policy = forms.InputPolicy(settings.data_root, settings.allow_task_modules)
    store = RunStore(home.resolved_home() / "console" / "runs")
    runs = RunQueue(store, env={"MLFLOW_TRACKING_URI": tracking_uri})
    sampler = endpoints.Sampler(settings.sample_interval_s)
    artifacts = ArtifactCache(Path(tempfile.mkdtemp(prefix="pillars-console-artifacts-")))
    stack = Stack(home)
    mlflow_ui = settings.mlflow_ui_url or ("" if is_local_store(tracking_uri) else tracking_uri)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(format_value=charts.format_value, line_chart=charts.line_chart,
                                 format_bytes=format_bytes)
    planned: dict[str, list[tuple[str, str]]] = {}
    built: dict[str, Any] = {}
    trained_by: dict[str, str | None] = {}  # finished run -> the MLflow run its train step made

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.root.mkdir(parents=True, exist_ok=True)
        runs.start()
        sampler.watch(_endpoints())
        yield
        sampler.stop()
        runs.stop()

    app = FastAPI(title="Pillars console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.store, app.state.runs, app.state.sampler, app.state.limiter = store, runs, sampler, limiter
    # Innermost of the middleware (added first): counts the body bytes every route reads.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    def _endpoints() -> list[endpoints.Endpoint]:
        return endpoints.discover(stack.state(), settings.endpoint_urls(), settings.prometheus_url)

    def _pipeline(name: str) -> Any:
        """The pipeline ``name`` as ``pillars run`` builds it (built once: building compiles it)."""
        if name not in PIPELINES:
            raise ConsoleError(f"no pipeline named {name!r}", 404)
        if name not in built:
            built[name] = pipeline_factory(name)()
        return built[name]

    def _planned(name: str) -> list[tuple[str, str]]:
        if name not in planned:
            planned[name] = steplog.planned_steps(_pipeline(name))
        return planned[name]

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = request.state.session
        return templates.TemplateResponse(request, template, {
            "csrf_field": CSRF_FIELD, "csrf": guard.csrf_token(session), "auth": guard.auth_required,
            "mlflow_ui": mlflow_ui, **context}, status_code=status)

    async def checked_form(request: Request) -> dict[str, str]:
        """The POSTed form (its size is limited by :class:`BodyLimit`), after its CSRF token was checked."""
        form = await request.form(max_files=0, max_fields=200)
        if not guard.check_csrf(request.cookies.get(SESSION_COOKIE), form.get(CSRF_FIELD)):
            raise ConsoleError("the form's CSRF token is missing or stale: reload the page and submit again", 403)
        return {k: v for k, v in form.items() if isinstance(v, str)}

    @app.middleware("http")
    async def guard_requests(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if guard.loopback and not guard.auth_required and not is_loopback(host):
            return PlainTextResponse(f"host {host!r} is not served here", status_code=421)
        session = request.cookies.get(SESSION_COOKIE)
        fresh = session is None or len(session) > 64
        request.state.session = guard.new_session() if fresh else session
        path = request.url.path
        address = request.client.host if request.client else None
        authorization = request.headers.get("authorization")
        attempt = guard.auth_required and (authorization is not None or (path == "/login" and request.method == "POST"))
        if attempt and (wait := limiter.retry_after(address)):
            response: Response = PlainTextResponse(
                f"too many wrong tokens from your address: try again in {wait} s", status_code=429,
                headers={"Retry-After": str(wait)})
        elif not path.startswith(PUBLIC_PATHS) and not guard.authenticated(authorization,
                                                                           request.cookies.get(AUTH_COOKIE)):
            if authorization is not None:
                limiter.failed(address)
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                response = RedirectResponse(f"/login?next={quote(path)}", status_code=303)
            else:
                response = PlainTextResponse("authentication required", status_code=401,
                                             headers={"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        if fresh:
            response.set_cookie(SESSION_COOKIE, request.state.session, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(PillarsError)
    async def pillars_error(request: Request, e: PillarsError) -> Response:
        """One page for every user-facing error: its status, its one-line message."""
        status = e.status if isinstance(e, ConsoleError) else 404 if isinstance(e, RegistryError) else 400
        return page(request, "error.html", status, title="Not found" if status == 404 else "Error", message=str(e))

    # --- access ---------------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", title="Sign in", next=_local_path(next), error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await checked_form(request)
        target = _local_path(form.get("next", "/"))
        address = request.client.host if request.client else None
        if not guard.token_matches(form.get("token", "").strip()):
            if guard.auth_required:
                limiter.failed(address)
            return page(request, "login.html", 401, title="Sign in", next=target, error="wrong token")
        limiter.succeeded(address)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(AUTH_COOKIE, guard.auth_cookie(), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/")
    def index() -> RedirectResponse:
        return RedirectResponse("/pipelines", status_code=303)

    # --- pipelines ------------------------------------------------------------------------------

    @app.get("/pipelines", response_class=HTMLResponse)
    def pipelines(request: Request) -> Response:
        rows = [(name, _pipeline(name).component_spec.description or "") for name in PIPELINES]
        return page(request, "pipelines.html", title="Pipelines", nav="Pipelines", rows=rows,
                    target=settings.kfp_host or "this machine (kfp.local)")

    @app.get("/pipelines/{name}", response_class=HTMLResponse)
    def pipeline_form(request: Request, name: str) -> Response:
        pipeline = _pipeline(name)
        return page(request, "pipeline.html", title=f"Pipeline {name}", nav="Pipelines", name=name,
                    description=pipeline.component_spec.description or "", fields=forms.fields(pipeline),
                    values={}, errors={}, form_error=forms.FORM_ERROR, target=settings.kfp_host)

    @app.post("/pipelines/{name}")
    async def submit(request: Request, name: str) -> Response:
        form = await checked_form(request)
        pipeline = _pipeline(name)
        arguments, errors = forms.check_form(pipeline, form, policy)
        if not errors:
            try:
                return _start(name, arguments)
            except ConfigError as e:
                errors = {forms.FORM_ERROR: str(e)}
        # The form again, with each error at its field: a page like any other (200, as server-rendered
        # forms answer), so the browser logs no failed load; nothing was queued.
        return page(request, "pipeline.html", title=f"Pipeline {name}", nav="Pipelines", name=name,
                    description=pipeline.component_spec.description or "", fields=forms.fields(pipeline),
                    values=form, errors=errors, form_error=forms.FORM_ERROR, target=settings.kfp_host)

    def _start(name: str, arguments: dict[str, Any]) -> Response:
        if settings.kfp_host:
            record = store.create(name, arguments, backend="kfp")
            record.kfp_run_id = submit_to_kfp(settings.kfp_host, settings.kfp_namespace, name, arguments,
                                              run_name=f"{name}-{record.id}")
            record.status = "submitted"
            store.save(record)
        else:
            record = store.create(name, {**arguments, "tracking_uri": tracking_uri})
            runs.submit(record)
        return RedirectResponse(f"/runs/{record.id}", status_code=303)

    # --- runs -----------------------------------------------------------------------------------

    def _record(run_id: str) -> Any:
        try:
            return store.get(run_id)
        except KeyError:
            raise ConsoleError(f"no run {run_id!r}", 404) from None

    @app.get("/runs", response_class=HTMLResponse)
    def run_list(request: Request) -> Response:
        return page(request, "runs.html", title="Runs", nav="Runs", runs=store.list(), waiting=runs.waiting())

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> Response:
        record = _record(run_id)
        return page(request, "run.html", title=f"Run {run_id}", nav="Runs", run=record,
                    progress=_progress(record), result=_result(record))

    @app.get("/runs/{run_id}/live", response_class=HTMLResponse)
    def run_live(request: Request, run_id: str) -> Response:
        record = _record(run_id)
        return page(request, "run_fragment.html", run=record, progress=_progress(record), result=_result(record))

    @app.get("/runs/{run_id}/progress.json")
    def run_progress(run_id: str) -> JSONResponse:
        record = _record(run_id)
        progress = _progress(record)
        body = progress.to_dict()
        for step, data in zip(progress.steps, body["steps"], strict=True):
            data["log_tail"] = step.log[-4000:]
        return JSONResponse({"status": record.status, "done": record.done, "seconds": record.seconds,
                             "error": record.error, **body, "result": _result(record)})

    @app.get("/runs/{run_id}/steps/{step}/log")
    def step_log(run_id: str, step: str) -> PlainTextResponse:
        record = _record(run_id)
        found = _progress(record).step(step)
        if found is None:
            raise ConsoleError(f"run {run_id} has no step {step!r}", 404)
        return PlainTextResponse(found.log or "(no output)")

    def _progress(record: Any) -> steplog.RunProgress:
        if record.backend != "local":
            return steplog.RunProgress([])
        progress = steplog.parse_log(store.log(record.id), _planned(record.pipeline))
        return steplog.finish(progress, record.status == "failed") if record.done else progress

    def _result(record: Any) -> dict[str, Any]:
        """What a finished run produced: MLflow run, registered version, the gate's decision."""
        if record.backend == "kfp":
            state = kfp_status(settings.kfp_host, settings.kfp_namespace, record.kfp_run_id) if record.kfp_run_id else None
            return {"kfp_state": state}
        progress = _progress(record)
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

    # --- models ---------------------------------------------------------------------------------

    @app.get("/models", response_class=HTMLResponse)
    def model_list(request: Request) -> Response:
        return page(request, "models.html", title="Models", nav="Models", models=registry.list_models())

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_page(request: Request, name: str, a: str = "", b: str = "") -> Response:
        versions = registry.list_versions(name)
        comparison = None
        if a and b:
            comparison = (a, b, *compare(name, a, b))
        trained, variants = split_variants(versions)
        keys = sorted({k for v in trained for k in v.metrics})
        return page(request, "model.html", title=f"Model {name}", nav="Models", name=name, versions=versions,
                    trained=trained, variants=variants, metric_keys=keys, comparison=comparison, history=registry.history(name))

    @app.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
    def version_page(request: Request, name: str, version: str, done: str = "") -> Response:
        detail = version_detail(name, version)
        return page(request, "version.html", title=f"{name} v{version}", nav="Models", v=detail,
                    done=done, console_run=_console_run(detail, store.list()))

    def _console_run(detail: Any, records: list[Any]) -> str | None:
        """The console run that trained ``detail`` (matched on the MLflow run id its train step output)."""
        for record in records:
            if record.backend == "local" and record.done:
                if record.id not in trained_by:
                    train = _progress(record).step("train")
                    trained_by[record.id] = train.outputs.get("Output") if train else None
                if trained_by[record.id] == detail.run_id:
                    return record.id
        return None

    @app.get("/models/{name}/versions/{version}/promote", response_class=HTMLResponse)
    def confirm_promote(request: Request, name: str, version: str) -> Response:
        detail = version_detail(name, version)
        return page(request, "confirm.html", title=f"Promote {name} v{version}", nav="Models", v=detail,
                    action="promote", target=version, error=None)

    @app.post("/models/{name}/versions/{version}/promote")
    async def do_promote(request: Request, name: str, version: str) -> Response:
        form = await checked_form(request)
        why = form.get("why", "").strip()[:500] or "promoted in the console"
        try:
            promote_version(name, version, form.get("expected_champion") or None, why)
        except RegistryError as e:
            return page(request, "confirm.html", 409, title=f"Promote {name} v{version}", nav="Models",
                        v=version_detail(name, version), action="promote", target=version, error=str(e))
        return RedirectResponse(f"/models/{quote(name)}/versions/{quote(version)}?done=promoted", status_code=303)

    @app.get("/models/{name}/versions/{version}/rollback", response_class=HTMLResponse)
    def confirm_rollback(request: Request, name: str, version: str) -> Response:
        detail = version_detail(name, version)
        return page(request, "confirm.html", title=f"Roll back {name}", nav="Models", v=detail,
                    action="rollback", target=_rollback_target(name), error=None)

    @app.post("/models/{name}/versions/{version}/rollback")
    async def do_rollback(request: Request, name: str, version: str) -> Response:
        form = await checked_form(request)
        why = form.get("why", "").strip()[:500] or "rolled back in the console"
        try:
            event = rollback(name, form.get("expected_champion") or None, why)
        except RegistryError as e:
            return page(request, "confirm.html", 409, title=f"Roll back {name}", nav="Models",
                        v=version_detail(name, version), action="rollback", target=_rollback_target(name),
                        error=str(e))
        return RedirectResponse(f"/models/{quote(name)}/versions/{quote(str(event.to_version))}?done=rolled-back",
                                status_code=303)

    def _rollback_target(name: str) -> str | None:
        moves = registry.history(name, registry.CHAMPION)
        return moves[-1].from_version if moves else None

    @app.get("/artifacts/{run_id}/{path:path}")
    def artifact(run_id: str, path: str) -> Response:
        try:
            local = artifacts.get(run_id, path)
        except KeyError:
            raise ConsoleError(f"run {run_id} has no artifact {path!r} the console shows", 404) from None
        headers = {"Cache-Control": "private, max-age=3600"}
        if path.endswith(".html"):  # the evaluation report: shown, never allowed to run anything
            headers["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        return FileResponse(local, headers=headers)

    # --- endpoints ------------------------------------------------------------------------------

    @app.get("/endpoints", response_class=HTMLResponse)
    def endpoint_page(request: Request) -> Response:
        found = _endpoints()
        sampler.watch(found)
        return page(request, "endpoints.html", title="Endpoints", nav="Endpoints",
                    views=[endpoints.view(e, sampler) for e in found])

    @app.get("/endpoints/fragment", response_class=HTMLResponse)
    def endpoint_fragment(request: Request) -> Response:
        return page(request, "endpoints_fragment.html", views=[endpoints.view(e, sampler) for e in _endpoints()])

    return app


def _local_path(target: str) -> str:
    """``target`` when it is a path on this site, else ``/`` (no open redirect after login)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
