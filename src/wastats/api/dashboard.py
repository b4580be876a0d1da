"""The dashboard at /dashboard: a sign-in form, and one server-rendered page whose chart and
table are filled in by `web/static/dashboard.js` from the /v1 API (docs/api-v1.md).

Security choices, in one place:
- The session is an ordinary access token (issued by `auth.issue_token`, so the lockout
  of the token endpoint applies to the form too) in an HttpOnly, SameSite=Strict cookie, Secure
  when the request came over https. Logout revokes the token, not only the cookie.
- Every POST carries a double-submit CSRF token: a random value in the `wastats_csrf` cookie
  (SameSite=Strict, HttpOnly: only the server needs to read it) and in a hidden form field,
  compared in constant time. `Sec-Fetch-Site` is checked too, so a sibling subdomain that could
  plant a cookie still cannot post.
- Every HTML page is sent with a Content-Security-Policy that allows only 'self': the templates
  have no inline script or style, and all assets are served from the package (works offline).
- Pages are Jinja2 templates with autoescape on for all of them: nothing is escaped by hand, so
  nothing can be forgotten. Forms are parsed by Starlette with python-multipart.

Adding a page: a template extending `account.html` (signed in) or `base.html`, and a route that
gets the account with `session_account` (else `to_sign_in`), answers with `account_page`, and
reads any POST with `checked_form` (else `forbidden`).
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, available_timezones

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import NoMatchFound
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from wastats import __version__
from wastats.api.context import SESSION_COOKIE, AppContext, client_ip, context_of
from wastats.domain import auth, history
from wastats.domain.accounts import load_zone
from wastats.domain.errors import InvalidInput
from wastats.store.accounts import AccountRow

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATE_DIR = WEB_DIR / "templates"

CSRF_COOKIE = "wastats_csrf"
CSRF_FIELD = "csrf_token"
_CSRF_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,64}")
_MONTH_SHAPE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
# A login form has three short fields; anything much bigger is not one.
_MAX_FORM_BYTES = 4096
_MAX_FORM_FIELDS = 10

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard's routes and its static assets on `app`."""
    app.mount("/dashboard/static", HardenedStatic(directory=STATIC_DIR), name="dashboard-static")
    app.include_router(router)


class HardenedStatic(StaticFiles):
    """The package's assets, with the same hardening headers as the pages."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


# --- pages ----------------------------------------------------------------------------------


@cache
def templates() -> Jinja2Templates:
    """The dashboard's Jinja2 templates (`web/templates`), shared by every app in the process.

    Built on first use, not at import (see wastats.app). Autoescape is on for every template
    whatever its name, so a value is escaped for the HTML it lands in without anyone having to
    remember; StrictUndefined turns a misspelt variable into an error in the tests instead of an
    empty string on the page. New pages extend `base.html` (or `account.html` when signed in)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env, context_processors=[_common_context])


def _common_context(request: Request) -> dict[str, Any]:
    """What every template may use: where the dashboard and its assets are, the version."""
    base = base_path(request)
    return {
        "base": base,
        "static": base + "/static",
        "version": __version__,
        "csrf_field": CSRF_FIELD,
    }


@cache
def _zones() -> list[str]:
    return [
        z
        for z in sorted(available_timezones())
        # Suggest Area/City names only: the legacy aliases ("Israel", "EST5EDT", "Factory",
        # "localtime") clutter the list; any name /v1 accepts can still be typed.
        if "/" in z or z == "UTC"
    ]


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """`template` rendered with `context`, with the hardening headers every page carries."""
    response = templates().TemplateResponse(
        request, template, context, status_code=status_code, headers=SECURITY_HEADERS
    )
    # Pages show account data or carry a CSRF token: never keep them in a shared cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def account_page(request: Request, account: AccountRow, template: str, **context: Any) -> Response:
    """A page of a signed-in account (a template extending `account.html`), with the CSRF token
    its sign-out form (and any form of its own: `{{ csrf_field }}` / `{{ csrf }}`) needs."""
    csrf = _csrf_token(request)
    response = page(request, template, account=account, csrf=csrf, **context)
    _set_csrf_cookie(request, response, csrf)
    return response


