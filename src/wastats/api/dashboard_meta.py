"""The dashboard's page of Meta's record (/dashboard/reconciliation): observed against reported
per month, number and category, verdicts highlighted, coverage per number (docs/meta-record.md).

Server-rendered from the dashboard's Jinja2 templates (`meta/reconciliation.html` extends
`account.html`; autoescaped) with no script, under the dashboard's session, security headers and
Content-Security-Policy: it reuses the dashboard's page helpers rather than keeping its own."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from wastats.api.context import AppContext, context_of
from wastats.api.dashboard import (
    _default_range,
    _month_param,
    account_page,
    session_account,
    to_sign_in,
)
from wastats.domain import answers, reconciliation
from wastats.domain.reporting import ParameterError
from wastats.store.accounts import AccountRow

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _answer(
    ctx: AppContext, account: AccountRow, first: str, last: str
) -> answers.Reconciliation | str:
    """The answer model of `/v1/reconciliation` (the page shows what the API sends)."""
    with ctx.db.read() as conn:
        try:
            return reconciliation.answer(
                conn, account, from_=first, to=last, granularity="month", tz=None,
                numbers=None, now=ctx.now(),
            ).model()  # fmt: skip
        except ParameterError as exc:
            return exc.message


@router.get("/reconciliation")
async def reconciliation_page(request: Request) -> Response:
    account = await session_account(request)
    if account is None:
        return to_sign_in(request)
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
    last_sync = answer.last_sync.strftime("%Y-%m-%d %H:%M UTC") if answer.last_sync else None
    return account_page(
        request, account, "meta/reconciliation.html",
        answer=answer, from_month=first, to_month=last, last_sync=last_sync,
    )  # fmt: skip
