"""Reconciliation of the two records (spec/meta-record.md, "Reconciliation"): what the service
counted from webhooks (observed Rule P units: delivered messages) against Meta's reported
`volume`, per period, number, category and pricing type, with a verdict for each row.

`reconcile` is pure: it gets the facts and the sync coverage and decides; `answer` reads them
(through `store/meta.py`) and calls it. Verdicts, checked in this order:

1. `outside Meta's window`: the period starts more than 365 days ago and the sync never covered
   its start (Meta no longer has it, and we never copied it).
2. `not yet reported`: the period ends less than 48 hours ago, or after what the last complete
   sync covered, or the number's WABA was never synced: Meta's figure may still change.
3. `match`: observed = reported.
4. `collection gap`: reported > observed and, in the period, Meta reported volume in a stretch
   of at least one hour (two adjacent half-hour slots) in which no webhook of the number arrived.
5. `differs`: any other difference, shown as it is.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection

from wastats.domain import answers, history, reporting
from wastats.domain.reporting import ParameterError, Period
from wastats.store import meta as meta_repo
from wastats.store import numbers as numbers_repo
from wastats.store.accounts import AccountRow

SLOT = 1800
WINDOW_SECONDS = 365 * 86400
FINAL_AFTER_SECONDS = 48 * 3600
GRANULARITIES = ("day", "month")

MATCH = "match"
GAP = "collection gap"
NOT_YET = "not yet reported"
OUTSIDE = "outside Meta's window"
DIFFERS = "differs"
VERDICTS = (MATCH, GAP, NOT_YET, OUTSIDE, DIFFERS)


@dataclass(frozen=True, slots=True)
class Coverage:
    """What the sync of a number's WABA has stored completely: [start, end)."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Row:
    period: Period
    number: str
    category: str
    pricing_type: str
    observed: int
    reported: int
    verdict: str

    @property
    def difference(self) -> int:
        return self.observed - self.reported


@dataclass(slots=True)
class NumberSummary:
    number: str
    observed: int = 0
    reported: int = 0
    covered: int = 0
    """Sum over comparable rows of min(observed, reported): the reported volume we also saw."""
    absolute_difference: int = 0
    rows: int = 0
    matching_rows: int = 0
    periods: set[str] = field(default_factory=set)
    unmatched_periods: set[str] = field(default_factory=set)

    @property
    def coverage(self) -> float | None:
        comparable = self.reported
        return None if comparable == 0 else round(self.covered / comparable, 3)

    def summary(self) -> answers.ReconciliationNumberSummary:
        return answers.ReconciliationNumberSummary(
            number=self.number,
            observed=self.observed,
            reported=self.reported,
            coverage=self.coverage,
            absolute_difference=self.absolute_difference,
            matching_rows=self.matching_rows,
            rows=self.rows,
            matching_periods=len(self.periods - self.unmatched_periods),
            periods=len(self.periods),
        )


@dataclass(frozen=True, slots=True)
class Reconciliation:
    rows: list[Row]
    numbers: list[NumberSummary]
    account: NumberSummary
    approximate: bool
    """The zone's offset is not a whole or half hour: half-hour slots straddle its days."""


def _has_gap(slots: Iterable[int], events: set[int]) -> bool:
    for slot in slots:
        if slot in events:
            continue
        if slot - SLOT not in events or slot + SLOT not in events:
            return True
    return False


