"""The model endpoints the console watches: their health, request rates and latencies.

Endpoints are found afresh on every page (:meth:`Console.endpoints`: the local stack's, the configured
URLs, Prometheus's); showing the page also tells the sampler to watch them, so their charts fill in
while the page refreshes its fragment.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from pillars.console.endpoints import view
from pillars.console.routes.context import ConsoleDep

router = APIRouter()


@router.get("/endpoints", response_class=HTMLResponse)
def endpoint_page(request: Request, c: ConsoleDep) -> Response:
    """Every endpoint found, each with its latest samples; they are watched from now on."""
    found = c.endpoints()
    c.sampler.watch(found)
    return c.page(request, "endpoints.html", title="Endpoints", nav="Endpoints",
                  views=[view(e, c.sampler) for e in found])


@router.get("/endpoints/fragment", response_class=HTMLResponse)
def endpoint_fragment(request: Request, c: ConsoleDep) -> Response:
    """The part of the endpoints page that refreshes."""
    return c.page(request, "endpoints_fragment.html", views=[view(e, c.sampler) for e in c.endpoints()])
