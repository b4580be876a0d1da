"""From stored raw bodies to counts: parse → facts → recount the touched units → rollups.

One call processes a batch of inbox bodies in the caller's transaction. `prepare` needs no
database (so `wastats import` runs it in a second process): it parses every body into typed
events (`wastats.whatsapp.payload`), noting what was not understood (the body is then marked
`rejected`, but everything understood in it still counts), and turns the events into facts, with
customers replaced by keyed hashes: a `NumberBatch` per business number. `store` then runs
`apply`, whose steps are, in order:

1. **link customers**: store the batch's (BSUID, phone number) links; facts already stored under
   a newly linked BSUID move to the phone number's customer, and the batch's BSUID-only facts
   take the phone number's key where a link is known;
2. **merge inbound**: store the inbound-message facts (`ON CONFLICT`: a duplicate changes
   nothing) and gather every inbound time of the customers touched;
3. **merge statuses**: merge the batch's statuses into the stored rows of their messages (one
   row per message, statuses merged by set union); messages that learned nothing drop out;
4. **recount**: for every customer, message and CBP conversation touched, recompute its counted
   units from *all* its facts with the pure rules (`wastats.counting.rules`) and write them;
5. **write rollups**: apply the difference of every changed unit to the monthly rollups.

Because step 4 always starts from the full set of facts, the counts depend only on which events
were received, never on their order, batching or repetition: a late `delivered`, an inbound
message older than a counted session, or pricing that only arrives on `read` all correct the
counts they affect, including months already reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection

from wastats.counting import rules
from wastats.counting.model import Bucket, CountedUnit, StatusFact
from wastats.domain.accounts import load_zone
from wastats.ingest.identity import CustomerHasher, country_of_bsuid, country_of_phone
from wastats.store import activity as activity_repo
from wastats.store import counts as counts_repo
from wastats.store import facts as facts_repo
from wastats.store import inbox as inbox_repo
from wastats.store import locks as locks_repo
from wastats.store import numbers as numbers_repo
from wastats.store import units as units_repo
from wastats.store.facts import InboundFact, InboundTimes, Pair
from wastats.whatsapp.events import InboundMessage, ParseResult, StatusUpdate
from wastats.whatsapp.payload import parse_webhook

MAX_TIMESTAMP = 10**10  # 2286-11-20: anything later is not a real event time

IdentityLinkKeys = tuple[str, str, str]
"""(phone_number_id, bsuid_key, wa_key): a BSUID and a phone number seen for one person."""


# --- what `prepare` hands to `store` ------------------------------------------------------------


class MessageDraft(NamedTuple):
    """One message of a batch, stored and counted as if nothing were stored of it yet.

    True of nearly every message of a backfill, so `wastats import` has this done where the
    batch is parsed (by default, in a second process). The draft is small to send
    between processes: the encoded `message_facts.statuses` value, not the facts. If the message
    turns out to be stored already, counting decodes the draft and merges as usual."""

    message_key: str
    stored_statuses: str
    """`facts_repo.encode_statuses` of the message's statuses in the batch: its row's value."""
    unit: CountedUnit | None
    """`rules.message_unit` of the same statuses."""


@dataclass
class NumberBatch:
    """What one batch says about one business number."""

    inbound: list[InboundFact] = field(default_factory=list)
    statuses: list[StatusFact] = field(default_factory=list)
    bsuid_customers: set[str] = field(default_factory=set)
    """Keys of customers who came with a BSUID and no phone number: their facts carry the BSUID's
    key, replaced by the linked phone number's key, if a link is known, before storing (a BSUID
    key and a phone key never coincide: they are keyed hashes of different kinds)."""
    links: set[IdentityLinkKeys] = field(default_factory=set)
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
        state["inbound"] = [tuple(fact) for fact in self.inbound]
        state["statuses"] = [tuple(fact) for fact in self.statuses]
        state["drafts"] = [
            (key, statuses, None if unit is None else tuple(unit))
            for key, statuses, unit in self.drafts
        ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["inbound"] = [InboundFact._make(fact) for fact in state["inbound"]]
        state["statuses"] = [StatusFact._make(fact) for fact in state["statuses"]]
        state["drafts"] = [
            MessageDraft(key, statuses, None if unit is None else CountedUnit._make(unit))
            for key, statuses, unit in state["drafts"]
        ]
        self.__dict__.update(state)


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


# --- what the steps of `apply` hand on ------------------------------------------------------------


@dataclass
class Touched:
    """What a batch touched: the customers and messages whose units are recounted."""

    customers: set[Pair] = field(default_factory=set)
    """(phone_number_id, user_key) of every customer with new facts or a new link."""
    known_customers: set[Pair] = field(default_factory=set)
    """The customers among them who had facts before this batch: the only ones who may have
    stored units to read (in a backfill, most customers are new)."""
    messages: set[Pair] = field(default_factory=set)
    """(phone_number_id, message_key) of every message that learned a status or changed
    customer: only those can count differently."""
    relinked: set[Pair] = field(default_factory=set)
    """The stored messages whose statuses changed customer (step 1)."""


@dataclass
class MessageFacts:
    """The statuses of the messages a batch touched, and their stored units."""

    statuses: dict[Pair, list[StatusFact]]
    """Every status known of each message: what is stored, merged with the batch's."""
    stored_units: dict[Pair, CountedUnit | None]
    """The unit stored with each stored message (None: it counts as none)."""
    drafts: dict[Pair, MessageDraft]
    """Drafted messages that are indeed new: stored and counted as drafted."""