def reconcile(
    periods: Sequence[Period],
    numbers: Sequence[tuple[str, str]],
    observed: Iterable[tuple[str, int, str, str]],
    reported: Iterable[tuple[str, int, str, str, int]],
    events: Iterable[tuple[str, int]],
    coverage: dict[str, Coverage],
    now: int,
) -> Reconciliation:
    """Compare the records. `numbers`: (phone_number_id, whatsapp) in display order;
    `observed`: (number id, ts, category, pricing type) units; `reported`: (number id, slot,
    category, pricing type, volume); `events`: (number id, ts) of everything received;
    `coverage`: per number id, what its WABA's sync covered (absent: never synced)."""

    def period_index(ts: int) -> int | None:
        lo, hi = 0, len(periods)
        while lo < hi:
            mid = (lo + hi) // 2
            if periods[mid].end <= ts:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(periods) and periods[lo].start <= ts < periods[lo].end else None

    Key = tuple[int, str, str, str]
    obs: dict[Key, int] = defaultdict(int)
    rep: dict[Key, int] = defaultdict(int)
    reported_slots: dict[tuple[int, str], set[int]] = defaultdict(set)
    for number, ts, category, pricing in observed:
        i = period_index(ts)
        if i is not None:
            obs[(i, number, category, pricing)] += 1
    for number, slot, category, pricing, volume in reported:
        i = period_index(slot)
        if i is not None and volume:
            rep[(i, number, category, pricing)] += volume
            reported_slots[(i, number)].add(slot)
    event_slots: dict[str, set[int]] = defaultdict(set)
    for number, ts in events:
        event_slots[number].add(ts - ts % SLOT)

    def verdict(i: int, number: str, o: int, r: int) -> str:
        period = periods[i]
        covered = coverage.get(number)
        if period.start < now - WINDOW_SECONDS and (
            covered is None or period.start < covered.start
        ):
            return OUTSIDE
        if period.end > now - FINAL_AFTER_SECONDS or covered is None or period.end > covered.end:
            return NOT_YET
        if period.start < covered.start:
            return NOT_YET
        if o == r:
            return MATCH
        if r > o and _has_gap(reported_slots[(i, number)], event_slots[number]):
            return GAP
        return DIFFERS

    whatsapp = dict(numbers)
    order = {pnid: k for k, (pnid, _) in enumerate(numbers)}
    rows: list[Row] = []
    summaries = {pnid: NumberSummary(w) for pnid, w in numbers}
    account = NumberSummary("*")
    for key in sorted(set(obs) | set(rep), key=lambda k: (k[0], order.get(k[1], 0), k[2], k[3])):
        i, number, category, pricing = key
        if number not in whatsapp:
            continue
        o, r = obs.get(key, 0), rep.get(key, 0)
        v = verdict(i, number, o, r)
        rows.append(Row(periods[i], whatsapp[number], category, pricing, o, r, v))
        for summary in (summaries[number], account):
            summary.rows += 1
            if v in (NOT_YET, OUTSIDE):
                continue  # not comparable (yet): in no sum, no coverage, no period count
            summary.periods.add(f"{number}/{periods[i].label}")
            summary.observed += o
            summary.reported += r
            summary.covered += min(o, r)
            summary.absolute_difference += abs(o - r)
            if v == MATCH:
                summary.matching_rows += 1
            else:
                summary.unmatched_periods.add(f"{number}/{periods[i].label}")
    approximate = any(p.start % SLOT or p.end % SLOT for p in periods)
    return Reconciliation(rows, list(summaries.values()), account, approximate)


# --- answering a request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    question: reporting.Question
    result: Reconciliation
    as_of: int
    last_sync: int | None
    costs: dict[tuple[str, str, str, str], answers.Cost | None] = field(default_factory=dict)
    """Cost of the reported volume per (period, number, category, pricing type)."""

    def cost_of(self, r: Row) -> answers.Cost | None:
        return self.costs.get((r.period.label, r.number, r.category, r.pricing_type))

    def model(self) -> answers.Reconciliation:
        """The answer as `/v1/reconciliation` sends it, `wastats reconcile` prints it and
        `wastats.client` reads it."""
        q = self.question
        account = self.result.account.summary().model_dump(exclude={"number"})
        return answers.Reconciliation(
            tz=q.zone.key,
            from_=q.first,
            to=q.last,
            granularity="day" if q.granularity == "day" else "month",
            as_of=datetime.fromtimestamp(self.as_of, UTC),
            last_sync=_utc(self.last_sync),
            approximate=self.result.approximate,
            rows=tuple(
                answers.ReconciliationRow(
                    period=r.period.label,
                    start=r.period.local_start,
                    end=r.period.local_end,
                    number=r.number,
                    category=r.category,
                    pricing_type=r.pricing_type,
                    observed=r.observed,
                    reported=r.reported,
                    difference=r.difference,
                    verdict=r.verdict,
                    cost=self.cost_of(r),
                )
                for r in self.result.rows
            ),
            summary=answers.ReconciliationSummary(
                numbers=tuple(s.summary() for s in self.result.numbers),
                account=answers.ReconciliationAccountSummary(**account),
            ),
        )


