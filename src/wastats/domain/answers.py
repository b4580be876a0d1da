"""The answers of both HTTP APIs, one model each: the server builds them, `wastats stats` prints
them, `wastats.client` parses them. So the OpenAPI document, the bytes on the wire, the CLI's
table and the client's types cannot drift apart.

Python names are snake_case; the wire names (the compatible API's camelCase, `from`, `list`)
are aliases, which the server writes (`by_alias=True`) and the client reads. Models are frozen
values; unknown fields are ignored, so a client keeps working against a newer service that
answers with more fields.

This module imports only pydantic, the standard library and `csvsafe` (standard library only):
the client, which may be installed without the server's dependencies in mind, imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from wastats.domain.csvsafe import csv_line

__all__ = [
    "AccessToken", "ConversationsStatistics", "Cost", "Counts", "Failure", "MonthStatistics",
    "Number", "Numbers", "Problem", "Reconciliation", "ReconciliationRow",
    "ReconciliationSummary", "Stats", "StatsRow", "UniqueCustomers", "WhatsAppNumber",
    "WhatsAppNumbers", "csv_lines", "reconciliation_csv_lines",
]  # fmt: skip


class Answer(BaseModel):
    """Base of every answer model."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    def wire_json(self) -> bytes:
        """The answer as the service sends it: wire names, only the fields that were set (a
        row has `number` only when grouped by number), compact UTF-8 JSON.

        Hence the rule of these models: a field has a default only if it is None and means
        "absent from this answer"; a default of any other value would silently not be sent."""
        return self.model_dump_json(by_alias=True, exclude_unset=True).encode()


