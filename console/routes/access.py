"""Who may reach the console: the guard every request passes, sign-in, and the health check.

- :func:`guard_requests` (HTTP middleware) runs before every route, in this order: a request to a
  loopback-only console under another ``Host`` is refused 421 (no DNS rebinding); a client past its
  wrong-token allowance is refused 429 with ``Retry-After``; a request without a valid token or login
  cookie, outside :data:`PUBLIC_PATHS`, is redirected to ``/login`` (a browser's GET) or refused 401.
  Every answer gets a session cookie when the browser had none, and the security headers (:data:`CSP`,
  ``nosniff``, ``no-referrer``, ``no-store`` unless the route set its own caching).
- ``/login`` checks the form's CSRF token, then the token; a wrong one counts against the client's
  address (:class:`pillars.console.security.LoginLimiter`). After sign-in it redirects only to a path
  on this site (:func:`local_path`: no open redirect).
- ``/healthz`` answers ``ok`` with no token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from pillars.console.routes.context import ConsoleDep, checked_form, console
from pillars.console.security import AUTH_COOKIE, SESSION_COOKIE, is_loopback

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
PUBLIC_PATHS = ("/login", "/static/", "/healthz")

router = APIRouter()


async def guard_requests(request: Request, call_next: Any) -> Response:
    """Host check, rate limit and authentication before the route; session cookie and headers after."""
    state = console(request)
    guard, limiter = state.guard, state.limiter
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


@router.get("/healthz")
def healthz() -> PlainTextResponse:
    """``ok``: the console process answers (no token needed)."""
    return PlainTextResponse("ok")


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, c: ConsoleDep, next: str = "/") -> Response:
    """The sign-in form; ``next`` is where it goes after, if that is a path on this site."""
    return c.page(request, "login.html", title="Sign in", next=local_path(next), error=None)


@router.post("/login")
async def login(request: Request, c: ConsoleDep) -> Response:
    """Sign in with the token: the auth cookie and a redirect, or the form again (401) with the error."""
    form = await checked_form(request)
    target = local_path(form.get("next", "/"))
    address = request.client.host if request.client else None
    if not c.guard.token_matches(form.get("token", "").strip()):
        if c.guard.auth_required:
            c.limiter.failed(address)
        return c.page(request, "login.html", 401, title="Sign in", next=target, error="wrong token")
    c.limiter.succeeded(address)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(AUTH_COOKIE, c.guard.auth_cookie(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.get("/")
def index() -> RedirectResponse:
    """The console opens on its pipelines."""
    return RedirectResponse("/pipelines", status_code=303)


def local_path(target: str) -> str:
    """``target`` when it is a path on this site, else ``/`` (no open redirect after login)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