class UnitChange(NamedTuple):
    """A counted unit that changed: None before for a new unit, None after for a removed one."""

    phone_number_id: str
    before: CountedUnit | None
    after: CountedUnit | None


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


class _Words(dict[str | None, str | None]):
    """`_clip` to `size` of a field that takes a few values (status, pricing model, type and
    category, conversation origin, the business number), remembered: `words[value]` is a
    dictionary look-up instead of a Python call for each of six fields of every status update
    (one dictionary per width, keyed by the string alone: its hash is cached, a (value, size)
    tuple's is not). Only short values are kept, and at most `LIMIT` of them, so odd values from
    a broken sender only miss and never hold memory."""

    LIMIT = 4096

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __missing__(self, value: str | None) -> str | None:
        clipped = _clip(value, self.size)
        if (value is None or len(value) <= 64) and len(self) < self.LIMIT:
            self[value] = clipped
        return clipped


_NUMBERS = _Words(64)
_STATUSES = _Words(16)
_MODELS = _Words(8)
_WORDS48 = _Words(48)
"""Pricing types and categories and conversation origins: the same width."""


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
        # once: each holds the locks of its numbers (batches for other numbers go on meanwhile).
        # Accepting webhooks (the inbox insert) needs no lock and scales with processes.
        locks_repo.hold_counting_locks(conn, prepared.per_number.keys())
        report = prepared.report
        per_number = prepared.per_number
        outcomes = [
            inbox_repo.Outcome(id=inbox_id, state=state, reason=reason, events=events)
            for inbox_id, (state, reason, events) in zip(inbox_ids, prepared.outcomes, strict=True)
        ]
        report.rejected_ids = [o.id for o in outcomes if o.state == inbox_repo.REJECTED]
        activity_repo.record(conn, {n: b.newest for n, b in per_number.items() if b.newest}, now)
        inbox_repo.record_outcomes(conn, outcomes, now)
        # Last: the account rollups (step 5's end) are the only rows batches of different
        # partitions share; written last, their row locks are held only until the commit.
        report.units_changed = self.apply(conn, per_number)
        return report

    def apply(self, conn: Connection, per_number: dict[str, NumberBatch]) -> int:
        """Store the facts of every number, recount what they touch, update the rollups; returns
        how many units changed. The steps are those of the module's docstring.

        Each step is one statement for the whole batch, whatever the number of business
        numbers in it (rows are addressed by (number, key) pairs): per-number
        statements were the largest cost of small batches (measured: 20 numbers made a batch 3x
        slower than one)."""
        touched = Touched()
        _link_customers(conn, per_number, touched)
        inbound_times = _merge_inbound(conn, per_number, touched)
        messages = _merge_statuses(conn, per_number, touched)
        changes = _recount(conn, touched, inbound_times, messages)
        _write_rollups(conn, changes)
        return len(changes)

    # --- events → facts (no database) -------------------------------------------------------------

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
            batch = per_number[number]
            inbound = self._inbound_fact(number, message)
            if inbound.wa_key is None and inbound.bsuid_key is not None:
                batch.bsuid_customers.add(inbound.bsuid_key)
            batch.inbound.append(inbound)
            batch.newest = max(batch.newest, message.timestamp)
            report.inbound += 1
            report.newest_event = max(report.newest_event, message.timestamp)
        # Once per status update: locals rather than attribute writes per status, the newest
        # time kept per batch as statuses come and the report's totals added once at the end.
        status_fact = self._status_fact
        counted = 0
        newest = report.newest_event
        for status in parsed.statuses:
            ts = status.timestamp
            if not 0 <= ts < MAX_TIMESTAMP:
                skipped.append(f"status {status.wamid}: timestamp {ts} out of range")
                continue
            number = _NUMBERS[status.phone_number_id] or ""
            batch = per_number[number]
            fact, bsuid_key = status_fact(status)
            if bsuid_key is not None:
                batch.bsuid_customers.add(bsuid_key)
            batch.statuses.append(fact)
            if ts > batch.newest:
                batch.newest = ts
            if ts > newest:
                newest = ts
            counted += 1
        report.statuses += counted
        report.newest_event = newest
        for link in parsed.links:
            number = _clip(link.phone_number_id, 64) or ""
            per_number[number].links.add(
                (number, self.hasher.bsuid_key(link.user_id), self.hasher.phone_key(link.wa_id))
            )
        return "; ".join(skipped[:3])

    def _inbound_fact(self, number: str, message: InboundMessage) -> InboundFact:
        """The fact of one inbound message. A customer who came with a BSUID only is keyed by
        it here, and by the linked phone number's key, if a link is known, in step 1 of `apply`."""
        wa_id, user_id = message.wa_id, message.user_id
        wa_key = self.hasher.phone_key(wa_id) if wa_id else None
        bsuid_key = self.hasher.bsuid_key(user_id) if user_id else None
        country = country_of_phone(wa_id) if wa_id else None
        if country is None and user_id:
            country = country_of_bsuid(user_id)
        wamid = self.hasher.message_id(message.wamid)
        return InboundFact(number, wamid, wa_key or bsuid_key, wa_key, bsuid_key,
                           message.timestamp, country)  # fmt: skip

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
        conversation_id = status.conversation_id
        if conversation_id is not None and not (
            len(conversation_id) <= 160
            and conversation_id.isascii()
            and "\x00" not in conversation_id
        ):
            conversation_id = _clip(conversation_id, 160)  # a call only when it changes it
        fact = StatusFact(
            message_key,
            _STATUSES[status.status] or "",
            status.timestamp,
            conversation_id,
            _WORDS48[status.conversation_origin],
            expiration,
            _MODELS[status.pricing_model],
            _WORDS48[status.pricing_type],
            _WORDS48[status.pricing_category],
            status.billable,
            wa_key or bsuid_key,
            country,
        )
        return fact, (bsuid_key if wa_key is None else None)


