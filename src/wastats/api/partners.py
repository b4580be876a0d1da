"""The compatible partners API (`spec/partners-api.md`): paths, fields and reason codes as the
reference provider's clients expect them. Application errors are answered in band: HTTP 200 with
`status: "FAIL"`, a `reason` code and a one-line `message`.

Checks run in a fixed order, so a request with several faults always gets the same answer:
method (13), token (3), body (2), `whatsapp` syntax (4), dates (40, 41, 42), ownership (27).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from wastats.api.context import AppContext, client_ip, context_of
from wastats.api.problems import answer_response
from wastats.domain import answers, auth, history, stats
from wastats.domain.phone import normalise_whatsapp

router = APIRouter(prefix="/api", tags=["compatible partners API"])

# HEAD and TRACE too: FastAPI does not answer HEAD for a GET route, and the contract says
# "any method other than GET" is reason 13, not a 405.
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE")


def _other_methods(path: str, expected: str) -> None:
    """Answer every other method of `path` with reason 13, in band, as the contract says.
    Kept out of the OpenAPI schema, which documents only the real method."""

    async def wrong(request: Request) -> Response:
        return wrong_method(expected)

    router.add_api_route(
        path,
        wrong,
        methods=[m for m in ALL_METHODS if m != expected],
        include_in_schema=False,
        name=f"wrong_method{path.replace('/', '_')}",
    )


class Reason:
    OK = 1
    BAD_CREDENTIALS_OR_BODY = 2
    TOKEN_OR_LOCKOUT = 3
    BAD_WHATSAPP = 4
    WRONG_METHOD = 13
    NOT_YOUR_NUMBER = 27
    BAD_START = 40
    BAD_END = 41
    START_AFTER_END = 42


def fail(reason: int, message: str) -> Response:
    return answer_response(answers.Failure(status="FAIL", reason=reason, message=message))


def wrong_method(expected: str) -> Response:
    return fail(Reason.WRONG_METHOD, f"you need to use {expected} method")


async def json_object(request: Request) -> dict[str, Any] | None:
    """The body as a JSON object; `{}` for an empty body; None if it is anything else."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nesting deeper than the interpreter's stack (`[` x 100000) is a
        # malformed body like any other, not a server error.
        return None
    return value if isinstance(value, dict) else None


# --- months, written mmyyyy ---------------------------------------------------------------------

_MIN_YEAR, _MAX_YEAR = 1970, 9999


def mmyyyy(month: int) -> str:
    """`YYYYMM` → this API's `mmyyyy` (202502 → "022025")."""
    year, mm = divmod(month, 100)
    if not (_MIN_YEAR <= year <= _MAX_YEAR and 1 <= mm <= 12):
        raise ValueError(f"not a month YYYYMM between {_MIN_YEAR} and {_MAX_YEAR}: {month!r}")
    return f"{mm:02d}{year:04d}"


def parse_mmyyyy(text: str) -> int | None:
    """`mmyyyy` → `YYYYMM`, or None unless `text` is exactly six ASCII digits with month 01–12 and
    year 1970–9999 (no signs, spaces or non-ASCII digits, which `int()` would accept)."""
    if len(text) != 6 or not text.isascii() or not text.isdigit():
        return None
    mm, year = int(text[:2]), int(text[2:])
    if not (1 <= mm <= 12 and _MIN_YEAR <= year <= _MAX_YEAR):
        return None
    return year * 100 + mm


# --- POST /api/settings/accessToken -----------------------------------------------------------


class TokenRequest(BaseModel):
    client_id: str
    client_secret: str


@router.post(
    "/settings/accessToken",
    response_model=answers.AccessToken,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": TokenRequest.model_json_schema()}}
        }
    },
    summary="Get an access token from client credentials",
)
async def access_token(request: Request) -> Response:
    ctx = context_of(request)
    body = await json_object(request)
    client_id = body.get("client_id") if body else None
    client_secret = body.get("client_secret") if body else None
    if not isinstance(client_id, str) or not isinstance(client_secret, str):
        # Malformed requests are not login attempts: they don't count towards the lockout,
        # but a locked-out address is still told it is locked out.
        return fail(
            Reason.BAD_CREDENTIALS_OR_BODY,
            "the body must be a JSON object with string client_id and client_secret",
        )
    result = await ctx.run(ctx.issue_token, client_id, client_secret, client_ip(request))
    if isinstance(result, auth.LockedOut):
        return fail(Reason.TOKEN_OR_LOCKOUT, result.message)
    if result is auth.TokenRefusal.BAD_CREDENTIALS:
        return fail(Reason.BAD_CREDENTIALS_OR_BODY, result.value)
    assert isinstance(result, auth.IssuedToken)
    return answer_response(
        answers.AccessToken(
            status="OK",
            access_token=result.access_token,
            expiration_time=str(result.expires_at),
            token_type="Bearer",
            reason=Reason.OK,
        )
    )