# `start`/`end` keep the zone's offset as `datetime.isoformat` writes it (`+00:00` for UTC,
# where pydantic would write `Z`); `as_of` is always UTC, written with `Z`.
_OffsetTime = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
_UtcTime = Annotated[
    datetime,
    PlainSerializer(
        lambda value: value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        return_type=str,
        when_used="json",
    ),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# --- the compatible partners API (spec/partners-api.md) ------------------------------------------


class Failure(Answer):
    """An in-band failure of the compatible API: HTTP 200, `status: "FAIL"`."""

    status: Literal["FAIL"]
    reason: int = Field(examples=[3])
    message: str = Field(description="one line, for people")


class AccessToken(Answer):
    """`POST /api/settings/accessToken`."""

    status: str = Field(examples=["OK"])
    access_token: str
    expiration_time: str = Field(description="Unix seconds, as a string", examples=["1731842931"])
    token_type: str = Field(examples=["Bearer"])
    reason: int = Field(examples=[1])


class MonthStatistics(Answer):
    """One month of `getConversationsStatistics`."""

    month_year: str = Field(alias="monthYear", description="`mmyyyy`", examples=["012025"])
    total_conversations: int = Field(alias="totalConversations")
    total_marketing: int = Field(alias="totalMarketing")
    total_service: int = Field(alias="totalService")
    total_incoming: int = Field(alias="totalIncoming")

    @property
    def month(self) -> date:
        """The first day of the month."""
        return date(int(self.month_year[2:]), int(self.month_year[:2]), 1)


class ConversationsStatistics(Answer):
    """`GET /api/whatsapp/getConversationsStatistics`."""

    status: str
    reason: int
    total_whatsapp: int = Field(alias="totalWhatsApp")
    whatsapp: str | None
    months: tuple[MonthStatistics, ...] = Field(alias="list", description="newest first")


class WhatsAppNumber(Answer):
    """One number of `getWhatsApp`, with this month's counts."""

    create_time: int
    whatsapp: str
    display_name: str
    business_name: str
    coexistence: int = Field(description="1 for a number shared with the WhatsApp Business app")
    conversations_this_month: int = Field(alias="conversationsThisMonth")
    marketing_this_month: int = Field(alias="marketingThisMonth")
    service_this_month: int = Field(alias="serviceThisMonth")
    incoming_this_month: int = Field(alias="incomingThisMonth")


class WhatsAppNumbers(Answer):
    """`GET /api/whatsapp/getWhatsApp`."""

    status: str
    reason: int
    total_whatsapp: int = Field(alias="totalWhatsApp")
    total_conversations_this_month: int = Field(alias="totalConversationsThisMonth")
    total_marketing_this_month: int = Field(alias="totalMarketingThisMonth")
    total_service_this_month: int = Field(alias="totalServiceThisMonth")
    total_incoming_this_month: int = Field(alias="totalIncomingThisMonth")
    numbers: tuple[WhatsAppNumber, ...] = Field(alias="list")


# --- the /v1 API (docs/api-v1.md) ----------------------------------------------------------------


class Problem(Answer):
    """RFC 9457 problem details: every error answer outside the compatible API."""

    type: str = Field(examples=["about:blank"])
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None


class UniqueCustomers(Answer):
    marketing: int
    service: int
    incoming: int
    total: int


class Counts(Answer):
    """The counts of a `/v1/stats` row or of its totals."""

    marketing: int = Field(examples=[10])
    service: int = Field(examples=[1])
    incoming: int = Field(examples=[25])
    total: int = Field(description="marketing + service + incoming", examples=[36])
    uncounted: int = Field(description="units in none of the three buckets", examples=[4])
    unique_customers: UniqueCustomers | None = Field(
        default=None, description="only with unique=true"
    )


class Cost(Answer):
    """What a row's messages cost (docs/meta-record.md, "Cost"), labelled by `source`: Meta's
    own figure (`meta`, in the WABA's currency, which Meta's analytics do not name: `currency`
    null), an estimate from the rate card (`estimate`, in the card's `currency`), or both
    (`meta+estimate`: two figures, never summed, since they may be in two currencies)."""

    source: Literal["meta", "estimate", "meta+estimate"]
    amount: float | None = Field(default=None, description="with source meta or estimate")
    meta: float | None = Field(default=None, description="with source meta+estimate")
    estimate: float | None = Field(default=None, description="with source meta+estimate")
    currency: str | None = Field(description="the estimate's currency; null for Meta's alone")

    @property
    def meta_amount(self) -> float | None:
        """Meta's figure, whichever shape carries it."""
        return self.amount if self.source == "meta" else self.meta

    @property
    def estimate_amount(self) -> float | None:
        """The estimate, whichever shape carries it."""
        return self.amount if self.source == "estimate" else self.estimate


class StatsRow(Counts):
    # Meta's record (docs/meta-record.md): set only once a WABA of the account is linked.
    incoming: int | None = Field(  # type: ignore[assignment]
        examples=[25], description="null for rows only Meta reported (it has no Incoming)"
    )
    source: str | None = Field(
        default=None,
        description="observed, reported or observed+reported (once a WABA is linked)",
    )
    cost: Cost | None = Field(
        default=None, description="Meta's cost or an estimate, labelled by `source`"
    )
    period: str = Field(description="`2025-01`, `2025-W03` or `2025-01-15`", examples=["2025-01"])
    start: _OffsetTime = Field(examples=["2025-01-01T00:00:00+02:00"])
    end: _OffsetTime = Field(examples=["2025-02-01T00:00:00+02:00"])
    final: bool = Field(description="the period ended at least 48 hours ago")
    # Present only when grouped by them.
    number: str | None = Field(default=None, description="with group_by=number")
    country: str | None = Field(default=None, description="with group_by=country")
    category: str | None = Field(default=None, description="with group_by=category")
    pricing: str | None = Field(default=None, description="with group_by=category")


class Stats(Answer):
    """`GET /v1/stats`."""

    tz: str = Field(examples=["Asia/Jerusalem"])
    from_: date = Field(alias="from", examples=["2025-01-01"])
    to: date = Field(examples=["2025-02-28"])
    granularity: str = Field(examples=["month"])
    group_by: tuple[str, ...] = Field(examples=[["number"]])
    numbers: tuple[str, ...] = Field(examples=[["972501234567"]])
    as_of: _UtcTime | None = Field(examples=["2025-02-28T21:59:58Z"])
    rules_version: int = Field(examples=[1])
    totals: Counts
    rows: tuple[StatsRow, ...]


class Number(Answer):
    """One number of `/v1/numbers`."""

    whatsapp: str
    phone_number_id: str
    waba_id: str | None
    display_name: str | None
    business_name: str | None
    coexistence: bool
    created_at: int = Field(description="registration time, Unix seconds")


class Numbers(Answer):
    """`GET /v1/numbers`."""

    numbers: tuple[Number, ...]


_CSV_CHUNK_ROWS = 500


# --- /v1/reconciliation (docs/meta-record.md, "Reconciliation") ------------------------------


class ReconciliationRow(Answer):
    """One period, number, category and pricing type: our count against Meta's."""

    period: str = Field(description="`2026-03` or `2026-03-15`", examples=["2026-03"])
    start: _OffsetTime = Field(examples=["2026-03-01T00:00:00+02:00"])
    end: _OffsetTime = Field(examples=["2026-04-01T00:00:00+03:00"])
    number: str = Field(examples=["972501234567"])
    category: str = Field(examples=["marketing"])
    pricing_type: str = Field(examples=["regular"])
    observed: int = Field(description="delivered messages counted from webhooks", examples=[120])
    reported: int = Field(description="Meta's reported volume", examples=[123])
    difference: int = Field(description="observed - reported", examples=[-3])
    verdict: Literal[
        "match", "collection gap", "not yet reported", "outside Meta's window", "differs"
    ] = Field(examples=["collection gap"])
    cost: Cost | None = Field(description="what Meta's reported volume cost; null if nothing")


class ReconciliationAccountSummary(Answer):
    """The comparable rows (not `not yet reported`, not `outside Meta's window`) summed."""

    observed: int
    reported: int
    coverage: float | None = Field(
        description="share of reported volume also observed; null when nothing was reported",
        examples=[0.976],
    )
    absolute_difference: int
    matching_rows: int
    rows: int
    matching_periods: int
    periods: int


class ReconciliationNumberSummary(Answer):
    """One number's comparable rows summed (the fields of the account's, `number` first:
    pydantic puts a parent's fields first, so this is not a subclass)."""

    number: str = Field(examples=["972501234567"])
    observed: int
    reported: int
    coverage: float | None = Field(
        description="share of reported volume also observed; null when nothing was reported",
        examples=[0.976],
    )
    absolute_difference: int
    matching_rows: int
    rows: int
    matching_periods: int
    periods: int


class ReconciliationSummary(Answer):
    numbers: tuple[ReconciliationNumberSummary, ...]
    account: ReconciliationAccountSummary


class Reconciliation(Answer):
    """`GET /v1/reconciliation`."""

    tz: str = Field(examples=["Asia/Jerusalem"])
    from_: date = Field(alias="from", examples=["2026-01-01"])
    to: date = Field(examples=["2026-11-30"])
    granularity: Literal["day", "month"] = Field(examples=["month"])
    as_of: _UtcTime = Field(examples=["2026-12-04T12:00:00Z"])
    last_sync: _UtcTime | None = Field(description="the last successful sync of the numbers' WABAs")
    approximate: bool = Field(
        description="the zone's offset is not a whole or half hour: half-hour slots straddle "
        "its days, so the periods are approximate"
    )
    rows: tuple[ReconciliationRow, ...]
    summary: ReconciliationSummary

    def wire_json(self) -> bytes:
        """As `Answer.wire_json`, but numbers written by Python's `json` (`1e-06`, where
        pydantic writes `1e-6`): the bytes this answer had before it was a model, which
        clients may compare or hash."""
        return json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_unset=True),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode()