# --- the steps of `apply`, in order -------------------------------------------------------------


def _link_customers(conn: Connection, per_number: dict[str, NumberBatch], touched: Touched) -> None:
    """Step 1: store the batch's identity links. Facts stored under a newly linked BSUID move to
    the phone number's customer (its messages are to be recounted); facts of the batch whose
    customer came with a BSUID only take the linked phone number's key, if a link is known."""
    links = set().union(*(batch.links for batch in per_number.values()))
    for number, bsuid_key, wa_key in facts_repo.insert_links(conn, links):
        touched.relinked.update(
            (number, key) for key in facts_repo.relink(conn, number, bsuid_key, wa_key)
        )
        # Relinked customers keep sessions under the old key until recounted: both are looked
        # up, whatever facts they have.
        customers = ((number, bsuid_key), (number, wa_key))
        touched.customers.update(customers)
        touched.known_customers.update(customers)
    touched.messages.update(touched.relinked)

    unresolved = {(n, key) for n, batch in per_number.items() for key in batch.bsuid_customers}
    if not unresolved:
        return
    linked: dict[str, dict[str, str]] = defaultdict(dict)
    for (number, bsuid_key), wa_key in facts_repo.linked_phone_keys(conn, unresolved).items():
        linked[number][bsuid_key] = wa_key
    for number, phone_keys in linked.items():
        batch = per_number[number]
        batch.inbound = [
            f._replace(user_key=phone_keys[f.user_key]) if f.user_key in phone_keys else f
            for f in batch.inbound
        ]
        batch.statuses = [
            f._replace(user_key=phone_keys[f.user_key]) if f.user_key in phone_keys else f
            for f in batch.statuses
        ]


