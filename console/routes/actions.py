"""The actions that change the registry: promote a version to champion, roll the champion back.

Each is a confirmation page (GET) and a CSRF-checked form (POST). The form carries the champion the
person saw (``expected_champion``); the move is a compare-and-set in :mod:`pillars.console.versions`,
so if the champion moved meanwhile nothing changes and the confirmation page comes back 409 with the
registry's message. Done, it redirects to the version now champion with ``?done=...``. The reason
typed (``why``, at most 500 characters) is recorded in the champion's history.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pillars.components import registry
from pillars.components.errors import RegistryError
from pillars.console.routes.context import Console, ConsoleDep, checked_form
from pillars.console.versions import promote_version, rollback, version_detail

router = APIRouter()

WHY_CHARS = 500
"""The longest reason recorded for a move."""


@router.get("/models/{name}/versions/{version}/promote", response_class=HTMLResponse)
def confirm_promote(request: Request, c: ConsoleDep, name: str, version: str) -> Response:
    """Asks to confirm making ``version`` the champion."""
    return _promote_page(request, c, name, version)


@router.post("/models/{name}/versions/{version}/promote")
async def do_promote(request: Request, c: ConsoleDep, name: str, version: str) -> Response:
    """Makes ``version`` the champion if the champion is still the one the person saw."""
    def promote(expected: str | None, why: str) -> str:
        promote_version(name, version, expected, why)
        return version

    return await _move(request, c, name, version, promote, _promote_page, "promoted in the console", "promoted")


@router.get("/models/{name}/versions/{version}/rollback", response_class=HTMLResponse)
def confirm_rollback(request: Request, c: ConsoleDep, name: str, version: str) -> Response:
    """Asks to confirm moving the champion back to the version it replaced."""
    return _rollback_page(request, c, name, version)


@router.post("/models/{name}/versions/{version}/rollback")
async def do_rollback(request: Request, c: ConsoleDep, name: str, version: str) -> Response:
    """Moves the champion back if it is still the one the person saw."""
    def roll_back(expected: str | None, why: str) -> str:
        return str(rollback(name, expected, why).to_version)

    return await _move(request, c, name, version, roll_back, _rollback_page, "rolled back in the console",
                       "rolled-back")


async def _move(request: Request, c: Console, name: str, version: str, move: Callable[[str | None, str], str],
                page: Callable[..., Response], default_why: str, done: str) -> Response:
    """Reads the CSRF-checked form, makes ``move(expected_champion, why)`` (a compare-and-set that returns the
    version now champion) and redirects to that version with ``?done=``; the confirmation ``page`` again,
    409 with the registry's message, when the champion moved meanwhile."""
    form = await checked_form(request)
    why = form.get("why", "").strip()[:WHY_CHARS] or default_why
    try:
        champion = move(form.get("expected_champion") or None, why)
    except RegistryError as e:
        return page(request, c, name, version, 409, str(e))
    return RedirectResponse(f"/models/{quote(name)}/versions/{quote(champion)}?done={done}", status_code=303)


def _promote_page(request: Request, c: Console, name: str, version: str, status: int = 200,
                  error: str | None = None) -> Response:
    return c.page(request, "confirm.html", status, title=f"Promote {name} v{version}", nav="Models",
                  v=version_detail(name, version), action="promote", target=version, error=error)


def _rollback_page(request: Request, c: Console, name: str, version: str, status: int = 200,
                   error: str | None = None) -> Response:
    detail = version_detail(name, version)
    moves = registry.history(name, registry.CHAMPION)
    target = moves[-1].from_version if moves else None  # the version the last move replaced
    return c.page(request, "confirm.html", status, title=f"Roll back {name}", nav="Models",
                  v=detail, action="rollback", target=target, error=error)
