"""A small client for the two Graph API reads wastats needs: a WABA's phone numbers and its
`pricing_analytics` (reference notes, section 5). Plain httpx, no SDK.

Errors become one `GraphError` with a `kind` the sync acts on (see `RETRYABLE`): transient ones
(5xx, timeouts, network, malformed answers) are retried here with exponential backoff; rate
limits and refusals are handed to the caller, which records them and decides when to try again.
The token is sent in the `Authorization` header and never appears in a message, log line or
exception: `paging.next` URLs are followed only on the configured host, since Meta's may carry
the token in their query string.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("wastats.meta")

DIMENSIONS = '["PHONE","COUNTRY","PRICING_CATEGORY","PRICING_TYPE","TIER"]'

RETRYABLE = frozenset({"server", "timeout", "network", "malformed"})
"""Kinds retried in place; the others (token, permission, unknown_waba, rate_limit, refused)
would fail the same way at once."""


class GraphError(Exception):
    """A failed Graph API call. `str()` is safe to log and show: it never holds the token."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.subcode = subcode
        self.retry_after = retry_after
        """Seconds until Meta lets us in again (rate limits), if it said."""

    def __str__(self) -> str:
        code = (
            f" (code {self.code}{f'/{self.subcode}' if self.subcode else ''})" if self.code else ""
        )
        return f"{self.kind}: {self.args[0]}{code}"


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    phone_number_id: str
    display_phone_number: str
    verified_name: str | None


@dataclass(frozen=True, slots=True)
class DataPoint:
    """One reported HALF_HOUR data point, as Meta sent it (names upper case)."""

    start: int
    phone_number: str
    country: str
    category: str
    pricing_type: str
    tier: str
    volume: int
    cost: float | None


def _classify(status: int, body: Any, headers: httpx.Headers, waba_id: str) -> GraphError:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        if status >= 500:
            return GraphError("server", f"HTTP {status}")
        return GraphError("malformed", f"HTTP {status} without a Graph error object")
    code = error.get("code") if isinstance(error.get("code"), int) else None
    subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
    # Meta's messages never echo the token; cut them short anyway, they end up in the database.
    message = str(error.get("message", ""))[:200]
    if code == 190:
        return GraphError("token", message or "access token invalid or expired", code=code)
    if code in (10, 200) or (code is not None and 200 <= code <= 299):
        return GraphError("permission", message or "permission missing", code=code)
    if code in (4, 17, 32, 613, 80007, 130429):
        return GraphError(
            "rate_limit", message, code=code, retry_after=_regain_seconds(headers, waba_id)
        )
    if code == 100 and subcode == 33:
        return GraphError("unknown_waba", message, code=code, subcode=subcode)
    if status >= 500 or code in (1, 2):
        return GraphError("server", message or f"HTTP {status}", code=code)
    return GraphError("refused", message or f"HTTP {status}", code=code, subcode=subcode)


def _regain_seconds(headers: httpx.Headers, waba_id: str) -> int | None:
    """`estimated_time_to_regain_access` (minutes) from `X-Business-Use-Case-Usage`."""
    raw = headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        usage = json.loads(raw)
        entries = usage.get(waba_id) or [e for v in usage.values() for e in v]
        minutes = max(int(e.get("estimated_time_to_regain_access", 0)) for e in entries)
    except (ValueError, TypeError, AttributeError):
        return None
    return minutes * 60 if minutes > 0 else None


