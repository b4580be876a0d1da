"""A Python client for a wastats service: the compatible partners API and the modern `/v1` API.

    with Client("https://stats.example.com", client_id, client_secret) as client:
        client.conversations_statistics(start="012025", end="062025")
        client.stats(from_="2025-01", to="2025-06", group_by=["number"])

The client gets an access token from `/api/settings/accessToken` on first use, renews it shortly
before its `expiration_time`, and once more when the service rejects it (the clocks of client and
service may disagree, and `wastats accounts rotate-secret` revokes tokens early). It never logs
the secret or a token. Answers are parsed into frozen pydantic models whose field values are the
service's JSON (`model_dump(mode="json", by_alias=True, exclude_unset=True)` gives the answer
back); they are the very models the service builds its answers from
(`wastats.domain.answers`). Errors are `WastatsError` subclasses; transport faults (no
connection, timeouts) propagate as `httpx` errors.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from wastats import __version__
from wastats.domain.answers import (
    Answer,
    ConversationsStatistics,
    Cost,
    Counts,
    MonthStatistics,
    Number,
    Numbers,
    Reconciliation,
    ReconciliationRow,
    Stats,
    StatsRow,
    UniqueCustomers,
    WhatsAppNumber,
    WhatsAppNumbers,
)

__all__ = [
    "ApiFailure", "AuthenticationError", "Client", "ConversationsStatistics", "Cost", "Counts",
    "InvalidParameter", "MonthStatistics", "Number", "ProblemError", "Reconciliation",
    "ReconciliationRow", "Stats", "StatsRow", "UniqueCustomers", "WastatsError",
    "WhatsAppNumber", "WhatsAppNumbers",
]  # fmt: skip

log = logging.getLogger("wastats.client")

TOKEN_PATH = "/api/settings/accessToken"
STATISTICS_PATH = "/api/whatsapp/getConversationsStatistics"
WHATSAPP_PATH = "/api/whatsapp/getWhatsApp"
STATS_PATH = "/v1/stats"
NUMBERS_PATH = "/v1/numbers"
RECONCILIATION_PATH = "/v1/reconciliation"
# The compatible API's calls that take a token: they answer a rejected one in band.
_PARTNERS_PATHS = (STATISTICS_PATH, WHATSAPP_PATH)

# Renew this long before `expiration_time` (at most a tenth of the token's lifetime), so a
# request is not sent with a token that expires on the way.
RENEW_MARGIN_SECONDS = 60.0
_REASON_TOKEN = 3  # the compatible API's "token missing, unknown or expired" (and "locked out")
_REASON_CREDENTIALS = 2


# --- errors -------------------------------------------------------------------------------------


class WastatsError(Exception):
    """Any error answer of the service, or an answer the client cannot understand."""


class ApiFailure(WastatsError):
    """An in-band `status: "FAIL"` answer of the compatible API (`docs/api.md`, reason codes)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(f"reason {reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class InvalidParameter:
    """One entry of a problem's `errors` list."""

    parameter: str
    message: str


class ProblemError(WastatsError):
    """An HTTP error answer: an RFC 9457 problem of the `/v1` API (or of the service in general,
    such as 503 when its database is down)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: tuple[InvalidParameter, ...] = (),
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors


class AuthenticationError(WastatsError):
    """Wrong credentials, a locked-out address, or a token the service keeps rejecting.

    `reason` is the compatible API's code (2 wrong credentials, 3 locked out or token rejected),
    `status` the HTTP status (401) when `/v1` refused; one of them is set."""

    def __init__(
        self,
        message: str,
        *,
        reason: int | None = None,
        status: int | None = None,
        locked_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status
        # True when the service refused even to check the secret: too many failures from this
        # address; retrying before `WASTATS_LOCKOUT_SECONDS` have passed cannot help.
        self.locked_out = locked_out


# --- answers ------------------------------------------------------------------------------------


# One model per answer, shared with the service that writes them (`wastats.domain.answers`).
_M = TypeVar("_M", bound=Answer)


# --- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Credentials:
    client_id: str
    client_secret: str = field(repr=False)


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    renew_at: float  # on the client's clock; inf = renew only when the service rejects it


DateLike = str | date | None


def _date_text(value: str | date) -> str:
    return value.isoformat() if isinstance(value, date) else value


def _month_text(value: str | date) -> str:
    return value.strftime("%m%Y") if isinstance(value, date) else value


def _comma(values: Iterable[str] | None) -> str | None:
    if values is None:
        return None
    if isinstance(values, str):  # a lone string is one value, not a sequence of characters
        return values
    joined = ",".join(values)
    return joined or None


class Client:
    """A synchronous client. Use it as a context manager, or call `close()`.

    `clock` is the client's notion of now (Unix seconds), compared with the token's
    `expiration_time`; it is only replaceable for tests."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._setup(
            base_url,
            _Credentials(client_id, client_secret),
            None,
            timeout=timeout,
            transport=transport,
            clock=clock,
        )

    @classmethod
    def from_token(
        cls,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> Client:
        """A client that uses an existing access token and cannot renew it: once the service
        rejects it, calls raise `AuthenticationError`."""
        client = cls.__new__(cls)
        client._setup(
            base_url,
            None,
            _Token(token, math.inf),
            timeout=timeout,
            transport=transport,
            clock=time.time,
        )
        return client

    def _setup(
        self,
        base_url: str,
        credentials: _Credentials | None,
        token: _Token | None,
        *,
        timeout: float,
        transport: httpx.BaseTransport | None,
        clock: Callable[[], float],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"wastats-client/{__version__}"},
        )
        token_request = None
        if credentials is not None:
            body = {"client_id": credentials.client_id, "client_secret": credentials.client_secret}
            token_request = partial(self._http.build_request, "POST", TOKEN_PATH, json=body)
        self._http.auth = BearerTokenAuth(token_request, token, clock)

    def __repr__(self) -> str:
        who = self._credentials.client_id if self._credentials else "<token>"
        return f"Client({self.base_url!r}, {who!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the compatible partners API ----------------------------------------------------------

    def conversations_statistics(
        self,
        start: str | date | None = None,
        end: str | date | None = None,
        whatsapp: str | None = None,
    ) -> ConversationsStatistics:
        """Monthly Marketing / Service / Incoming counts, newest month first. `start` and `end`
        are inclusive months, `mmyyyy` (a `date` stands for its month); `whatsapp` one of the
        account's numbers (default: all of them)."""
        body: dict[str, str] = {}
        if start is not None:
            body["start_date"] = _month_text(start)
        if end is not None:
            body["end_date"] = _month_text(end)
        if whatsapp is not None:
            body["whatsapp"] = whatsapp
        answer = self._partners_get(STATISTICS_PATH, body)
        return _parse(ConversationsStatistics, answer)

    def whatsapp_numbers(self) -> WhatsAppNumbers:
        """The account's numbers with this month's counts (`getWhatsApp`)."""
        return _parse(WhatsAppNumbers, self._partners_get(WHATSAPP_PATH, None))

    # --- the /v1 API --------------------------------------------------------------------------

    def stats(
        self,
        *,
        from_: DateLike = None,
        to: DateLike = None,
        granularity: str = "month",
        tz: str | None = None,
        numbers: Iterable[str] | None = None,
        group_by: Iterable[str] = (),
        unique: bool = False,
    ) -> Stats:
        """`GET /v1/stats`: counts per period (`day`, `week`, `month`), optionally grouped by
        `number`, `category` and/or `country`. `from_` / `to` are `YYYY-MM`, `YYYY-MM-DD` or
        dates, inclusive. The server validates every value (`ProblemError` 422)."""
        params = _stats_params(from_, to, granularity, tz, numbers, group_by, unique)
        response = self._v1_get(STATS_PATH, params, accept="application/json")
        return _parse(Stats, _json(response))

    def stats_csv(
        self,
        *,
        from_: DateLike = None,
        to: DateLike = None,
        granularity: str = "month",
        tz: str | None = None,
        numbers: Iterable[str] | None = None,
        group_by: Iterable[str] = (),
        unique: bool = False,
    ) -> str:
        """The same as `stats()` as the service's CSV text (header line first)."""
        params = _stats_params(from_, to, granularity, tz, numbers, group_by, unique)
        params.append(("format", "csv"))
        response = self._v1_get(STATS_PATH, params, accept="text/csv")
        # The contract says UTF-8; don't let a missing charset make httpx guess.
        return response.content.decode("utf-8")

    def reconciliation(
        self,
        *,
        from_: DateLike = None,
        to: DateLike = None,
        granularity: str = "month",
        tz: str | None = None,
        numbers: Iterable[str] | None = None,
    ) -> Reconciliation:
        """`GET /v1/reconciliation`: our counts against Meta's analytics per period (`day` or
        `month`), number, category and pricing type, with a verdict per row and coverage per
        number (docs/meta-record.md)."""
        params = _stats_params(from_, to, granularity, tz, numbers, (), False)
        response = self._v1_get(RECONCILIATION_PATH, params, accept="application/json")
        return _parse(Reconciliation, _json(response))

    def reconciliation_csv(
        self,
        *,
        from_: DateLike = None,
        to: DateLike = None,
        granularity: str = "month",
        tz: str | None = None,
        numbers: Iterable[str] | None = None,
    ) -> str:
        """The same as `reconciliation()` as the service's CSV text (header line first)."""
        params = _stats_params(from_, to, granularity, tz, numbers, (), False)
        params.append(("format", "csv"))
        response = self._v1_get(RECONCILIATION_PATH, params, accept="text/csv")
        return response.content.decode("utf-8")

    def numbers(self) -> list[Number]:
        """`GET /v1/numbers`: the account's numbers, in registration order."""
        answer = _json(self._v1_get(NUMBERS_PATH, [], accept="application/json"))
        return list(_parse(Numbers, answer).numbers)

    def _partners_get(self, path: str, body: dict[str, str] | None) -> dict[str, Any]:
        """GET on the compatible API; the keys go in a JSON body, as the reference API reads
        them. A rejected token has already been renewed once by the auth flow."""
        content = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        response = self._http.request("GET", path, content=content, headers=headers)
        answer = _partners_answer(response)
        if answer.get("status") == "OK":
            return answer
        reason, message = _failure(answer)
        if reason == _REASON_TOKEN:
            raise AuthenticationError(self._rejected(message), reason=reason)
        raise ApiFailure(reason, message)

    def _v1_get(self, path: str, params: list[tuple[str, str]], *, accept: str) -> httpx.Response:
        """GET on `/v1`. A rejected token (401) has already been renewed once by the auth flow."""
        response = self._http.get(path, params=tuple(params), headers={"Accept": accept})
        if response.is_success:
            return response
        problem = _problem(response)
        if response.status_code == 401:
            raise AuthenticationError(self._rejected(problem.detail or problem.title), status=401)
        raise problem

    def _rejected(self, message: str) -> str:
        """What to say when the service rejects the token for good."""
        if self._credentials is None:
            return message  # a token given by the caller: the service's words are enough
        # A token just issued was refused too: renewing again would loop. The usual cause is
        # between us and the service.
        return (
            f"{message} (also with a newly issued token: is a proxy dropping the "
            "Authorization header, or are the service's clocks far apart?)"
        )


