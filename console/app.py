"""The console's web app: server-rendered pages (Jinja2) over the same code paths as the CLI.

:func:`create_app` assembles the FastAPI app for given settings: the state every route reads
(:class:`~pillars.console.routes.context.Console`), the middleware, the routers of
:mod:`pillars.console.routes`, the static files and the one handler that renders any
:class:`~pillars.components.errors.PillarsError` with its own status. Nothing happens at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from pillars.components.errors import PillarsError
from pillars.components.settings import Settings
from pillars.console.routes import ROUTERS
from pillars.console.routes.access import guard_requests
from pillars.console.routes.context import Console, ConsoleError, render_error
from pillars.console.security import BodyLimit
from pillars.console.settings import ConsoleSettings

__all__ = ["ConsoleError", "create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(settings: ConsoleSettings, token: str | None = None, home: Settings | None = None) -> FastAPI:
    """The console for ``settings``; ``token`` (from the token file) is required of every request when set."""
    state = Console.build(settings, token, home or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.store.root.mkdir(parents=True, exist_ok=True)
        state.runs.start()
        state.sampler.watch(state.endpoints())
        yield
        state.sampler.stop()
        state.runs.stop()

    app = FastAPI(title="Pillars console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = state
    app.state.store, app.state.runs, app.state.sampler, app.state.limiter = (state.store, state.runs,
                                                                              state.sampler, state.limiter)
    # Innermost of the middleware (added first): counts the body bytes every route reads.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.middleware("http")(guard_requests)
    app.add_exception_handler(PillarsError, render_error)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app