def base_path(request: Request) -> str:
    """The dashboard's URL path, under the root path the app is served at."""
    return str(request.scope.get("root_path", "")) + "/dashboard"


# --- cookies and CSRF -----------------------------------------------------------------------


def _secure(request: Request) -> bool:
    # ProxyHeadersMiddleware has already applied X-Forwarded-Proto from a trusted proxy.
    return request.url.scheme == "https"


def _csrf_token(request: Request) -> str:
    """The browser's CSRF token if it has a well-formed one, else a new one."""
    existing = request.cookies.get(CSRF_COOKIE, "")
    return existing if _CSRF_SHAPE.fullmatch(existing) else secrets.token_urlsafe(32)


def _set_csrf_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=base_path(request),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def _csrf_ok(request: Request, form: dict[str, str]) -> bool:
    # A sibling subdomain ("same-site") could have planted the cookie; only our own pages, or
    # browsers too old to say, may post.
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    cookie = request.cookies.get(CSRF_COOKIE, "")
    field = form.get(CSRF_FIELD, "")
    if not _CSRF_SHAPE.fullmatch(cookie) or not field:
        return False
    return hmac.compare_digest(cookie.encode(), field.encode())


def forbidden(request: Request) -> HTMLResponse:
    return page(
        request,
        "message.html",
        status_code=403,
        heading="Request refused",
        message="This form was not sent from a current wastats page (its security token is "
        "missing or does not match). Nothing was changed. Open the sign-in page and try again.",
        link=base_path(request) + "/login",
        link_text="Go to sign in",
    )


async def form_fields(request: Request) -> dict[str, str] | None:
    """The posted form's fields (the first value of each), or None if the body is not a small
    form. Parsed by Starlette with python-multipart; any other content type gives an empty form,
    which then fails the CSRF check."""
    if len(await request.body()) > _MAX_FORM_BYTES:
        return None
    try:
        # Starlette re-reads the body cached above. No file fields: none of our forms has one.
        form = await request.form(max_files=0, max_fields=_MAX_FORM_FIELDS)
    except HTTPException:  # malformed, or too many fields
        return None
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(key, value)
    return fields


# --- sessions -------------------------------------------------------------------------------


async def session_account(request: Request) -> AccountRow | None:
    """The account signed in with this request's session cookie, if the token is live."""
    token = request.cookies.get(SESSION_COOKIE, "").strip()
    if not token:
        return None
    ctx = context_of(request)
    return await ctx.run(ctx.authenticate, token)


def to_sign_in(request: Request) -> Response:
    """Where a page that needs a session sends a browser without one."""
    redirect = RedirectResponse(base_path(request) + "/login", status_code=303)
    if SESSION_COOKIE in request.cookies:
        _clear_session(request, redirect)  # expired or revoked: drop it
    return redirect


async def checked_form(request: Request) -> dict[str, str] | None:
    """The posted form if it passed the CSRF check, else None (answer `forbidden`). Every POST
    of the dashboard goes through this."""
    form = await form_fields(request)
    return form if form is not None and _csrf_ok(request, form) else None


def _revoke(ctx: AppContext, token: str) -> None:
    with ctx.db.write() as conn:
        auth.revoke_token(conn, token)


def _clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )


# --- routes ---------------------------------------------------------------------------------


def _login_page(
    request: Request, *, csrf: str, error: str = "", client_id: str = "", status_code: int = 200
) -> HTMLResponse:
    response = page(
        request,
        "login.html",
        status_code=status_code,
        csrf=csrf,
        error=error,
        client_id=client_id,
    )
    _set_csrf_cookie(request, response, csrf)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    if await session_account(request) is not None:
        return RedirectResponse(base_path(request), status_code=303)
    return _login_page(request, csrf=_csrf_token(request))


