"""The modern statistics API (docs/api-v1.md): real HTTP status codes, RFC 9457 problems, CSV."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from wastats.api.context import SESSION_COOKIE, AppContext, context_of
from wastats.api.limits import run_stats
from wastats.api.problems import PROBLEM, answer_response, invalid_parameter, problem, problem_body
from wastats.domain import answers, history, reporting
from wastats.domain.stats import account_numbers
from wastats.store.accounts import AccountRow

router = APIRouter(prefix="/v1", tags=["statistics (v1)"])


def unauthorized() -> JSONResponse:
    return problem(
        401,
        "Unauthorized",
        "a valid bearer token is required: get one from POST /api/settings/accessToken",
        headers={"WWW-Authenticate": 'Bearer realm="wastats"'},
    )


async def current_account(request: Request) -> AccountRow | None:
    """The account of the bearer token, or of the dashboard's session cookie."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
    else:
        token = request.cookies.get(SESSION_COOKIE, "")
    token = token.strip()
    if not token:
        return None
    ctx = context_of(request)
    return await ctx.run(ctx.authenticate, token)


# --- documented answers (the models are wastats.domain.answers) ---------------------------------


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM: {"schema": answers.Problem.model_json_schema()}},
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _problem_response("missing, unknown or expired token"),
    422: _problem_response(
        "an invalid parameter (named in `errors`), or an answer over the row cap "
        "(`WASTATS_MAX_STATS_ROWS`, in `max_rows`)"
    ),
    429: _problem_response("too many requests for this token; see `Retry-After`"),
}

# Documented in the schema but checked by the handler, so a bad value gets wastats' own
# one-line message and problem format rather than a generic validation error.
_DATE = {"pattern": r"^[0-9]{4}-[0-9]{2}(-[0-9]{2})?$"}


# --- GET /v1/stats ----------------------------------------------------------------------------


@router.get(
    "/stats",
    response_model=answers.Stats,
    responses={
        **_ERRORS,
        200: {"content": {"text/csv": {"example": "period,start,end,final,marketing,...\n"}}},
    },
    summary="Counts by period, number, category and country, in any time zone",
)
async def stats(
    request: Request,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            description="First day, inclusive: YYYY-MM or YYYY-MM-DD",
            examples=["2025-01"],
            json_schema_extra=_DATE,
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(
            description="Last day, inclusive: YYYY-MM (its last day) or YYYY-MM-DD",
            examples=["2025-06"],
            json_schema_extra=_DATE,
        ),
    ] = None,
    granularity: Annotated[
        str | None,
        Query(
            description="day, week or month",
            examples=["month"],
            json_schema_extra={"enum": ["day", "week", "month"]},
        ),
    ] = None,
    tz: Annotated[
        str | None,
        Query(
            description="IANA zone for bucket boundaries (default: the account's)",
            examples=["Europe/Berlin"],
        ),
    ] = None,
    numbers: Annotated[
        list[str] | None,
        Query(
            description="The account's numbers, comma-separated or repeated (default: all)",
            examples=[["972501234567"]],
        ),
    ] = None,
    group_by: Annotated[
        list[str] | None,
        Query(
            description="Any of number, category, country (comma-separated or repeated)",
            examples=[["number"]],
            json_schema_extra={
                "items": {"type": "string", "enum": ["number", "category", "country"]}
            },
        ),
    ] = None,
    unique: Annotated[
        bool, Query(description="Add unique customers per bucket (reads counted units)")
    ] = False,
    format: Annotated[
        str | None,
        Query(
            description="json (default) or csv",
            examples=["csv"],
            json_schema_extra={"enum": ["json", "csv"]},
        ),
    ] = None,
) -> Response:
    account = await current_account(request)
    if account is None:
        return unauthorized()
    wants_csv = format == "csv" or (
        format is None and "text/csv" in request.headers.get("accept", "")
    )
    if format not in (None, "json", "csv"):
        return invalid_parameter("format", "format must be json or csv")
    ctx = context_of(request)
    try:
        # Checked first, in the ordinary thread pool: a bad or too costly question is refused
        # at once, without queueing for a statistics worker.
        question = await ctx.run(
            _question, ctx, account, from_, to, granularity, tz, numbers, group_by, unique
        )
        # Then in a statistics worker thread, encoding included (limits.py): the event loop,
        # which acknowledges webhooks, never does the heavy part.
        result, encoded = await run_stats(ctx, _answer, ctx, account, question, wants_csv)
    except reporting.ParameterError as exc:
        return invalid_parameter(exc.parameter, exc.message)
    except reporting.AnswerTooLarge as exc:
        return _too_large(exc)
    if encoded is None:
        return _csv_response(result)
    return Response(encoded, media_type="application/json")


