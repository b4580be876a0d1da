"""The answer models (`wastats.domain.answers`) on the wire: the bytes the service sends are the
bytes the hand-built JSON answers were (the compatible API must not change by one byte), and
what the server writes, the client reads back to the same values."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from wastats.domain import answers

counts = st.integers(min_value=0, max_value=2**53)
texts = st.text(max_size=40)  # any Unicode but lone surrogates, control characters included


def starlette_bytes(answer: answers.Answer) -> bytes:
    """What the service sent before the models: the fields as a dict through `JSONResponse`."""
    return bytes(JSONResponse(answer.model_dump(by_alias=True, exclude_unset=True)).body)


@given(
    names=st.lists(st.tuples(texts, texts, st.booleans(), counts, counts, counts), max_size=5),
    when=st.integers(min_value=0, max_value=2**40),
)
def test_get_whatsapp_bytes_are_unchanged(
    names: list[tuple[str, str, bool, int, int, int]], when: int
) -> None:
    items = tuple(
        answers.WhatsAppNumber(
            create_time=when, whatsapp="972501234567", display_name=display,
            business_name=business, coexistence=int(shared),
            conversations_this_month=m + s + i, marketing_this_month=m, service_this_month=s,
            incoming_this_month=i,
        )
        for display, business, shared, m, s, i in names
    )  # fmt: skip
    answer = answers.WhatsAppNumbers(
        status="OK", reason=1, total_whatsapp=len(items),
        total_conversations_this_month=sum(n.conversations_this_month for n in items),
        total_marketing_this_month=sum(n.marketing_this_month for n in items),
        total_service_this_month=sum(n.service_this_month for n in items),
        total_incoming_this_month=sum(n.incoming_this_month for n in items),
        numbers=items,
    )  # fmt: skip
    assert answer.wire_json() == starlette_bytes(answer)
    assert answers.WhatsAppNumbers.model_validate_json(answer.wire_json()) == answer


@given(
    months=st.lists(st.tuples(counts, counts, counts), max_size=24),
    whatsapp=st.none() | st.from_regex(r"[0-9]{8,15}", fullmatch=True),
    message=texts,
)
def test_statistics_and_failure_bytes_are_unchanged(
    months: list[tuple[int, int, int]], whatsapp: str | None, message: str
) -> None:
    answer = answers.ConversationsStatistics(
        status="OK", reason=1, total_whatsapp=1, whatsapp=whatsapp,
        months=tuple(
            answers.MonthStatistics(month_year="012025", total_conversations=m + s + i,
                                    total_marketing=m, total_service=s, total_incoming=i)
            for m, s, i in months
        ),
    )  # fmt: skip
    assert answer.wire_json() == starlette_bytes(answer)
    # `whatsapp: null` is sent, not left out, when the answer covers every number.
    assert (b'"whatsapp":null' in answer.wire_json()) == (whatsapp is None)
    failure = answers.Failure(status="FAIL", reason=27, message=message)
    assert failure.wire_json() == starlette_bytes(failure)


def test_the_exact_bytes_of_a_statistics_answer() -> None:
    # As spec/partners-api.md shows it: field order and names are the contract.
    answer = answers.ConversationsStatistics(
        status="OK", reason=1, total_whatsapp=2, whatsapp=None,
        months=(answers.MonthStatistics(month_year="012025", total_conversations=12530,
                                        total_marketing=10200, total_service=1000,
                                        total_incoming=1330),),
    )  # fmt: skip
    assert answer.wire_json() == (
        b'{"status":"OK","reason":1,"totalWhatsApp":2,"whatsapp":null,"list":[{"monthYear":'
        b'"012025","totalConversations":12530,"totalMarketing":10200,"totalService":1000,'
        b'"totalIncoming":1330}]}'
    )


def _stats(zone: str, *, grouped: bool, unique: bool) -> answers.Stats:
    tz = ZoneInfo(zone)
    unique_customers = answers.UniqueCustomers(marketing=1, service=0, incoming=2, total=2)
    extra: dict[str, object] = {"unique_customers": unique_customers} if unique else {}
    groups: dict[str, object] = (
        {"number": "972501234567", "country": None, "category": "service",
         "pricing": "free_customer_service"} if grouped else {}
    )  # fmt: skip
    row = answers.StatsRow.model_validate(
        {"period": "2025-03", "start": datetime(2025, 3, 1, tzinfo=tz),
         "end": datetime(2025, 4, 1, tzinfo=tz), "final": True, "marketing": 1, "service": 0,
         "incoming": 2, "total": 3, "uncounted": 1, **groups, **extra}
    )  # fmt: skip
    totals = answers.Counts.model_validate(
        {"marketing": 1, "service": 0, "incoming": 2, "total": 3, "uncounted": 1, **extra}
    )
    return answers.Stats(
        tz=zone, from_=date(2025, 3, 1), to=date(2025, 3, 31), granularity="month",
        group_by=("number", "country", "category") if grouped else (),
        numbers=("972501234567",), as_of=datetime(2025, 3, 31, 21, 59, 58, tzinfo=UTC),
        rules_version=1, totals=totals, rows=(row,),
    )  # fmt: skip


def test_v1_times_keep_their_offset_and_the_client_reads_them_back() -> None:
    for zone, offset in (("UTC", "+00:00"), ("Asia/Jerusalem", "+02:00")):
        stats = _stats(zone, grouped=True, unique=True)
        wire = stats.wire_json().decode()
        # `+00:00`, not pydantic's `Z`: the zone's offset as the docs show it; as_of is UTC.
        assert f'"start":"2025-03-01T00:00:00{offset}"' in wire
        assert '"as_of":"2025-03-31T21:59:58Z"' in wire
        assert '"from":"2025-03-01"' in wire
        assert answers.Stats.model_validate_json(wire) == stats


def test_v1_fields_of_groups_not_asked_for_are_absent() -> None:
    plain = _stats("UTC", grouped=False, unique=False).wire_json().decode()
    for field in ("number", "country", "category", "pricing", "unique_customers"):
        assert f'"{field}"' not in plain
    grouped = _stats("UTC", grouped=True, unique=False).wire_json().decode()
    assert '"country":null' in grouped  # asked for and unknown: null, not absent


def test_csv_columns_follow_the_groups_and_unique() -> None:
    text = "".join(answers.csv_lines(_stats("Asia/Jerusalem", grouped=True, unique=True)))
    assert text == (
        "period,start,end,final,number,country,category,pricing,marketing,service,incoming,"
        "total,uncounted,unique_marketing,unique_service,unique_incoming,unique_total,"
        "source,cost_source,cost_meta,cost_estimate,cost_estimate_currency\n"
        "2025-03,2025-03-01T00:00:00+02:00,2025-04-01T00:00:00+03:00,true,972501234567,,"
        "service,free_customer_service,1,0,2,3,1,1,0,2,2,,,,,\n"
    )
    plain = "".join(answers.csv_lines(_stats("UTC", grouped=False, unique=False)))
    # Meta's record's columns are always there (empty until a WABA is linked).
    assert plain.splitlines()[0] == (
        "period,start,end,final,marketing,service,incoming,total,uncounted,"
        "source,cost_source,cost_meta,cost_estimate,cost_estimate_currency"
    )


@pytest.mark.parametrize(
    ("cost", "cells"),
    [
        (None, ["", "", "", ""]),
        ({"source": "meta", "amount": 0.125, "currency": None}, ["meta", "0.125", "", ""]),
        (
            {"source": "estimate", "amount": 1e-06, "currency": "USD"},
            ["estimate", "", "1e-06", "USD"],
        ),
        (
            {"source": "meta+estimate", "meta": 0.075, "estimate": 0.008, "currency": "EUR"},
            ["meta+estimate", "0.075", "0.008", "EUR"],
        ),
    ],
)
def test_csv_of_a_row_only_meta_reported(cost: dict[str, object] | None, cells: list[str]) -> None:
    """Meta's record in the CSV: Incoming unknown (null) is an empty cell, not 0; a reported
    row has no unique customers, yet its cells stay under their columns; each cost figure has
    its own column, never summed with the other."""
    stats = _stats("UTC", grouped=False, unique=True)
    reported = stats.rows[0].model_copy(
        update={"incoming": None, "total": 1, "unique_customers": None, "source": "reported",
                "cost": None if cost is None else answers.Cost.model_validate(cost)}
    )  # fmt: skip
    lines = list(csv.reader(io.StringIO("".join(answers.csv_lines(
        stats.model_copy(update={"rows": (reported,)})
    )))))  # fmt: skip
    header, row = lines
    assert len(row) == len(header)
    record = dict(zip(header, row, strict=True))
    assert (record["incoming"], record["unique_total"], record["source"]) == ("", "", "reported")
    assert [record[k] for k in ("cost_source", "cost_meta", "cost_estimate")] == cells[:3]
    assert record["cost_estimate_currency"] == cells[3]
