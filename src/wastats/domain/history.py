"""Meta's record in `/v1/stats` (spec/meta-record.md, "History" and "Cost").

`merge_reported` takes the observed answer (`answers.Stats`, dumped as its JSON object) and
adds, without changing how that answer is computed:

* **History**: for every number, periods that end before its first observation are answered
  from Meta's reported volume (Rule P's mapping: Marketing, Service, the rest uncounted), with
  `source: "reported"` and `incoming: null` (Meta has no counterpart of Incoming). Other rows
  get `source: "observed"`; a row summing both kinds of numbers says `"observed+reported"`.
* **Cost** per row: Meta's `cost` for what Meta reported with one; an estimate (volume × the
  rate card) for what it reported without, and for observed messages in hours the sync has not
  covered yet. `cost.source` says which: `meta`, `estimate` or `meta+estimate`. Meta's cost is
  in the WABA's currency (`currency: null`); estimates are in the card's.

The caller decides whether to call it (a few lines in `api/v1.py`), so the observed-only answer
stays exactly what it was.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Connection

from wastats.counting.calendar import month_bounds, month_of
from wastats.domain import answers
from wastats.domain import ratecard as ratecards
from wastats.domain.accounts import load_zone
from wastats.domain.reporting import (
    FINAL_AFTER_SECONDS,
    AnswerTooLarge,
    Period,
    Question,
    periods_of,
)
from wastats.domain.stats import MonthCounts
from wastats.store import meta as meta_repo
from wastats.store import numbers as numbers_repo
from wastats.store.accounts import AccountRow
from wastats.store.meta import ReportedRow
from wastats.store.numbers import NumberRow

MARKETING = frozenset({"marketing", "marketing_lite", "group_marketing"})
SERVICE = frozenset({"utility", "authentication", "authentication_international", "group_utility"})


def bucket_of(category: str, pricing_type: str) -> str:
    """Rule P's mapping of a reported data point (spec, "Mapping to the buckets")."""
    if pricing_type != "regular":
        return "uncounted"
    if category in MARKETING:
        return "marketing"
    if category in SERVICE:
        return "service"
    return "uncounted"


@dataclass
class Cost:
    meta_micros: int = 0
    has_meta: bool = False
    estimate: float = 0.0
    has_estimate: bool = False
    currency: str | None = None

    def add_reported(self, card: ratecards.RateCard, r: ReportedRow) -> None:
        """Meta's cost of a reported row, or an estimate where Meta gave none."""
        if r.cost_micros is not None:
            self.meta_micros += r.cost_micros
            self.has_meta = True
        else:
            _estimate(self, card, r.country, r.category, r.pricing_type, r.tier, r.slot, r.volume)

    def model(self) -> answers.Cost | None:
        if not (self.has_meta or self.has_estimate):
            return None
        meta = round(self.meta_micros / 1_000_000, 6)
        estimate = round(self.estimate, 6)
        if self.has_meta and self.has_estimate:
            # Two currencies may be involved: give both figures rather than a false sum.
            return answers.Cost(
                source="meta+estimate", meta=meta, estimate=estimate, currency=self.currency
            )
        if self.has_meta:
            return answers.Cost(source="meta", amount=meta, currency=None)
        return answers.Cost(source="estimate", amount=estimate, currency=self.currency)

    def as_dict(self) -> dict[str, object] | None:
        """`model()` as the JSON object of a `/v1/stats` row (only the fields of its shape)."""
        model = self.model()
        return None if model is None else model.model_dump(exclude_unset=True)


@dataclass
class _Reported:
    marketing: int = 0
    service: int = 0
    uncounted: int = 0
    numbers: set[str] = field(default_factory=set)


def current_card(conn: Connection) -> ratecards.RateCard:
    stored = meta_repo.stored_ratecard(conn)
    return ratecards.parse(stored) if stored else ratecards.shipped()


def any_synced(conn: Connection) -> bool:
    """Whether any WABA was ever linked: without one, `merge_reported` changes nothing, and the
    observed answer can be sent as it is."""
    return bool(meta_repo.list_states(conn))


def account_linked(conn: Connection, account_id: int) -> bool:
    """Whether a WABA of one of the account's numbers was ever linked or synced: the dashboard
    asks for Meta's record (source, cost) only then."""
    linked = {s.waba_id for s in meta_repo.list_states(conn)}
    return any(n.waba_id in linked for n in numbers_repo.list_numbers(conn, account_id))