def _utc(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def answer(
    conn: Connection,
    account: AccountRow,
    *,
    from_: str | None,
    to: str | None,
    granularity: str | None,
    tz: str | None,
    numbers: Sequence[str] | None,
    now: int,
) -> Answer:
    """Validate the question (as `/v1/stats` does, granularity day or month) and answer it."""
    grain = granularity or "month"
    if grain not in GRANULARITIES:
        raise ParameterError("granularity", "granularity must be day or month")
    q = reporting.parse_question(
        conn, account, from_=from_, to=to, granularity=grain, tz=tz, numbers=numbers,
        group_by=None, unique=False, now=now,
    )  # fmt: skip
    periods = reporting.periods_of(q.first, q.last, q.granularity, q.zone)
    ids = [n.phone_number_id for n in q.numbers]
    start, end = (periods[0].start, periods[-1].end) if periods else (0, 0)
    states = {s.waba_id: s for s in meta_repo.list_states(conn)}
    coverage: dict[str, Coverage] = {}
    last_sync: int | None = None
    for n in numbers_repo.list_numbers(conn, account.id):
        state = states.get(n.waba_id or "")
        if n.phone_number_id not in ids or state is None:
            continue
        if state.covered_from is not None and state.covered_to is not None:
            coverage[n.phone_number_id] = Coverage(state.covered_from, state.covered_to)
        if state.last_success is not None:
            last_sync = max(last_sync or 0, state.last_success)
    # A number moved from another account: its record and units before the move are the
    # other account's, on both sides of the comparison.
    moved = {n.phone_number_id: n.counts_from for n in q.numbers if n.counts_from is not None}
    reported = [
        r
        for r in meta_repo.reported_between(conn, ids, start, end)
        if r.slot >= moved.get(r.phone_number_id, r.slot)
    ]
    result = reconcile(
        periods,
        [(n.phone_number_id, n.whatsapp) for n in q.numbers],
        (
            u
            for u in meta_repo.message_units_between(conn, ids, start, end)
            if u[1] >= moved.get(u[0], u[1])
        ),
        ((r.phone_number_id, r.slot, r.category, r.pricing_type, r.volume) for r in reported),
        # One slot either side, so a stretch at a period's edge sees its neighbours' webhooks.
        (
            e
            for e in meta_repo.event_times_between(conn, ids, start - SLOT, end + SLOT)
            if e[1] >= moved.get(e[0], e[1])
        ),
        coverage,
        now,
    )
    # What the reported rows cost: Meta's figure, or an estimate from the rate card.
    card = history.current_card(conn)
    starts = [p.start for p in periods]
    whatsapp = {n.phone_number_id: n.whatsapp for n in q.numbers}
    costs: dict[tuple[str, str, str, str], history.Cost] = {}
    for r in reported:
        period = periods[bisect.bisect_right(starts, r.slot) - 1]
        cost = costs.setdefault(
            (period.label, whatsapp[r.phone_number_id], r.category, r.pricing_type), history.Cost()
        )
        cost.add_reported(card, r)
    return Answer(q, result, now, last_sync, {k: c.model() for k, c in costs.items()})