# --- tokens -------------------------------------------------------------------------------------


class BearerTokenAuth(httpx.Auth):
    """An `httpx.Auth` flow that sends `Authorization: Bearer <token>`, getting the token from
    `/api/settings/accessToken` first, renewing it shortly before it expires, and renewing it
    once when the service rejects it: `/v1` answers 401, the compatible API answers in band
    with reason 3 (HTTP 200). A second rejection is left to the caller: another renewal could
    only loop. Without `token_request` (a client made `from_token`) nothing is renewed.

    One token serves every thread that shares the client; the lock keeps them from all renewing
    at once (this flow is for the synchronous client only)."""

    requires_response_body = True  # to see the compatible API's in-band rejection

    def __init__(
        self,
        token_request: Callable[[], httpx.Request] | None,
        token: _Token | None,
        clock: Callable[[], float],
    ) -> None:
        self._token_request = token_request
        self._token = token
        self._clock = clock
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._live_token(rejected=None)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if self._token_request is None or not _rejects_token(response):
            return
        token = yield from self._live_token(rejected=token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # The thread lock, held while the token is fetched, would block an event loop.
        raise TypeError("BearerTokenAuth is for the synchronous httpx.Client only")
        yield request  # pragma: no cover - makes this an async generator

    def _live_token(self, rejected: str | None) -> Generator[httpx.Request, httpx.Response, str]:
        """The token to send. `rejected`: the one the service just refused, to be replaced
        (unless another thread already did)."""
        with self._lock:
            token = self._token
            if token is not None and token.value != rejected and self._clock() < token.renew_at:
                return token.value
            if self._token_request is None:
                if token is not None:  # from_token: send it; the service's answer says the rest
                    return token.value
                raise AuthenticationError("no access token and no credentials to get one")
            log.debug("getting an access token")
            self._token = _token_from((yield self._token_request()), self._clock())
            return self._token.value


def _rejects_token(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return True
    if response.status_code != 200 or not response.request.url.path.endswith(_PARTNERS_PATHS):
        return False
    try:
        answer = response.json()
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("reason") == _REASON_TOKEN


def _token_from(response: httpx.Response, now: float) -> _Token:
    """The token of an accessToken answer, with when to renew it; errors for a refusal."""
    answer = _partners_answer(response)
    if answer.get("status") != "OK":
        reason, message = _failure(answer)
        if reason in (_REASON_CREDENTIALS, _REASON_TOKEN):
            # On accessToken, reason 3 is the lockout (elsewhere it is a rejected token).
            raise AuthenticationError(message, reason=reason, locked_out=reason == _REASON_TOKEN)
        raise ApiFailure(reason, message)
    value = answer.get("access_token")
    try:
        expires = float(answer["expiration_time"])
    except (KeyError, TypeError, ValueError):
        expires = math.nan
    if not isinstance(value, str) or math.isnan(expires):
        raise WastatsError("unexpected answer from accessToken: no token or expiry")
    lifetime = expires - now
    if lifetime <= 0:
        # Our clock is ahead of the service's by more than a token's lifetime: renewing
        # ahead of time would mean a new token before every call. Renew on rejection only.
        return _Token(value, math.inf)
    return _Token(value, expires - min(RENEW_MARGIN_SECONDS, lifetime / 10))


# --- helpers ------------------------------------------------------------------------------------


def _stats_params(
    from_: DateLike,
    to: DateLike,
    granularity: str,
    tz: str | None,
    numbers: Iterable[str] | None,
    group_by: Iterable[str],
    unique: bool,
) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [("granularity", granularity)]
    if from_ is not None:
        params.append(("from", _date_text(from_)))
    if to is not None:
        params.append(("to", _date_text(to)))
    if tz is not None:
        params.append(("tz", tz))
    joined_numbers = _comma(numbers)
    if joined_numbers is not None:
        params.append(("numbers", joined_numbers))
    joined_groups = _comma(group_by)
    if joined_groups is not None:
        params.append(("group_by", joined_groups))
    if unique:
        params.append(("unique", "true"))
    return params


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise WastatsError(
            f"unexpected answer from {response.request.url.path}: HTTP {response.status_code}, "
            "not a JSON object"
        )
    return value


def _partners_answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON envelope of a compatible-API answer. The service answers application errors in
    band with HTTP 200; other codes are transport faults (413 still in the envelope, the others
    problem details)."""
    if response.is_success:
        return _json(response)
    try:
        value = response.json()
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("status") == "FAIL":
        reason, message = _failure(value)
        raise ApiFailure(reason, message)
    raise _problem(response)


def _failure(answer: dict[str, Any]) -> tuple[int, str]:
    reason = answer.get("reason")
    message = answer.get("message")
    return (
        reason if isinstance(reason, int) else 0,
        message if isinstance(message, str) else "no message",
    )


def _problem(response: httpx.Response) -> ProblemError:
    """A ProblemError from an HTTP error answer, problem details or not (a proxy's HTML page)."""
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        text = response.text.strip().splitlines()
        return ProblemError(
            response.status_code, response.reason_phrase, text[0][:200] if text else ""
        )
    errors = tuple(
        InvalidParameter(str(e.get("parameter", "")), str(e.get("message", "")))
        for e in value.get("errors") or ()
        if isinstance(e, dict)
    )
    return ProblemError(
        int(value.get("status") or response.status_code),
        str(value.get("title") or response.reason_phrase),
        str(value.get("detail") or ""),
        errors,
    )


def _parse(model: type[_M], value: object) -> _M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WastatsError(f"unexpected answer: {model.__name__}.{where}: {first['msg']}") from None