def stats_answer(
    conn: Connection,
    q: Question,
    observed: answers.Stats,
    now: int,
    *,
    max_rows: int | None = None,
) -> answers.Stats:
    """`observed` with Meta's record merged in, as a model: for the CSV of `/v1/stats` and for
    `wastats stats`, which show `source` and `cost` as the JSON does. `observed` itself when
    no WABA was ever linked. (The JSON answer encodes `merged_doc`'s object directly.)"""
    merged = merged_doc(conn, q, observed, now, max_rows=max_rows)
    return observed if merged is None else answers.Stats.model_validate(merged)


def merged_doc(
    conn: Connection,
    q: Question,
    observed: answers.Stats,
    now: int,
    *,
    max_rows: int | None = None,
) -> dict[str, object] | None:
    """`observed` as its JSON object with Meta's record merged in, or None when no WABA was ever
    linked (most installations): then the observed answer is the answer, as it is."""
    if not any_synced(conn):
        return None
    doc = observed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return merge_reported(conn, q, doc, now, max_rows=max_rows)


def merge_reported(
    conn: Connection,
    q: Question,
    doc: dict[str, object],
    now: int,
    *,
    max_rows: int | None = None,
) -> dict[str, object]:
    """`doc` with Meta's record merged in (see the module docstring). Unchanged when none of
    the numbers' WABAs was ever linked or synced: no `source`, no estimates from a card the
    operator never asked for.

    With `max_rows`, AnswerTooLarge rather than an answer over the cap: the observed answer
    was checked against it, but reported-only rows (months before the first observation,
    categories or countries only Meta saw) are added here."""
    periods = periods_of(q.first, q.last, q.granularity, q.zone)
    if not periods or not q.numbers:
        return doc
    ids = {n.phone_number_id: n.whatsapp for n in q.numbers}
    states = {s.waba_id: s for s in meta_repo.list_states(conn)}
    covered_to: dict[str, int] = {}
    synced = False
    for pnid, waba_id in meta_repo.wabas_of_numbers_by_id(conn, ids).items():
        state = states.get(waba_id)
        if state is not None:
            synced = True
            if state.covered_to is not None:
                covered_to[pnid] = state.covered_to
    if not synced:
        return doc
    start, end = periods[0].start, periods[-1].end
    first_seen = meta_repo.first_observed(conn, ids)
    card = current_card(conn)
    starts = [p.start for p in periods]

    def period_of(ts: int) -> int:
        lo, hi = 0, len(starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= ts:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def key_of(i: int, number: str, country: str, category: str, pricing: str) -> tuple[str, ...]:
        values = {"number": ids[number], "country": country or None,
                  "category": f"{category}|{pricing}"}  # fmt: skip
        return (periods[i].label, *[str(values[g]) for g in q.group_by])

    reported: dict[tuple[str, ...], _Reported] = defaultdict(_Reported)
    costs: dict[tuple[str, ...], Cost] = defaultdict(Cost)
    # A number moved from another account: its record before the move is the other's.
    moved = {n.phone_number_id: n.counts_from for n in q.numbers if n.counts_from is not None}
    for r in meta_repo.reported_between(conn, ids, start, end):
        if r.slot < moved.get(r.phone_number_id, r.slot):
            continue
        i = period_of(r.slot)
        key = key_of(i, r.phone_number_id, r.country, r.category, r.pricing_type)
        if periods[i].end <= first_seen.get(r.phone_number_id, end + 1):
            bucket = bucket_of(r.category, r.pricing_type)
            rep = reported[key]
            setattr(rep, bucket, getattr(rep, bucket) + r.volume)
            rep.numbers.add(r.phone_number_id)
        costs[key].add_reported(card, r)
    # Observed messages in hours Meta has not reported (or we have not synced) yet: read per
    # number from where its sync stopped, so a synced year costs no scan of its units.
    for pnid in ids:
        since = max(start, covered_to.get(pnid, start), moved.get(pnid, start))
        for number, ts, category, pricing, country in meta_repo.message_units_with_country(
            conn, [pnid], since, end
        ):
            key = key_of(period_of(ts), number, country, category, pricing)
            _estimate(costs[key], card, country, category, pricing, "", ts, 1)
    _merge(doc, q, periods, reported, costs, now, max_rows)
    return doc


def _estimate(
    cost: Cost,
    card: ratecards.RateCard,
    country: str,
    category: str,
    pricing: str,
    tier: str,
    at: int,
    volume: int,
) -> None:
    rate = card.rate(country, category, pricing, tier, at)
    if pricing != "regular" or rate is None:
        return  # free, or no rate (e.g. per-token categories): no estimate rather than a guess
    cost.estimate += rate.rate * volume
    cost.has_estimate = True
    cost.currency = rate.currency


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _row_key(row: dict[str, object], q: Question) -> tuple[str, ...]:
    values = {
        "number": row.get("number"),
        "country": row.get("country"),
        "category": f"{row.get('category')}|{row.get('pricing')}",
    }
    return (str(row["period"]), *[str(values[g]) for g in q.group_by])


def _merge(
    doc: dict[str, object],
    q: Question,
    periods: list[Period],
    reported: dict[tuple[str, ...], _Reported],
    costs: dict[tuple[str, ...], Cost],
    now: int,
    max_rows: int | None,
) -> None:
    rows = doc["rows"]
    assert isinstance(rows, list)
    by_key = {_row_key(row, q): row for row in rows}
    final_by_label = {p.label: p for p in periods}
    for key, rep in reported.items():
        row = by_key.get(key)
        if row is None:
            if max_rows is not None and len(rows) >= max_rows:
                raise AnswerTooLarge("rows", max_rows, max_rows, estimated=False)
            period = final_by_label[key[0]]
            template = {"period": period.label, "start": period.local_start.isoformat(),
                        "end": period.local_end.isoformat(),
                        "final": period.end <= now - FINAL_AFTER_SECONDS}  # fmt: skip
            values = dict(zip(q.group_by, key[1:], strict=True))
            for group in q.group_by:
                if group == "category":
                    template["category"], _, template["pricing"] = values[group].partition("|")
                else:
                    template[group] = None if values[group] == "None" else values[group]
            row = by_key[key] = template | {"marketing": 0, "service": 0, "incoming": 0,
                                            "total": 0, "uncounted": 0}  # fmt: skip
            rows.append(row)
        observed = sum(_int(row[b]) for b in ("marketing", "service", "incoming", "uncounted"))
        row["marketing"] = _int(row["marketing"]) + rep.marketing
        row["service"] = _int(row["service"]) + rep.service
        row["uncounted"] = _int(row["uncounted"]) + rep.uncounted
        row["source"] = "reported" if observed == 0 else "observed+reported"
        if observed == 0:
            row["incoming"] = None  # unknown: Meta has no counterpart of Incoming
        row["total"] = _int(row["marketing"]) + _int(row["service"]) + _int(row["incoming"])
    totals = doc["totals"]
    assert isinstance(totals, dict)
    for rep in reported.values():
        totals["marketing"] += rep.marketing
        totals["service"] += rep.service
        totals["uncounted"] += rep.uncounted
        totals["total"] += rep.marketing + rep.service
    for key, row in by_key.items():
        row.setdefault("source", "observed")
        cost = costs.get(key)
        row["cost"] = cost.as_dict() if cost else None
    order = {p.label: i for i, p in enumerate(periods)}
    groups = ("number", "country", "category", "pricing")
    rows.sort(
        key=lambda r: (
            order[str(r["period"])],
            *[(r.get(g) is None, str(r.get(g) or "")) for g in groups],
        )
    )


def with_history_from_meta(
    conn: Connection,
    account: AccountRow,
    number: NumberRow | None,
    months: list[MonthCounts],
    first_month: int | None,
    last_month: int | None,
) -> list[MonthCounts]:
    """The compatible API's months plus, if the account turned history from Meta on, the months
    before each number's first observed month answered from reported data (Marketing and
    Service; Incoming 0). Newest first, like `stats.monthly_statistics`."""
    if not meta_repo.history_from_meta(conn, account.id):
        return months
    zone = load_zone(account.timezone)
    numbers = [number] if number else numbers_repo.list_numbers(conn, account.id)
    ids = [n.phone_number_id for n in numbers]
    first_seen = meta_repo.first_observed(conn, ids)
    added: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for n in numbers:
        seen = first_seen.get(n.phone_number_id)
        # Whole months only: the month of the first observation is the service's own.
        until = month_bounds(month_of(seen, zone), zone)[0] if seen is not None else 2**62
        # From the move on for a number moved from another account (its earlier record is the
        # other account's).
        since = n.counts_from or 0
        for r in meta_repo.reported_between(conn, [n.phone_number_id], since, until):
            month = month_of(r.slot, zone)
            if (first_month is not None and month < first_month) or (
                last_month is not None and month > last_month
            ):
                continue
            added[month][bucket_of(r.category, r.pricing_type)] += r.volume
    if not added:
        return months
    by_month = {m.month: m for m in months}
    for month, buckets in added.items():
        old = by_month.get(month)
        by_month[month] = MonthCounts(
            month=month,
            marketing=(old.marketing if old else 0) + buckets["marketing"],
            service=(old.service if old else 0) + buckets["service"],
            incoming=old.incoming if old else 0,
        )
    return sorted((m for m in by_month.values() if m.total), key=lambda m: m.month, reverse=True)