def _merge_inbound(
    conn: Connection, per_number: dict[str, NumberBatch], touched: Touched
) -> dict[Pair, InboundTimes]:
    """Step 2: store the batch's inbound facts; returns every inbound time of the customers
    touched (stored before this batch, and the batch's), merged exactly as the database keeps
    them: one per (wamid, customer, time), its country merged (`facts.insert_inbound`)."""
    inbound: list[InboundFact] = []
    for batch in per_number.values():
        for fact in batch.inbound:
            if fact.user_key:
                inbound.append(fact)
                touched.customers.add((fact.phone_number_id, fact.user_key))
    times = facts_repo.inbound_facts(conn, touched.customers)  # a fresh import finds none
    touched.known_customers.update(times)
    for fact in inbound:
        per_user = times.setdefault((fact.phone_number_id, fact.user_key or ""), {})
        key = (fact.wamid, fact.timestamp)
        per_user[key] = facts_repo.merged_country(per_user.get(key), fact.country)
    facts_repo.insert_inbound(conn, inbound)
    return times


def _merge_statuses(
    conn: Connection, per_number: dict[str, NumberBatch], touched: Touched
) -> MessageFacts:
    """Step 3: merge the batch's statuses into their messages' stored statuses (one row per
    message holds all its statuses, so this is a single read for the batch); the messages that
    learned a status are touched. Drafted messages that turn out to be stored are merged the
    same way; the others stay drafts."""
    batch_statuses: dict[Pair, set[StatusFact]] = defaultdict(set)
    drafts: dict[Pair, MessageDraft] = {}
    for number, batch in per_number.items():
        for fact in batch.statuses:
            batch_statuses[(number, fact.message_key)].add(fact)
        drafts.update(((number, d.message_key), d) for d in batch.drafts)
    stored = facts_repo.messages_of(conn, batch_statuses.keys() | drafts.keys() | touched.relinked)
    messages = MessageFacts(
        statuses={pair: facts for pair, (facts, _) in stored.items()},
        stored_units={pair: unit for pair, (_, unit) in stored.items()},
        drafts=drafts,
    )
    for pair in drafts.keys() & stored.keys():  # not new after all: merge as usual
        batch_statuses[pair].update(
            facts_repo.decode_statuses(pair[1], drafts.pop(pair).stored_statuses)
        )
    grown: list[tuple[str, str, list[StatusFact]]] = []
    for pair, new in batch_statuses.items():
        known = messages.statuses.get(pair)
        if known is not None and new.issubset(known):
            continue  # every status already known: the message is unchanged
        merged = list(new.union(known)) if known is not None else list(new)
        messages.statuses[pair] = merged
        grown.append((*pair, merged))
        touched.messages.add(pair)
    facts_repo.write_conversations(conn, grown)
    return messages


def _recount(
    conn: Connection,
    touched: Touched,
    inbound_times: dict[Pair, InboundTimes],
    messages: MessageFacts,
) -> list[UnitChange]:
    """Step 4: recount the units of the touched customers and messages, and of the CBP
    conversations those messages belong to, from all their facts; write the units that changed
    (a message's unit with its statuses, in its row) and return them."""
    counted = _count_sessions(touched.customers, inbound_times)
    stored = units_repo.sessions_of(conn, touched.customers & touched.known_customers)
    message_units, changes = _count_messages(touched.messages, messages)
    # `rules.message_conversation_ids` of each message, inline: a call and a frozenset per
    # touched message, for the few that have a conversation id.
    statuses = messages.statuses
    conversations = {
        (pair[0], fact.conversation_id)
        for pair in touched.messages
        for fact in statuses.get(pair, ())
        if fact.conversation_id is not None
    }
    if conversations:
        counted.update(_count_conversations(conn, conversations, messages.statuses))
        stored.update(units_repo.by_key(conn, {(n, f"C:{c}") for n, c in conversations}))
    deletes = [pair for pair in stored if pair not in counted]
    upserts = [(pair[0], unit) for pair, unit in counted.items() if stored.get(pair) != unit]
    units_repo.write(conn, upserts, deletes)
    changes += [UnitChange(pair[0], stored[pair], None) for pair in deletes]
    changes += [UnitChange(n, stored.get((n, unit.unit_key)), unit) for n, unit in upserts]

    # A message's row holds its statuses and its unit: written once, after the rules ran.
    drafts = messages.drafts.items()
    facts_repo.write_messages(
        conn,
        [
            (n, key, facts_repo.encode_statuses(messages.statuses[(n, key)]), unit)
            for (n, key), unit in message_units.items()
        ]
        + [(n, d.message_key, d.stored_statuses, d.unit) for (n, _), d in drafts],
    )
    changes += [UnitChange(n, None, d.unit) for (n, _), d in drafts if d.unit is not None]
    return changes


