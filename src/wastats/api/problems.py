"""How answers go on the wire: an answer model as JSON, and RFC 9457 problem details, the one
error format of every HTTP answer outside the compatible API (which answers in band, in its own
envelope)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from wastats.domain.answers import Answer, Problem

PROBLEM = "application/problem+json"


def answer_response(answer: Answer, *, status_code: int = 200) -> Response:
    """An answer model as the JSON body of a response (`Answer.wire_json`).

    Written by pydantic, not `JSONResponse`'s `json.dumps`: the bytes are the same (compact,
    UTF-8, the same escapes; a test checks), without building the dicts first."""
    return Response(answer.wire_json(), status_code=status_code, media_type="application/json")


def problem_body(
    status: int, title: str, detail: str, *, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    fields["detail"] = detail
    if errors is not None:
        fields["errors"] = errors
    return Problem.model_validate(fields).model_dump(mode="json", exclude_unset=True)


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


def invalid_parameter(parameter: str, message: str) -> JSONResponse:
    """422: one query parameter is wrong; `errors` names it, for programs."""
    return problem(
        422, "Invalid parameter", message, errors=[{"parameter": parameter, "message": message}]
    )
