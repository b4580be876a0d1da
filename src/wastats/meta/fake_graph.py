"""A fake of the parts of Meta's Graph API that wastats reads, as a real HTTP server.

Meta's Graph API is outside this machine, so tests, the benchmark and the README walk-through
talk to this instead: a Starlette app serving the documented shapes (reference notes, section 5,
and the fixture `meta-docs__pricing-analytics-response.json`) from data it is given or generates:

* `GET /{version}/{waba_id}/phone_numbers`: the WABA's numbers, paged.
* `GET /{version}/{waba_id}?fields=pricing_analytics.start(..).end(..)...`: field expansion.
* `GET /{version}/{waba_id}/pricing_analytics?start=..&end=..`: the same data as an edge.

Both forms page with `paging.cursors.after` and `paging.next` (which, like Meta's, is an
absolute URL to the edge). Faults are switched per test, in process (`FakeGraph.fail`) or over
HTTP (`POST /_fake/fault`, for a fake in another process): expired token (190), missing
permission (200 or 10), unknown WABA (100/33), rate limit (4 or 80007, with
`X-Business-Use-Case-Usage`), 5xx, a hanging answer and malformed JSON.

Run it with `wastats dev fake-graph` (docs/meta-record.md).
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SLOT = 1800
DAY = 86400
MAX_SPAN_SECONDS = 31 * DAY
"""Longest `start`..`end` span the fake accepts for HALF_HOUR granularity. Meta does not
document its limit; refusing long spans keeps the client honest about chunking."""

FAULTS = (
    "expired_token",
    "permission",
    "permission_10",
    "unknown_waba",
    "rate_limit",
    "rate_limit_app",
    "server_error",
    "hang",
    "malformed",
)


@dataclass(frozen=True, slots=True)
class FakeNumber:
    phone_number_id: str
    display_phone_number: str
    """As Meta shows it, e.g. `+1 631-555-0101`; data points carry the digits only."""
    verified_name: str

    @property
    def digits(self) -> str:
        return re.sub(r"\D", "", self.display_phone_number)


@dataclass(slots=True)
class FakePoint:
    """One `pricing_analytics` data point at HALF_HOUR granularity."""

    start: int
    phone_number: str
    country: str
    pricing_category: str
    pricing_type: str
    volume: int
    cost: float | None = None
    tier: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start,
            "end": self.start + SLOT,
            "phone_number": self.phone_number,
            "country": self.country,
            "pricing_type": self.pricing_type,
            "pricing_category": self.pricing_category,
            "volume": self.volume,
        }
        if self.tier is not None:
            out["tier"] = self.tier
        if self.cost is not None:
            out["cost"] = self.cost
        return out


@dataclass(slots=True)
class FakeWaba:
    waba_id: str
    numbers: list[FakeNumber] = field(default_factory=list)
    points: list[FakePoint] = field(default_factory=list)
    generated_per_day: int = 0
    """If > 0, besides `points`, this many data points per number and UTC day are generated
    (deterministically from the WABA, number and day), for benchmarks and the walk-through."""
    with_cost: bool = True
    token: str | None = None
    """The token that may read this WABA (a business's own system user); None: the fake's."""


@dataclass(slots=True)
class Fault:
    kind: str
    times: int | None = None
    """How many more requests get the fault; None: every request until cleared."""
    regain_minutes: int = 2


@dataclass(slots=True)
class FakeGraph:
    """The fake's state. Tests change it directly (it is read under a lock per request)."""

    token: str = "fake-token"
    wabas: dict[str, FakeWaba] = field(default_factory=dict)
    page_size: int = 500
    fault: Fault | None = None
    requests: list[str] = field(default_factory=list)
    """Path and query of every request, for tests that check what the client asked."""
    tokens_used: list[tuple[str, str]] = field(default_factory=list)
    """(WABA id, bearer token) of every request, for tests that check which token was sent."""
    expired: set[str] = field(default_factory=set)
    """Tokens answered with error 190 (session expired), whatever WABA they ask for."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    unhang: threading.Event = field(default_factory=threading.Event)
    """Set it to end every hanging answer (before stopping the server)."""

    def fail(self, kind: str | None, times: int | None = None, regain_minutes: int = 2) -> None:
        """Answer the next `times` requests (all, if None) with fault `kind`; None clears."""
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        with self.lock:
            self.fault = None if kind is None else Fault(kind, times, regain_minutes)

    def add_waba(self, waba: FakeWaba) -> FakeWaba:
        self.wabas[waba.waba_id] = waba
        return waba

    def _take_fault(self) -> Fault | None:
        with self.lock:
            fault = self.fault
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.fault = None
            return fault


def generated_points(waba: FakeWaba, start: int, end: int) -> list[FakePoint]:
    """The data points of `waba` with start <= slot < end: its own plus the generated ones."""
    out = [p for p in waba.points if start <= p.start < end]
    if waba.generated_per_day <= 0:
        return out
    first_day = start - start % DAY
    categories = (
        ("MARKETING", "REGULAR", "0:MAX", 0.0125),
        ("UTILITY", "REGULAR", "0:250000", 0.004),
        ("AUTHENTICATION", "REGULAR", "0:250000", 0.004),
        ("SERVICE", "FREE_CUSTOMER_SERVICE", None, 0.0),
    )
    for number in waba.numbers:
        for day in range(first_day, end, DAY):
            rng = random.Random(f"{waba.waba_id}/{number.phone_number_id}/{day}")
            slots = sorted(rng.sample(range(48), min(48, waba.generated_per_day)))
            for slot in slots:
                # Every draw is made whatever the range asked, so a day's points are the same
                # whichever span they are read in.
                at = day + slot * SLOT
                category, pricing_type, tier, rate = categories[rng.randrange(len(categories))]
                volume = rng.randint(1, 40)
                country = rng.choice(("US", "IL", "IN", "BR"))
                if not start <= at < end:
                    continue
                out.append(
                    FakePoint(
                        start=at,
                        phone_number=number.digits,
                        country=country,
                        pricing_category=category,
                        pricing_type=pricing_type,
                        volume=volume,
                        cost=round(volume * rate, 4) if waba.with_cost else None,
                        tier=tier,
                    )
                )
    return out


def _error(status: int, code: int, message: str, *, subcode: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AfakeTraceId",
    }
    if subcode is not None:
        body["error_subcode"] = subcode
    return JSONResponse({"error": body}, status_code=status)


async def _fault_answer(state: FakeGraph, fault: Fault, waba_id: str) -> Response:
    kind = fault.kind
    if kind == "expired_token":
        return _error(401, 190, "Error validating access token: Session has expired.", subcode=463)
    if kind == "permission":
        return _error(403, 200, "(#200) Requires whatsapp_business_management permission")
    if kind == "permission_10":
        return _error(403, 10, "(#10) Application does not have permission for this action")
    if kind == "unknown_waba":
        return _error(
            400,
            100,
            f"Unsupported get request. Object with ID '{waba_id}' does not exist",
            subcode=33,
        )
    if kind in ("rate_limit", "rate_limit_app"):
        usage = {
            waba_id: [
                {
                    "type": "whatsapp_business_management",
                    "call_count": 100,
                    "total_cputime": 12,
                    "total_time": 30,
                    "estimated_time_to_regain_access": fault.regain_minutes,
                }
            ]
        }
        code = 80007 if kind == "rate_limit" else 4
        response = _error(400, code, "(#80007) Rate limit hit for the WhatsApp Business Account")
        response.headers["X-Business-Use-Case-Usage"] = json.dumps(usage)
        return response
    if kind == "server_error":
        return _error(500, 2, "An unexpected error has occurred. Please retry your request.")
    if kind == "hang":
        # Until released (tests) or for a long time: the client's timeout must end it.
        await anyio.to_thread.run_sync(state.unhang.wait, 600.0)
        return JSONResponse({"data": []})
    return Response(
        b'{"pricing_analytics": {"data": [{"data_points": [', media_type="application/json"
    )


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    return token or request.query_params.get("access_token", "")


def _authorized(state: FakeGraph, token: str, waba_id: str) -> bool:
    """The fake's token reads every WABA without a token of its own; a WABA's own token reads
    that WABA (like a business's system user, which sees only its business's WABAs)."""
    waba = state.wabas.get(waba_id)
    if waba is not None and waba.token is not None:
        return token == waba.token
    return token == state.token


_EXPANSION = re.compile(r"(\w+)\(([^()]*(?:\[[^\]]*\])?[^()]*)\)")


def _parse_expansion(fields: str) -> tuple[str, dict[str, str]]:
    """`pricing_analytics.start(1).end(2).granularity(HALF_HOUR)` → (name, {filter: value})."""
    name, _, rest = fields.partition(".")
    return name, {m.group(1): m.group(2) for m in _EXPANSION.finditer(rest)}


def _page(
    request: Request, waba_id: str, version: str, items: list[Any], params: dict[str, str]
) -> tuple[list[Any], dict[str, Any]]:
    state: FakeGraph = request.app.state.fake
    try:
        offset = int(params.get("after") or 0)
    except ValueError:
        offset = 0
    page = items[offset : offset + state.page_size]
    paging: dict[str, Any] = {"cursors": {"before": str(offset), "after": str(offset + len(page))}}
    if offset + len(page) < len(items):
        edge = params.get("_edge", "")
        kept = {k: v for k, v in params.items() if k not in ("after", "_edge")}
        query = urlencode({**kept, "after": str(offset + len(page))})
        base = str(request.base_url).rstrip("/")
        paging["next"] = f"{base}/{version}/{waba_id}/{edge}?{query}"
    return page, paging


def _points_answer(
    request: Request, waba: FakeWaba, version: str, filters: dict[str, str]
) -> tuple[dict[str, Any], JSONResponse | None]:
    try:
        start, end = int(filters["start"]), int(filters["end"])
    except (KeyError, ValueError):
        return {}, _error(400, 100, "(#100) The parameter start is required")
    if filters.get("granularity", "HALF_HOUR") != "HALF_HOUR":
        return {}, _error(400, 100, "(#100) the fake serves only granularity HALF_HOUR")
    if end <= start or end - start > MAX_SPAN_SECONDS:
        return {}, _error(400, 100, "(#100) Param end must be after start, within 31 days")
    points = sorted(generated_points(waba, start, end), key=lambda p: (p.start, p.phone_number))
    page, paging = _page(request, waba.waba_id, version, [p.as_json() for p in points], {**filters})
    return {"data": [{"data_points": page}], "paging": paging}, None


async def _waba_node(request: Request) -> Response:
    state: FakeGraph = request.app.state.fake
    version, waba_id = request.path_params["version"], request.path_params["waba_id"]
    edge = request.path_params.get("edge", "")
    state.requests.append(f"{request.url.path}?{request.url.query}")
    token = _bearer(request)
    with state.lock:
        state.tokens_used.append((waba_id, token))
    if token in state.expired:
        return _error(401, 190, "Error validating access token: Session has expired.", subcode=463)
    if not _authorized(state, token, waba_id):
        return _error(400, 190, "Invalid OAuth access token - Cannot parse access token")
    fault = state._take_fault()
    if fault is not None:
        return await _fault_answer(state, fault, waba_id)
    waba = state.wabas.get(waba_id)
    if waba is None:
        return _error(400, 100, f"Object with ID '{waba_id}' does not exist", subcode=33)
    params = dict(request.query_params)
    params.pop("access_token", None)
    if edge == "phone_numbers":
        numbers = [
            {
                "verified_name": n.verified_name,
                "display_phone_number": n.display_phone_number,
                "id": n.phone_number_id,
                "quality_rating": "GREEN",
                "platform_type": "CLOUD_API",
            }
            for n in waba.numbers
        ]
        page, paging = _page(request, waba_id, version, numbers, {**params, "_edge": edge})
        return JSONResponse({"data": page, "paging": paging})
    if edge == "pricing_analytics":
        body, error = _points_answer(request, waba, version, {**params, "_edge": edge})
        return error or JSONResponse(body)
    if edge:
        return _error(400, 100, f"Unknown edge {edge}")
    name, filters = _parse_expansion(params.get("fields", ""))
    if name != "pricing_analytics":
        return JSONResponse({"id": waba_id})
    body, error = _points_answer(request, waba, version, {**filters, "_edge": "pricing_analytics"})
    return error or JSONResponse({"pricing_analytics": body, "id": waba_id})


async def _set_fault(request: Request) -> Response:
    state: FakeGraph = request.app.state.fake
    body = await request.json()
    try:
        state.fail(body.get("kind"), body.get("times"), int(body.get("regain_minutes", 2)))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"fault": body.get("kind")})


def create_fake_graph(state: FakeGraph | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/_fake/fault", _set_fault, methods=["POST"]),
            Route("/{version}/{waba_id}", _waba_node),
            Route("/{version}/{waba_id}/{edge}", _waba_node),
        ]
    )
    app.state.fake = state or FakeGraph()
    return app


def demo_state(*, token: str, wabas: int = 1, numbers: int = 3, per_day: int = 6) -> FakeGraph:
    """A fake with `wabas` WABAs of `numbers` numbers each and generated data (walk-through,
    benchmark). WABA ids are 1000, 1001, ...; phone-number ids 200000, ...; numbers
    +1 555-0000000, +1 555-0000001, ..."""
    state = FakeGraph(token=token)
    for w in range(wabas):
        waba = FakeWaba(waba_id=str(1000 + w), generated_per_day=per_day)
        for n in range(numbers):
            k = w * numbers + n
            waba.numbers.append(
                FakeNumber(
                    phone_number_id=str(200000 + k),
                    display_phone_number=f"+1 555-0{k:06d}",
                    verified_name=f"Demo shop {w}-{n}",
                )
            )
        state.add_waba(waba)
    return state