class GraphClient:
    """Blocking client (the sync runs in its own thread). Close it, or use it as a context."""

    def __init__(
        self,
        base_url: str,
        version: str,
        token: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.version = version
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
        )

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- requests -----------------------------------------------------------------------------

    def _get_once(self, url: str, params: dict[str, str] | None, waba_id: str) -> Any:
        try:
            response = self._http.get(url, params=params)
        except httpx.TimeoutException:
            raise GraphError("timeout", "the Graph API did not answer in time") from None
        except httpx.HTTPError as exc:
            raise GraphError("network", type(exc).__name__) from None
        try:
            body = response.json()
        except ValueError:
            if response.status_code >= 500:
                raise GraphError("server", f"HTTP {response.status_code}") from None
            raise GraphError("malformed", "the answer is not JSON") from None
        if response.status_code != 200 or (isinstance(body, dict) and "error" in body):
            raise _classify(response.status_code, body, response.headers, waba_id)
        if not isinstance(body, dict):
            raise GraphError("malformed", "the answer is not a JSON object")
        return body

    def _get(self, url: str, params: dict[str, str] | None, waba_id: str) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                result: dict[str, Any] = self._get_once(url, params, waba_id)
                return result
            except GraphError as exc:
                if exc.kind not in RETRYABLE or attempt >= self._retries:
                    raise
                delay = self._backoff * (2**attempt)
                log.warning("Graph API %s; retrying in %.1f s", exc, delay)
                self._sleep(delay)
                attempt += 1

    def _pages(
        self,
        path: str,
        params: dict[str, str],
        waba_id: str,
        *,
        unwrap: str | None = None,
        edge: tuple[str, dict[str, str]] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every page of a paged answer: follows `paging.next` (on our host only) or, failing
        that, `paging.cursors.after` on the `edge` (path, params) until a page has neither."""
        edge_path, edge_params = edge or (path, params)
        url: str = path
        query: dict[str, str] | None = params
        seen: set[str] = set()
        while True:
            body = self._get(url, query, waba_id)
            page = body.get(unwrap) if unwrap else body
            if unwrap and page is None:
                return  # Meta omits the field when there is nothing to report
            if not isinstance(page, dict):
                raise GraphError("malformed", f"{unwrap or 'answer'} is not an object")
            yield page
            paging = page.get("paging") if isinstance(page.get("paging"), dict) else {}
            assert isinstance(paging, dict)
            after = (paging.get("cursors") or {}).get("after")
            following = paging.get("next")
            if not following:
                return
            if isinstance(following, str) and self._same_host(following):
                url, query = following, None
            elif after:
                url, query = edge_path, {**edge_params, "after": str(after)}
            else:
                return
            key = f"{url}|{query}"
            if key in seen:
                raise GraphError("malformed", "paging does not advance")
            seen.add(key)
            # Pages after the first are the edge, whichever form the first request used.
            unwrap = None

    def _same_host(self, url: str) -> bool:
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    # --- the two reads --------------------------------------------------------------------------

    def phone_numbers(self, waba_id: str) -> list[PhoneNumber]:
        params = {"fields": "id,display_phone_number,verified_name", "limit": "100"}
        out: list[PhoneNumber] = []
        for page in self._pages(f"/{self.version}/{waba_id}/phone_numbers", params, waba_id):
            for item in page.get("data") or []:
                try:
                    out.append(
                        PhoneNumber(
                            phone_number_id=str(item["id"]),
                            display_phone_number=str(item["display_phone_number"]),
                            verified_name=item.get("verified_name"),
                        )
                    )
                except (KeyError, TypeError):
                    raise GraphError("malformed", "a phone number without id or number") from None
        return out

    def pricing_analytics(
        self, waba_id: str, start: int, end: int, *, form: str = "fields"
    ) -> list[DataPoint]:
        """Every HALF_HOUR data point of [start, end) with all dimensions, all pages.

        `form` is `fields` (field expansion on the WABA node, Meta's documented form) or `edge`.
        """
        filters = {
            "start": str(start),
            "end": str(end),
            "granularity": "HALF_HOUR",
            "dimensions": DIMENSIONS,
        }
        if form == "edge":
            pages = self._pages(f"/{self.version}/{waba_id}/pricing_analytics", filters, waba_id)
        else:
            expansion = "".join(f".{k}({v})" for k, v in filters.items())
            pages = self._pages(
                f"/{self.version}/{waba_id}",
                {"fields": f"pricing_analytics{expansion}"},
                waba_id,
                unwrap="pricing_analytics",
                edge=(f"/{self.version}/{waba_id}/pricing_analytics", filters),
            )
        points: list[DataPoint] = []
        for page in pages:
            for block in page.get("data") or []:
                for raw in (block or {}).get("data_points") or []:
                    points.append(_point(raw))
        return points


def _point(raw: Any) -> DataPoint:
    try:
        cost = raw.get("cost")
        return DataPoint(
            start=int(raw["start"]),
            phone_number=str(raw.get("phone_number") or ""),
            country=str(raw.get("country") or ""),
            category=str(raw.get("pricing_category") or ""),
            pricing_type=str(raw.get("pricing_type") or ""),
            tier=str(raw.get("tier") or ""),
            volume=int(raw["volume"]),
            cost=None if cost is None else float(cost),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise GraphError("malformed", "a data point without start or volume") from None
