"""`GET /v1/reconciliation`: observed against reported, per period, number, category and
pricing type, with verdicts (spec/meta-record.md, docs/meta-record.md). JSON or CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from wastats.api.context import AppContext, context_of
from wastats.api.problems import invalid_parameter
from wastats.domain import answers, reconciliation
from wastats.domain.reporting import ParameterError
from wastats.store.accounts import AccountRow

router = APIRouter(prefix="/v1", tags=["statistics (v1)"])


@router.get(
    "/reconciliation",
    summary="Our counts against Meta's analytics, with a verdict per row",
    response_model=answers.Reconciliation,
    responses={
        200: {"content": {"text/csv": {"example": "period,start,end,number,...\n"}}},
        401: {"description": "missing, unknown or expired token"},
        422: {"description": "an invalid parameter (named in `errors`)"},
    },
)
async def get_reconciliation(
    request: Request,
    from_: Annotated[
        str | None, Query(alias="from", description="First day: YYYY-MM or YYYY-MM-DD")
    ] = None,
    to: Annotated[str | None, Query(description="Last day: YYYY-MM or YYYY-MM-DD")] = None,
    granularity: Annotated[
        str | None,
        Query(description="day or month", json_schema_extra={"enum": ["day", "month"]}),
    ] = None,
    tz: Annotated[str | None, Query(description="IANA zone (default: the account's)")] = None,
    numbers: Annotated[
        list[str] | None, Query(description="The account's numbers (default: all)")
    ] = None,
    format: Annotated[
        str | None,
        Query(description="json (default) or csv", json_schema_extra={"enum": ["json", "csv"]}),
    ] = None,
) -> Response:
    from wastats.api.v1 import current_account, unauthorized  # v1 imports this module

    account = await current_account(request)
    if account is None:
        return unauthorized()
    if format not in (None, "json", "csv"):
        return invalid_parameter("format", "format must be json or csv")
    wants_csv = format == "csv" or (
        format is None and "text/csv" in request.headers.get("accept", "")
    )
    ctx = context_of(request)
    try:
        result = await ctx.run(_answer, ctx, account, from_, to, granularity, tz, numbers)
    except ParameterError as exc:
        return invalid_parameter(exc.parameter, exc.message)
    if wants_csv:
        return StreamingResponse(
            answers.reconciliation_csv_lines(result),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": (
                    f'attachment; filename="wastats-reconciliation-{result.from_}-{result.to}.csv"'
                )
            },
        )
    return Response(result.wire_json(), media_type="application/json")


def _answer(
    ctx: AppContext,
    account: AccountRow,
    from_: str | None,
    to: str | None,
    granularity: str | None,
    tz: str | None,
    numbers: list[str] | None,
) -> answers.Reconciliation:
    with ctx.db.read() as conn:
        return reconciliation.answer(
            conn, account, from_=from_, to=to, granularity=granularity, tz=tz,
            numbers=numbers, now=ctx.now(),
        ).model()  # fmt: skip