def _too_large(exc: reporting.AnswerTooLarge) -> JSONResponse:
    """422: each parameter is valid, but together they ask for more rows than one answer may
    have or more units than one answer may read. `max_rows` and `rows` (or `max_units` and
    `units`) are RFC 9457 extension members, for programs."""
    body = problem_body(
        422,
        "Answer too large",
        str(exc),
        errors=[
            {"parameter": p, "message": "narrow this to reduce the rows"}
            for p in ("numbers", "from", "to", "granularity", "group_by")
        ],
    )
    body.update({f"max_{exc.what}": exc.limit, exc.what: exc.amount})
    return JSONResponse(body, status_code=422, media_type=PROBLEM)


def _question(
    ctx: AppContext,
    account: AccountRow,
    from_: str | None,
    to: str | None,
    granularity: str | None,
    tz: str | None,
    numbers: list[str] | None,
    group_by: list[str] | None,
    unique: bool,
) -> reporting.Question:
    """The validated question, refused with AnswerTooLarge when it can exceed the row cap or
    would read more units than allowed (estimated from the rollups, before any unit is read)."""
    s = ctx.settings
    with ctx.db.read() as conn:
        question = reporting.parse_question(
            conn, account, from_=from_, to=to, granularity=granularity, tz=tz,
            numbers=numbers, group_by=group_by, unique=unique, now=ctx.now(),
        )  # fmt: skip
        reporting.check_size(
            conn, account, question, max_rows=s.max_stats_rows, max_units=s.max_stats_units
        )
    return question


def _answer(
    ctx: AppContext, account: AccountRow, question: reporting.Question, wants_csv: bool
) -> tuple[answers.Stats, bytes | None]:
    """The answer, and its JSON unless CSV is wanted (streamed later, row by row)."""
    now, max_rows = ctx.now(), ctx.settings.max_stats_rows
    with ctx.db.read() as conn:
        result = reporting.answer(conn, account, question, now, max_rows=max_rows).model()
        if wants_csv:  # with Meta's record (source, cost) once a WABA is linked
            return history.stats_answer(conn, question, result, now, max_rows=max_rows), None
        # Meta's record (history and cost), merged into the observed answer: docs/meta-record.md.
        merged = history.merged_doc(conn, question, result, now, max_rows=max_rows)
    if merged is None:  # no WABA linked: the observed answer as it is
        return result, result.wire_json()
    return result, msgspec.json.encode(merged)


def _csv_response(result: answers.Stats) -> StreamingResponse:
    """The answer as a CSV download; the text is `answers.csv_lines`, which `wastats stats
    --csv` prints too."""
    return StreamingResponse(
        answers.csv_lines(result),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": (
                f'attachment; filename="wastats-{result.from_}-{result.to}.csv"'
            )
        },
    )


# --- GET /v1/numbers --------------------------------------------------------------------------


@router.get(
    "/numbers", response_model=answers.Numbers, responses={401: _ERRORS[401]},
    summary="The account's business numbers",
)  # fmt: skip
async def list_numbers(request: Request) -> Response:
    account = await current_account(request)
    if account is None:
        return unauthorized()
    ctx = context_of(request)
    return answer_response(await ctx.run(_numbers, ctx, account))


def _numbers(ctx: AppContext, account: AccountRow) -> answers.Numbers:
    with ctx.db.read() as conn:
        rows = account_numbers(conn, account)
    return answers.Numbers(
        numbers=tuple(
            answers.Number(
                whatsapp=n.whatsapp,
                phone_number_id=n.phone_number_id,
                waba_id=n.waba_id,
                display_name=n.display_name,
                business_name=n.business_name,
                coexistence=n.coexistence,
                created_at=n.created_at,
            )
            for n in rows
        )
    )