def bearer_token(request: Request) -> str | None:
    """The bearer token of the request, unchecked (`authenticate` checks it)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def no_token() -> Response:
    return fail(
        Reason.TOKEN_OR_LOCKOUT,
        "access token does not exist or expired; get another one from /api/settings/accessToken",
    )


# --- GET /api/whatsapp/getConversationsStatistics ---------------------------------------------


@router.get(
    "/whatsapp/getConversationsStatistics",
    response_model=answers.ConversationsStatistics,
    summary="Monthly Marketing / Service / Incoming counts",
    description="Keys `start_date`, `end_date` (`mmyyyy`, inclusive) and `whatsapp` may come as "
    "a JSON body on the GET or as query parameters; the body wins when both are present.",
)
async def conversations_statistics(
    request: Request,
    start_date: str | None = None,
    end_date: str | None = None,
    whatsapp: str | None = None,
) -> Response:
    token = bearer_token(request)
    if token is None:
        return no_token()
    body = await json_object(request)
    query = _statistics_query(body, start_date=start_date, end_date=end_date, whatsapp=whatsapp)
    ctx = context_of(request)
    # One trip to the thread pool and one transaction for the token and the answer (each
    # trip costs about as much as the query itself: docs/benchmarks.md, "Statistics").
    return await ctx.run(_statistics, ctx, token, query)


_Query = tuple[str | None, int | None, int | None]
"""(whatsapp digits, first month, last month) of a valid statistics request."""


def _statistics_query(body: dict[str, Any] | None, **given: str | None) -> _Query | Response:
    """The request's parameters, checked in the documented order, or the failure to answer
    (once the token, which comes first, has been found valid)."""
    if body is None:
        return fail(Reason.BAD_CREDENTIALS_OR_BODY, "the body is not a JSON object")
    params: dict[str, Any] = dict(given)
    params.update({k: v for k, v in body.items() if k in params})
    for key, value in params.items():
        if value is not None and not isinstance(value, str):
            return fail(Reason.BAD_CREDENTIALS_OR_BODY, f"{key} must be a string")

    digits: str | None = None
    if params["whatsapp"]:
        digits = normalise_whatsapp(params["whatsapp"])
        if digits is None:
            return fail(Reason.BAD_WHATSAPP, "whatsapp must be a phone number of 8 to 15 digits")
    first = last = None
    if params["start_date"]:
        first = parse_mmyyyy(params["start_date"])
        if first is None:
            return fail(Reason.BAD_START, "start_date must be a month written mmyyyy, e.g. 032025")
    if params["end_date"]:
        last = parse_mmyyyy(params["end_date"])
        if last is None:
            return fail(Reason.BAD_END, "end_date must be a month written mmyyyy, e.g. 052025")
    if first is not None and last is not None and first > last:
        return fail(
            Reason.START_AFTER_END,
            f"start_date {mmyyyy(first)} is after end_date {mmyyyy(last)}",
        )
    return digits, first, last


def _statistics(ctx: AppContext, token: str, query: _Query | Response) -> Response:
    with ctx.db.read() as conn:
        account = auth.authenticate(conn, token, ctx.now())
        if account is None:
            return no_token()
        if isinstance(query, Response):
            return query
        digits, first, last = query
        number = None
        if digits is not None:
            number = stats.number_of_account(conn, account, digits)
            if number is None:
                return fail(Reason.NOT_YOUR_NUMBER, f"{digits} is not a number of this account")
        months = stats.monthly_statistics(
            conn, account, number=number, first_month=first, last_month=last
        )
        # Off unless the account asked for it (docs/meta-record.md, "History").
        months = history.with_history_from_meta(conn, account, number, months, first, last)
        total_numbers = 1 if number else stats.count_numbers(conn, account)
    # Validated in one call from plain values, the fastest way to the model (pydantic builds
    # the items itself: docs/benchmarks.md, "Answer models").
    answer = answers.ConversationsStatistics.model_validate(
        {
            "status": "OK",
            "reason": Reason.OK,
            "total_whatsapp": total_numbers,
            "whatsapp": digits,
            "months": [
                {
                    "month_year": mmyyyy(m.month),
                    "total_conversations": m.total,
                    "total_marketing": m.marketing,
                    "total_service": m.service,
                    "total_incoming": m.incoming,
                }
                for m in months
            ],
        }
    )
    return answer_response(answer)


# --- GET /api/whatsapp/getWhatsApp ------------------------------------------------------------


@router.get(
    "/whatsapp/getWhatsApp",
    response_model=answers.WhatsAppNumbers,
    summary="The account's numbers with this month's counts",
)
async def get_whatsapp(request: Request) -> Response:
    token = bearer_token(request)
    if token is None:
        return no_token()
    ctx = context_of(request)
    return await ctx.run(_numbers, ctx, token)


def _numbers(ctx: AppContext, token: str) -> Response:
    with ctx.db.read() as conn:
        account = auth.authenticate(conn, token, ctx.now())
        if account is None:
            return no_token()
        rows = stats.numbers_this_month(conn, account, ctx.now())
    items = [
        {
            "create_time": number.created_at,
            "whatsapp": number.whatsapp,
            # Empty strings rather than null: clients of the reference provider expect strings.
            "display_name": number.display_name or "",
            "business_name": number.business_name or "",
            "coexistence": int(number.coexistence),
            "conversations_this_month": counts.total,
            "marketing_this_month": counts.marketing,
            "service_this_month": counts.service,
            "incoming_this_month": counts.incoming,
        }
        for number, counts in rows
    ]
    answer = answers.WhatsAppNumbers.model_validate(
        {
            "status": "OK",
            "reason": Reason.OK,
            "total_whatsapp": len(items),
            "total_conversations_this_month": sum(c.total for _, c in rows),
            "total_marketing_this_month": sum(c.marketing for _, c in rows),
            "total_service_this_month": sum(c.service for _, c in rows),
            "total_incoming_this_month": sum(c.incoming for _, c in rows),
            "numbers": items,
        }
    )
    return answer_response(answer)


_other_methods("/settings/accessToken", "POST")
_other_methods("/whatsapp/getConversationsStatistics", "GET")
_other_methods("/whatsapp/getWhatsApp", "GET")