_RECONCILIATION_COLUMNS = (
    "period", "start", "end", "number", "category", "pricing_type", "observed", "reported",
    "difference", "verdict", "cost_source", "cost_meta", "cost_estimate",
    "cost_estimate_currency",
)  # fmt: skip


def reconciliation_csv_lines(answer: Reconciliation) -> Iterator[str]:
    """`/v1/reconciliation?format=csv` (and `wastats reconcile --csv`): one line per row, cells
    through `csvsafe.csv_line` like every CSV wastats writes."""
    chunk = [csv_line(_RECONCILIATION_COLUMNS)]
    for r in answer.rows:
        cells: list[Any] = [r.period, r.start.isoformat(), r.end.isoformat(), r.number]
        cells += [r.category, r.pricing_type, r.observed, r.reported, r.difference, r.verdict]
        chunk.append(csv_line(cells + _cost_cells(r.cost)))
        if len(chunk) >= _CSV_CHUNK_ROWS:
            yield "".join(chunk)
            chunk.clear()
    yield "".join(chunk)


def _cost_cells(cost: Cost | None) -> list[Any]:
    """`cost_source, cost_meta, cost_estimate, cost_estimate_currency`: empty cells for no
    cost, so a spreadsheet sums each figure column without mixing Meta's with estimates."""
    if cost is None:
        return ["", "", "", ""]
    meta, estimate = cost.meta_amount, cost.estimate_amount
    return [
        cost.source,
        "" if meta is None else meta,
        "" if estimate is None else estimate,
        cost.currency if estimate is not None and cost.currency else "",
    ]


