"""The dashboard's page of Meta's record (/dashboard/reconciliation): observed against reported
per month, number and category, verdicts highlighted, coverage per number (docs/meta-record.md).

Server-rendered from a Jinja2 template (autoescaped) with no script, under the dashboard's
session, security headers and Content-Security-Policy; it reuses the dashboard's session check
rather than keeping its own."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, Template, select_autoescape

from wastats import __version__
from wastats.api.context import AppContext, context_of
from wastats.api.dashboard import (
    SECURITY_HEADERS,
    TEMPLATE_DIR,
    _base,
    _default_range,
    _month_param,
    _session_account,
)
from wastats.domain import reconciliation
from wastats.domain.reporting import ParameterError
from wastats.store.accounts import AccountRow

router = APIRouter(prefix="/dashboard", include_in_schema=False)


@cache
def _template() -> Template:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR / "meta"),
        autoescape=select_autoescape(["html"]),
        auto_reload=False,
    )
    return env.get_template("reconciliation.html")


def _answer(
    ctx: AppContext, account: AccountRow, first: str, last: str
) -> reconciliation.Answer | str:
    with ctx.db.read() as conn:
        try:
            return reconciliation.answer(
                conn, account, from_=first, to=last, granularity="month", tz=None,
                numbers=None, now=ctx.now(),
            )  # fmt: skip
        except ParameterError as exc:
            return exc.message


@router.get("/reconciliation")
async def reconciliation_page(request: Request) -> Response:
    account = await _session_account(request)
    if account is None:
        return RedirectResponse(_base(request) + "/login", status_code=303)
    ctx = context_of(request)
    default_from, default_to = _default_range(ctx.now(), account.timezone)
    first = _month_param(request, "from") or default_from
    last = _month_param(request, "to") or default_to
    answer = await ctx.run(_answer, ctx, account, first, last)
    if isinstance(answer, str):  # e.g. from after to: say so, on the default range
        first, last = default_from, default_to
        fallback = await ctx.run(_answer, ctx, account, first, last)
        assert not isinstance(fallback, str)
        answer = fallback
    base = _base(request)
    last_sync = (
        datetime.fromtimestamp(answer.last_sync, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if answer.last_sync
        else None
    )
    page = _template().render(
        account=account, answer=answer, base=base, static=base + "/static",
        version=__version__, from_month=first, to_month=last, last_sync=last_sync,
    )  # fmt: skip
    response = HTMLResponse(page)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response
