"""From stored raw bodies to counts: parse → facts → recompute the touched units → rollups.

One call processes a batch of inbox bodies in the caller's transaction:

1. parse every body into typed events (`wastats.whatsapp.payload`), noting what was not
   understood (the body is then marked `rejected`, but everything understood in it still counts);
2. turn events into facts, customers replaced by keyed hashes, and insert them with
   `ON CONFLICT DO NOTHING`: a duplicate changes nothing;
3. for every (number, customer), message and CBP conversation the batch touched, recompute its
   counted units from *all* its stored facts with the pure rules (`wastats.counting.rules`);
4. write the units that changed and apply the difference to the monthly rollups.

Because step 3 always starts from the full set of facts, the counts depend only on which events
were received, never on their order, batching or repetition: a late `delivered`, an inbound
message older than a counted session, or pricing that only arrives on `read` all correct the
counts they affect, including months already reported.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection

from wastats.counting import rules
from wastats.counting.model import CountedUnit, StatusFact
from wastats.domain.accounts import load_zone
from wastats.ingest.identity import CustomerHasher, country_of_bsuid, country_of_phone
from wastats.store import activity as activity_repo
from wastats.store import counts as counts_repo
from wastats.store import facts as facts_repo
from wastats.store import inbox as inbox_repo
from wastats.store import locks as locks_repo
from wastats.store import numbers as numbers_repo
from wastats.store.facts import Pair
from wastats.whatsapp.events import InboundMessage, ParseResult, StatusUpdate
from wastats.whatsapp.payload import parse_webhook

MAX_TIMESTAMP = 10**10  # 2286-11-20: anything later is not a real event time

Change = tuple[str, CountedUnit | None, CountedUnit | None]
"""(phone_number_id, unit before, unit after) of a unit that changed."""


@dataclass
class NumberBatch:
    """What one batch says about one business number."""

    inbound: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[StatusFact] = field(default_factory=list)
    bsuid_only: list[tuple[int, str]] = field(default_factory=list)
    """(index in `statuses`, BSUID key) of statuses whose customer came without a phone number:
    resolved to the linked phone number's key, if a link is known, before storing."""
    links: set[tuple[str, str, str]] = field(default_factory=set)
    newest: int = 0
    """Event time of the newest event of this batch for the number (for `as_of`)."""
    drafts: list[MessageDraft] = field(default_factory=list)
    """With `prepare(draft=True)`: messages taken out of `statuses`, already encoded and counted
    as if the database knew nothing of them (see `MessageDraft`)."""

    def __getstate__(self) -> dict[str, Any]:
        # Named tuples pickle through a Python-level `__reduce__` each: sent to the importing
        # process as plain tuples, they pickle in C (measured: a fifth of the parsing process's
        # time went to pickling named tuples).
        state = dict(self.__dict__)
        state["statuses"] = [tuple(fact) for fact in self.statuses]
        state["drafts"] = [
            (key, statuses, None if unit is None else tuple(unit))
            for key, statuses, unit in self.drafts
        ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["statuses"] = [StatusFact._make(fact) for fact in state["statuses"]]
        state["drafts"] = [
            MessageDraft(key, statuses, None if unit is None else CountedUnit._make(unit))
            for key, statuses, unit in state["drafts"]
        ]
        self.__dict__.update(state)


class MessageDraft(NamedTuple):
    """One message of a batch, stored and counted as if nothing were stored of it yet.

    True of nearly every message of a backfill, so `wastats import` has this done where the
    batch is parsed (by default, in a second process). The draft is small to send
    between processes: the encoded `message_facts.statuses` value, not the facts. If the message
    turns out to be stored already, counting decodes the draft and merges as usual."""

    message_key: str
    statuses: str
    """`facts_repo.encode_statuses` of the message's statuses in the batch."""
    unit: CountedUnit | None
    """`rules.message_unit` of the same statuses."""


@dataclass
class BatchReport:
    bodies: int = 0
    rejected: int = 0
    inbound: int = 0
    statuses: int = 0
    units_changed: int = 0
    newest_event: int = 0
    rejected_ids: list[int] = field(default_factory=list)
    """Inbox ids of the bodies marked rejected."""

    def add(self, other: BatchReport) -> None:
        self.bodies += other.bodies
        self.rejected += other.rejected
        self.inbound += other.inbound
        self.statuses += other.statuses
        self.units_changed += other.units_changed
        self.newest_event = max(self.newest_event, other.newest_event)
        self.rejected_ids += other.rejected_ids


@dataclass
class PreparedBatch:
    """A batch of bodies parsed into facts, before any database work (picklable)."""

    per_number: dict[str, NumberBatch]
    outcomes: list[tuple[str, str | None, int]]
    """(state, reason, events) of each body, in the order given."""
    report: BatchReport


def _clip(value: str | None, size: int) -> str | None:
    """A string as it can be stored: at most `size` characters (PostgreSQL enforces column
    widths), no NUL (PostgreSQL text refuses it) and no lone surrogate (not encodable), so one
    odd value from a broken sender never makes a batch fail and lose the body's other events."""
    if value is None:
        return None
    if len(value) > size:
        value = value[:size]
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")[:size]
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


class Pipeline:
    def __init__(self, hasher: CustomerHasher) -> None:
        self.hasher = hasher

    # --- the whole batch ------------------------------------------------------------------------

    def process(
        self, conn: Connection, bodies: Sequence[tuple[int, bytes]], now: int
    ) -> BatchReport:
        """Process inbox rows (id, raw body) and record each one's outcome."""
        prepared = self.prepare([raw for _, raw in bodies])
        return self.store(conn, prepared, [inbox_id for inbox_id, _ in bodies], now)

    def prepare(self, bodies: Sequence[bytes], *, draft: bool = False) -> PreparedBatch:
        """Parse bodies into facts: everything that needs no database (so `wastats import` runs
        it in a second process, a chunk ahead of the one being stored).

        `draft`: also encode and count each message as if it were new (`MessageDraft`): the
        right bet for a backfill, a waste for live webhooks, whose later statuses find their
        message stored."""
        report = BatchReport(bodies=len(bodies))
        per_number: dict[str, NumberBatch] = defaultdict(NumberBatch)
        outcomes: list[tuple[str, str | None, int]] = []
        for raw in bodies:
            parsed = parse_webhook(raw)
            skipped = self._collect(parsed, per_number, report)
            problems = parsed.reason()
            if skipped:
                problems = "; ".join(p for p in (problems, skipped) if p)
            events = len(parsed.inbound) + len(parsed.statuses)
            if problems:
                report.rejected += 1
            state = inbox_repo.REJECTED if problems else inbox_repo.PROCESSED
            outcomes.append((state, problems or None, events))
        if draft:
            for batch in per_number.values():
                _draft_messages(batch)
        return PreparedBatch(per_number, outcomes, report)

    def store(
        self, conn: Connection, prepared: PreparedBatch, inbox_ids: Sequence[int], now: int
    ) -> BatchReport:
        """Count a prepared batch and record the outcome of each body (`inbox_ids`: the inbox
        row of each body given to `prepare`, in the same order)."""
        # Batches from several processes never recompute the same customer or conversation at
        # once. Accepting webhooks (the inbox insert) needs no lock and scales with processes.
        locks_repo.hold_counting_lock(conn)
        report = prepared.report
        per_number = prepared.per_number
        outcomes = [
            inbox_repo.Outcome(id=inbox_id, state=state, reason=reason, events=events)
            for inbox_id, (state, reason, events) in zip(inbox_ids, prepared.outcomes, strict=True)
        ]
        report.rejected_ids = [o.id for o in outcomes if o.state == inbox_repo.REJECTED]
        report.units_changed = self.apply(conn, per_number)
        activity_repo.record(conn, {n: b.newest for n, b in per_number.items() if b.newest}, now)
        inbox_repo.record_outcomes(conn, outcomes, now)
        return report

    def apply(self, conn: Connection, per_number: dict[str, NumberBatch]) -> int:
        """Store the facts of every number, recompute what they touch, update the rollups.

        Each step is one statement for the whole batch, whatever the number of business numbers
        in it (rows are addressed by (number, key) pairs): per-number statements were the
        largest cost of small batches (measured: 20 numbers made a batch 3x slower than one)."""
        zones = {
            number: load_zone(zone)
            for number, zone in numbers_repo.zones_of(conn, per_number).items()
        }
        users: dict[str, set[str]] = defaultdict(set)
        # Customers who may already have counted sessions. A unit exists only where its facts
        # were stored, so a customer new to the database has none to look up (in a backfill,
        # most of them). Relinked customers keep sessions under the old key until recomputed,
        # so they are always looked up.
        had_units: set[Pair] = set()
        links = set().union(*(batch.links for batch in per_number.values()))
        relinked: list[Pair] = []
        for number, bsuid_key, wa_key in facts_repo.insert_links(conn, links):
            relinked += [
                (number, key) for key in facts_repo.relink(conn, number, bsuid_key, wa_key)
            ]
            users[number].update((bsuid_key, wa_key))
            had_units.update(((number, bsuid_key), (number, wa_key)))
        self._resolve_bsuids(conn, per_number)

        inbound = [row for batch in per_number.values() for row in batch.inbound if row["user_key"]]
        for row in inbound:
            users[row["phone_number_id"]].add(row["user_key"])
        # The batch's statuses per message, merged with what is stored of the same messages (one
        # row per message holds all its statuses, so this is a single read for the batch).
        batch_statuses: dict[Pair, set[StatusFact]] = defaultdict(set)
        drafts: dict[Pair, MessageDraft] = {}
        for number, batch in per_number.items():
            for fact in batch.statuses:
                batch_statuses[(number, fact.message_key)].add(fact)
            drafts.update(((number, d.message_key), d) for d in batch.drafts)
        # The inbound facts stored before this batch (a fresh import finds none), merged with the
        # batch's own exactly as the database keeps them: one per (wamid, customer, time), its
        # country merged (`facts.insert_inbound`).
        times = facts_repo.inbound_facts(conn, [(n, u) for n, us in users.items() for u in us])
        had_units.update(times)
        for row in inbound:
            per_user = times.setdefault((row["phone_number_id"], row["user_key"]), {})
            key = (row["wamid"], row["ts"])
            per_user[key] = facts_repo.merged_country(per_user.get(key), row["country"])
        stored_messages = facts_repo.messages_of(conn, batch_statuses.keys() | drafts.keys())
        statuses = {pair: facts for pair, (facts, _) in stored_messages.items()}
        message_units = {pair: unit for pair, (_, unit) in stored_messages.items()}
        for pair in drafts.keys() & statuses.keys():  # not new after all: merge as usual
            batch_statuses[pair].update(
                facts_repo.decode_statuses(pair[1], drafts.pop(pair).statuses)
            )
        grown: list[tuple[str, str, list[StatusFact]]] = []
        for (number, message_key), new in batch_statuses.items():
            stored = statuses.get((number, message_key))
            if stored is not None and new.issubset(stored):
                continue  # every status already known: the message is unchanged
            merged = list(new.union(stored)) if stored is not None else list(new)
            statuses[(number, message_key)] = merged
            grown.append((number, message_key, merged))
        facts_repo.insert_inbound(conn, inbound)
        facts_repo.write_conversations(conn, grown)
        # Only messages that learned something, or changed customer, can count differently.
        messages: dict[str, set[str]] = defaultdict(set)
        for number, message_key, _ in grown:
            messages[number].add(message_key)
        if relinked:
            for number, message_key in relinked:
                messages[number].add(message_key)
            for pair, (facts, unit) in facts_repo.messages_of(
                conn, set(relinked) - statuses.keys()
            ).items():
                statuses[pair], message_units[pair] = facts, unit

        changes, new_message_units = self.recompute(
            conn,
            users,
            messages,
            times=times,
            statuses=statuses,
            had_units=had_units,
            message_units=message_units,
        )
        # A message's row holds its statuses and its unit: written once, after the rules ran.
        facts_repo.write_messages(
            conn,
            [
                (n, key, facts_repo.encode_statuses(statuses[(n, key)]), unit)
                for (n, key), unit in new_message_units.items()
            ]
            + [(n, d.message_key, d.statuses, d.unit) for (n, _), d in drafts.items()],
        )
        changes += [(n, None, d.unit) for (n, _), d in drafts.items() if d.unit is not None]
        deltas: Counter[counts_repo.RollupKey] = Counter()
        for number, before, after in changes:
            zone = zones.get(number)
            if zone is not None:
                if before is not None:
                    deltas[counts_repo.rollup_key(number, before, zone)] -= 1
                if after is not None:
                    deltas[counts_repo.rollup_key(number, after, zone)] += 1
        counts_repo.apply_deltas(conn, deltas)
        return len(changes)

    def _resolve_bsuids(self, conn: Connection, per_number: dict[str, NumberBatch]) -> None:
        """Customers who came with a BSUID only become their linked phone number's customer."""
        unresolved = {(n, key) for n, batch in per_number.items() for _, key in batch.bsuid_only}
        unresolved.update(
            (n, row["bsuid_key"])
            for n, batch in per_number.items()
            for row in batch.inbound
            if row["wa_key"] is None and row["bsuid_key"] is not None
        )
        if not unresolved:
            return
        linked = facts_repo.linked_phone_keys(conn, unresolved)
        for number, batch in per_number.items():
            for row in batch.inbound:
                if row["wa_key"] is None and (number, row["bsuid_key"]) in linked:
                    row["user_key"] = linked[(number, row["bsuid_key"])]
            for index, key in batch.bsuid_only:
                if (number, key) in linked:
                    batch.statuses[index] = batch.statuses[index]._replace(
                        user_key=linked[(number, key)]
                    )

    # --- events → fact rows ---------------------------------------------------------------------

    def _collect(
        self, parsed: ParseResult, per_number: dict[str, NumberBatch], report: BatchReport
    ) -> str:
        skipped: list[str] = []
        for message in parsed.inbound:
            if not 0 <= message.timestamp < MAX_TIMESTAMP:
                skipped.append(
                    f"message {message.wamid}: timestamp {message.timestamp} out of range"
                )
                continue
            if message.type == "system":
                continue  # Rule I: every type except system
            number = _clip(message.phone_number_id, 64) or ""
            per_number[number].inbound.append(self._inbound_row(number, message))
            per_number[number].newest = max(per_number[number].newest, message.timestamp)
            report.inbound += 1
            report.newest_event = max(report.newest_event, message.timestamp)
        for status in parsed.statuses:
            if not 0 <= status.timestamp < MAX_TIMESTAMP:
                skipped.append(f"status {status.wamid}: timestamp {status.timestamp} out of range")
                continue
            number = _clip(status.phone_number_id, 64) or ""
            batch = per_number[number]
            fact, bsuid_key = self._status_fact(status)
            if bsuid_key is not None:
                batch.bsuid_only.append((len(batch.statuses), bsuid_key))
            batch.statuses.append(fact)
            batch.newest = max(batch.newest, status.timestamp)
            report.statuses += 1
            report.newest_event = max(report.newest_event, status.timestamp)
        for link in parsed.links:
            number = _clip(link.phone_number_id, 64) or ""
            per_number[number].links.add(
                (number, self.hasher.bsuid_key(link.user_id), self.hasher.phone_key(link.wa_id))
            )
        return "; ".join(skipped[:3])

    def _customer(self, wa_id: str | None, user_id: str | None) -> dict[str, Any]:
        wa_key = self.hasher.phone_key(wa_id) if wa_id else None
        bsuid_key = self.hasher.bsuid_key(user_id) if user_id else None
        country = country_of_phone(wa_id) if wa_id else None
        if country is None and user_id:
            country = country_of_bsuid(user_id)
        # A BSUID-only customer is resolved to its linked phone number, if any, in _apply_number.
        return {"user_key": wa_key or bsuid_key, "wa_key": wa_key, "bsuid_key": bsuid_key,
                "country": country}  # fmt: skip

    def _inbound_row(self, number: str, message: InboundMessage) -> dict[str, Any]:
        row = self._customer(message.wa_id, message.user_id)
        row.update(
            phone_number_id=number,
            wamid=self.hasher.message_id(message.wamid),
            ts=message.timestamp,
        )
        return row

    def _status_fact(self, status: StatusUpdate) -> tuple[StatusFact, str | None]:
        """The fact of one status, and the BSUID key if its customer still needs resolving.

        The hot path of ingestion (one call per status update): positional arguments and
        inline length checks, measured to matter at tens of thousands of calls per second."""
        hasher = self.hasher
        wa_id, user_id = status.recipient_wa_id, status.recipient_user_id
        wa_key = hasher.phone_key(wa_id) if wa_id else None
        bsuid_key = hasher.bsuid_key(user_id) if user_id else None
        if wa_id:
            country = country_of_phone(wa_id)
        else:
            country = country_of_bsuid(user_id) if user_id else None
        message_key = hasher.message_id(status.wamid)
        if status.group_id is not None:
            # Meta charges group messages per delivered member: each member is one delivery.
            message_key = f"{message_key}/{hasher.participant_key(wa_id, user_id)}"
        expiration = status.expiration_timestamp
        if expiration is not None and not 0 <= expiration < MAX_TIMESTAMP:
            expiration = None
        fact = StatusFact(
            message_key,
            _clip(status.status, 16) or "",
            status.timestamp,
            _clip(status.conversation_id, 160),
            _clip(status.conversation_origin, 48),
            expiration,
            _clip(status.pricing_model, 8),
            _clip(status.pricing_type, 48),
            _clip(status.pricing_category, 48),
            status.billable,
            wa_key or bsuid_key,
            country,
        )
        return fact, (bsuid_key if wa_key is None else None)

    # --- units recomputed from all their facts ----------------------------------------------

    def recompute(
        self,
        conn: Connection,
        users: dict[str, set[str]],
        messages: dict[str, set[str]],
        *,
        times: dict[Pair, facts_repo.InboundTimes],
        statuses: dict[Pair, list[StatusFact]],
        had_units: set[Pair],
        message_units: Mapping[Pair, CountedUnit | None],
    ) -> tuple[list[Change], dict[Pair, CountedUnit | None]]:
        """Recompute the units of these customers and messages (and of the CBP conversations the
        messages belong to) from all their facts (`times`, `statuses`: everything stored plus
        this batch). Writes the session and conversation units; returns the changes as
        (number, before, after) and every message's new unit, which the caller writes with the
        message's row.

        `had_units`: the customers who had facts before this batch, the only ones whose stored
        sessions need reading. `message_units`: the stored unit of each stored message."""
        new: dict[Pair, CountedUnit] = {}
        old: dict[Pair, CountedUnit] = {}
        changes: list[Change] = []

        customers = [(number, user) for number, keys in users.items() for user in keys]
        for number, user in customers:
            seen = [(ts, country) for (_, ts), country in times.get((number, user), {}).items()]
            for unit in rules.incoming_sessions(
                user, (t for t, _ in seen), rules.user_country(seen)
            ):
                new[(number, unit.unit_key)] = unit
        known = [c for c in customers if c in had_units]
        if known:
            old.update(facts_repo.session_units_of(conn, known))

        conversations: set[Pair] = set()
        new_message_units: dict[Pair, CountedUnit | None] = {}
        for number, keys in messages.items():
            for message_key in keys:
                facts = statuses.get((number, message_key), [])
                conversations.update((number, c) for c in rules.message_conversation_ids(facts))
                billable = rules.message_unit(facts) if facts else None
                before = message_units.get((number, message_key))
                if before != billable:
                    changes.append((number, before, billable))
                new_message_units[(number, message_key)] = billable
        if conversations:
            members = facts_repo.messages_in_conversations(conn, conversations)
            missing = {(n, m) for (n, _), keys in members.items() for m in keys} - statuses.keys()
            if missing:
                statuses.update(facts_repo.statuses_of(conn, missing))
            for number, conversation in conversations:
                member_facts = [
                    fact
                    for message_key in members.get((number, conversation), ())
                    for fact in statuses.get((number, message_key), ())
                ]
                counted = rules.conversation_unit(conversation, member_facts)
                if counted is not None:
                    new[(number, counted.unit_key)] = counted
            old.update(facts_repo.units_by_key(conn, {(n, f"C:{c}") for n, c in conversations}))

        deletes = [key for key in old if key not in new]
        upserts = [(key[0], unit) for key, unit in new.items() if old.get(key) != unit]
        facts_repo.write_units(conn, upserts, deletes)
        changes += [(key[0], old[key], None) for key in deletes]
        changes += [(n, old.get((n, unit.unit_key)), unit) for n, unit in upserts]
        return changes, new_message_units


def _draft_messages(batch: NumberBatch) -> None:
    """Move the batch's messages that can be drafted from `statuses` into `drafts`.

    Not drafted: messages with a conversation id (Rule C reads their conversation's other
    members from the database) and messages of customers known only by a BSUID (the database
    may link them to another key first)."""
    by_message: dict[str, set[StatusFact]] = defaultdict(set)
    for fact in batch.statuses:
        by_message[fact.message_key].add(fact)
    kept = {batch.statuses[i].message_key for i, _ in batch.bsuid_only}
    kept.update(f.message_key for f in batch.statuses if f.conversation_id is not None)
    for message_key, facts in by_message.items():
        if message_key not in kept:
            distinct = list(facts)
            batch.drafts.append(
                MessageDraft(
                    message_key,
                    facts_repo.encode_statuses(distinct),
                    rules.message_unit(distinct),
                )
            )
    if len(batch.drafts) == len(by_message):
        batch.statuses = []
        return
    # `bsuid_only` holds indexes into `statuses`: renumber them for the facts kept.
    unresolved = dict(batch.bsuid_only)
    statuses, batch.statuses, batch.bsuid_only = batch.statuses, [], []
    for index, fact in enumerate(statuses):
        if fact.message_key in kept:
            if index in unresolved:
                batch.bsuid_only.append((len(batch.statuses), unresolved[index]))
            batch.statuses.append(fact)