# --- the CSV form of /v1/stats ---------------------------------------------------------------

_COUNTS = ("marketing", "service", "incoming", "total", "uncounted")
_UNIQUE = ("marketing", "service", "incoming", "total")
# Meta's record (docs/meta-record.md): always present, empty until a WABA is linked, so a
# reader's columns do not move when one is.
_META = ("source", "cost_source", "cost_meta", "cost_estimate", "cost_estimate_currency")


def csv_header(stats: Stats) -> list[str]:
    """The column names: the grouping columns and the unique counts only when asked for."""
    columns = ["period", "start", "end", "final"]
    columns += [g for g in ("number", "country") if g in stats.group_by]
    if "category" in stats.group_by:
        columns += ["category", "pricing"]
    columns += list(_COUNTS)
    if stats.totals.unique_customers is not None:
        columns += [f"unique_{k}" for k in _UNIQUE]
    return columns + list(_META)


def csv_record(stats: Stats, row: StatsRow) -> list[Any]:
    """One row's cells, in `csv_header`'s order."""
    cells: list[Any] = [row.period, row.start.isoformat(), row.end.isoformat()]
    cells.append("true" if row.final else "false")
    cells += [getattr(row, g) or "" for g in ("number", "country") if g in stats.group_by]
    if "category" in stats.group_by:
        cells += [row.category, row.pricing]
    # Incoming is null (unknown) in rows only Meta reported: an empty cell, not 0.
    cells += ["" if getattr(row, k) is None else getattr(row, k) for k in _COUNTS]
    if stats.totals.unique_customers is not None:
        # A row only Meta reported has no customers to count: empty cells keep the columns.
        customers = row.unique_customers
        cells += [getattr(customers, k) if customers else "" for k in _UNIQUE]
    return [*cells, row.source or "", *_cost_cells(row.cost)]


def csv_lines(stats: Stats) -> Iterator[str]:
    """The `/v1/stats` answer as CSV text, in chunks of a few hundred lines (the API streams
    them; `wastats stats --csv` prints them): the one place CSV is written, so a download and
    the CLI's output are the same bytes. Every line comes from `csvsafe.csv_line`, so no cell
    from a webhook runs as a spreadsheet formula."""
    chunk = [csv_line(csv_header(stats))]
    for row in stats.rows:
        chunk.append(csv_line(csv_record(stats, row)))
        if len(chunk) >= _CSV_CHUNK_ROWS:
            yield "".join(chunk)
            chunk.clear()
    yield "".join(chunk)