@router.post("/login")
async def login(request: Request) -> Response:
    form = await checked_form(request)
    if form is None:
        return forbidden(request)
    csrf = _csrf_token(request)
    client_id = form.get("client_id", "").strip()
    client_secret = form.get("client_secret", "")
    if not client_id or not client_secret:
        # An incomplete form is not a login attempt: it does not count towards the lockout.
        return _login_page(
            request,
            csrf=csrf,
            error="Enter both the client id and the client secret.",
            client_id=client_id,
            status_code=400,
        )
    ctx = context_of(request)
    result = await ctx.run(ctx.issue_token, client_id, client_secret, client_ip(request))
    if isinstance(result, auth.LockedOut):
        page = _login_page(
            request,
            csrf=csrf,
            error=result.message[0].upper() + result.message[1:] + ".",
            client_id=client_id,
            status_code=429,
        )
        page.headers["Retry-After"] = str(result.seconds_left)
        return page
    if result is auth.TokenRefusal.BAD_CREDENTIALS:
        return _login_page(
            request,
            csrf=csrf,
            error="The client id or secret is wrong.",
            client_id=client_id,
            status_code=401,
        )
    assert isinstance(result, auth.IssuedToken)
    old = request.cookies.get(SESSION_COOKIE, "").strip()
    if old:
        # Signing in again replaces the session: the previous token should not linger.
        await ctx.run(_revoke, ctx, old)
    response = RedirectResponse(base_path(request), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        result.access_token,
        max_age=max(0, result.expires_at - ctx.now()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    # A fresh CSRF token for the signed-in session, so one seen before sign-in is worthless.
    _set_csrf_cookie(request, response, secrets.token_urlsafe(32))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await checked_form(request)
    if form is None:
        return forbidden(request)
    token = request.cookies.get(SESSION_COOKIE, "").strip()
    if token:
        ctx = context_of(request)
        await ctx.run(_revoke, ctx, token)
    response = RedirectResponse(base_path(request) + "/login", status_code=303)
    _clear_session(request, response)
    return response


@router.get("")
async def dashboard(request: Request) -> Response:
    account = await session_account(request)
    if account is None:
        return to_sign_in(request)
    ctx = context_of(request)
    now = ctx.now()
    first, last = _default_range(now, account.timezone)
    # The page's own URL keeps the picker's state (the script writes it with replaceState),
    # so a reload or a bookmark shows the same range.
    chosen_from = _month_param(request, "from") or first
    chosen_to = _month_param(request, "to") or last
    tz = request.query_params.get("tz", "").strip()[:64] or account.timezone
    root = str(request.scope.get("root_path", ""))
    csv_query = urlencode(
        {"format": "csv", "granularity": "month", "from": chosen_from, "to": chosen_to, "tz": tz}
    )
    linked = await ctx.run(_meta_linked, ctx, account)
    return account_page(
        request,
        account,
        "dashboard.html",
        api=root + "/v1",
        docs=_docs_link(request),
        now=now,
        from_month=chosen_from,
        to_month=chosen_to,
        tz=tz,
        zones=_zones(),
        csv=root + "/v1/stats?" + csv_query,
        meta_linked=linked,
    )


def _meta_linked(ctx: AppContext, account: AccountRow) -> bool:
    with ctx.db.read() as conn:
        return history.account_linked(conn, account.id)


def _docs_link(request: Request) -> str | None:
    """The API reference's path, or None when it is switched off (WASTATS_DOCS=off)."""
    try:
        path = request.app.url_path_for("api-docs")
    except NoMatchFound:
        return None
    return str(request.scope.get("root_path", "")) + str(path)


def _month_param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "")
    return value if _MONTH_SHAPE.fullmatch(value) else None


def _default_range(now: int, timezone: str) -> tuple[str, str]:
    """The last twelve months up to the current one in the account's zone (as /v1 defaults)."""
    try:
        zone = load_zone(timezone)
    except InvalidInput:
        zone = ZoneInfo("UTC")
    today = datetime.fromtimestamp(now, zone)
    index = today.year * 12 + today.month - 1 - 11
    start = f"{index // 12:04d}-{index % 12 + 1:02d}"
    return start, f"{today.year:04d}-{today.month:02d}"