def _write_rollups(conn: Connection, changes: Sequence[UnitChange]) -> None:
    """Step 5: apply the changed units to the monthly rollups of the registered numbers (a
    number registered later gets its rollups built from its units then), leaving out units
    older than the registration's `counts_from` (a number moved from another account)."""
    scopes = numbers_repo.scopes_of(conn, {change.phone_number_id for change in changes})
    zones = {
        n: (counts_repo.ZoneMonths(load_zone(s.timezone)), s.counts_from or 0)
        for n, s in scopes.items()
    }
    # Summed under plain tuples (`RollupKey`'s fields), made `RollupKey`s once per row: one
    # change in two or three is a new unit, and a named tuple per unit was a measurable share.
    summed: dict[tuple[str, int, Bucket, str, str], int] = {}
    get = summed.get
    for number, before, after in changes:
        scope = zones.get(number)
        if scope is None:
            continue
        month_of, since = scope
        if before is not None and before.timestamp >= since:
            key = (number, month_of(before.timestamp), before.bucket, before.category,
                   before.pricing_type)  # fmt: skip
            summed[key] = get(key, 0) - 1
        if after is not None and after.timestamp >= since:
            key = (number, month_of(after.timestamp), after.bucket, after.category,
                   after.pricing_type)  # fmt: skip
            summed[key] = get(key, 0) + 1
    deltas = {counts_repo.RollupKey(*key): delta for key, delta in summed.items()}
    counts_repo.apply_deltas(conn, deltas)


# --- counting what a batch touched (the pure rules over gathered facts) --------------------------


def _count_sessions(
    customers: set[Pair], inbound_times: dict[Pair, InboundTimes]
) -> dict[Pair, CountedUnit]:
    """{(number, unit_key): unit} of the incoming sessions of these customers (Rule I)."""
    units: dict[Pair, CountedUnit] = {}
    for number, user in customers:
        seen = [(ts, country) for (_, ts), country in inbound_times.get((number, user), {}).items()]
        for unit in rules.incoming_sessions(user, (t for t, _ in seen), rules.user_country(seen)):
            units[(number, unit.unit_key)] = unit
    return units


def _count_messages(
    touched: set[Pair], messages: MessageFacts
) -> tuple[dict[Pair, CountedUnit | None], list[UnitChange]]:
    """The unit of each touched message (Rule P: None if it counts as none), and the changes
    against the units stored with them."""
    units: dict[Pair, CountedUnit | None] = {}
    changes: list[UnitChange] = []
    for number, message_key in touched:
        facts = messages.statuses.get((number, message_key), [])
        unit = rules.message_unit(facts) if facts else None
        before = messages.stored_units.get((number, message_key))
        if before != unit:
            changes.append(UnitChange(number, before, unit))
        units[(number, message_key)] = unit
    return units, changes


def _count_conversations(
    conn: Connection, conversations: set[Pair], statuses: dict[Pair, list[StatusFact]]
) -> dict[Pair, CountedUnit]:
    """{(number, unit_key): unit} of these (number, conversation_id) CBP conversations (Rule C),
    from the statuses of all their member messages (`statuses` gains those it lacked)."""
    members = facts_repo.messages_in_conversations(conn, conversations)
    missing = {(n, m) for (n, _), keys in members.items() for m in keys} - statuses.keys()
    if missing:
        statuses.update(facts_repo.statuses_of(conn, missing))
    units: dict[Pair, CountedUnit] = {}
    for number, conversation in conversations:
        member_facts = [
            fact
            for message_key in members.get((number, conversation), ())
            for fact in statuses.get((number, message_key), ())
        ]
        unit = rules.conversation_unit(conversation, member_facts)
        if unit is not None:
            units[(number, unit.unit_key)] = unit
    return units


def _draft_messages(batch: NumberBatch) -> None:
    """Move the batch's messages that can be drafted from `statuses` into `drafts`.

    Not drafted: messages with a conversation id (Rule C reads their conversation's other
    members from the database) and messages of customers known only by a BSUID (the database
    may link them to another key first)."""
    by_message: dict[str, set[StatusFact]] = defaultdict(set)
    for fact in batch.statuses:
        by_message[fact.message_key].add(fact)
    kept = {
        fact.message_key
        for fact in batch.statuses
        if fact.conversation_id is not None or fact.user_key in batch.bsuid_customers
    }
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
    batch.statuses = [fact for fact in batch.statuses if fact.message_key in kept]
