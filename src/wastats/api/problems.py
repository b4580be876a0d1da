"""RFC 9457 problem details: the one error format of every HTTP answer outside the compatible
API (which answers in band, in its own envelope)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

PROBLEM = "application/problem+json"


def problem_body(
    status: int, title: str, detail: str, *, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, title, detail, errors=errors),
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )
