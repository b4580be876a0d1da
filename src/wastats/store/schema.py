"""The schema, as SQLAlchemy Core tables. Alembic migrations create exactly this (a test checks).

Two kinds of tables:

* **Reference tables**, small and read everywhere: accounts, their tokens, the lockout state and
  the registered business numbers. On a sharded deployment (Citus) they are replicated to every
  node.
* **Number tables**, everything derived from webhooks: facts, counted units and rollups. Each is
  keyed by Meta's `phone_number_id` first, in its primary key and every unique key, so the same
  schema distributes by that column (docs/deployment.md). Facts and units exist for numbers
  nobody has registered yet; rollups exist only for registered numbers, in their account's zone.

Customers never appear in clear: `user_key` columns hold keyed hashes (HMAC) of their phone number
or business-scoped user id, and `country` the ISO region of their calling code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.schema import SchemaItem

# Explicit constraint names keep migrations identical on SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def emitted_on(dialect: str) -> Callable[[SchemaItem, str | None, str, bool, Any], bool]:
    """Alembic's `include_object` for a database of `dialect`: leaves out the tables' indexes
    and constraints made for another dialect only (`ddl_if`), which Alembic compares anyway."""

    def include(item: SchemaItem, _name: str | None, _type: str, reflected: bool, _to: Any) -> bool:
        ddl_if = getattr(item, "_ddl_if", None)
        return reflected or ddl_if is None or ddl_if.dialect in (None, dialect)

    return include


# Autoincrementing 64-bit ids on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
Id64 = BigInteger().with_variant(Integer(), "sqlite")

# --- reference tables -------------------------------------------------------------------------

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Months before a number's first observed day answered from Meta's record in the compatible
    # API (spec/meta-record.md, "History"); off unless the operator turns it on.
    Column("history_from_meta", Boolean, nullable=False, default=False, server_default=false()),
)

access_tokens = Table(
    "access_tokens",
    metadata,
    # SHA-256 of the token: tokens are 256 random bits, so a fast hash is enough and a lookup by
    # hash never needs the token in clear.
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", Id64, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "account_id"),
    Index(None, "expires_at"),
)

login_failures = Table(
    "login_failures",
    metadata,
    # Failed `accessToken` attempts, counted twice (migration 0007): per address (`client_id`
    # '') and per (address, client id) of an existing account, with separate limits, so that
    # neither one tenant's success resets another's count nor one tenant's typos lock out the
    # others behind the same address. `address` is an IPv4 address, an IPv6 /64 network, or
    # `invalid` (wastats.domain.auth.lockout_address).
    Column("address", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("window_start", BigInteger, nullable=False),
    Column("locked_until", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint("address", "client_id"),
    Index(None, "window_start"),
)

business_numbers = Table(
    "business_numbers",
    metadata,
    Column("phone_number_id", String(64), primary_key=True),
    Column("account_id", Id64, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("whatsapp", String(15), nullable=False, unique=True),
    Column("waba_id", String(64)),
    Column("display_name", String(200)),
    Column("business_name", String(200)),
    Column("coexistence", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    # Unix seconds: units older than this are not the account's (the number came from another
    # account; docs/counting.md, "Moving a number"). NULL: all of the number's history counts.
    Column("counts_from", BigInteger),
    Index(None, "account_id"),
)

released_numbers = Table(
    "released_numbers",
    metadata,
    # Who last unregistered a number, so that adding it again knows whether it changes hands.
    # SET NULL, not CASCADE: a deleted account's number must still count as another's history
    # (and SQLite may reuse a deleted account's id).
    Column("phone_number_id", String(64), primary_key=True),
    Column("account_id", Id64, ForeignKey("accounts.id", ondelete="SET NULL")),
    Column("released_at", BigInteger, nullable=False),
    # The released registration's own `counts_from`, restored if the same account adds it back.
    Column("counts_from", BigInteger),
)

# --- number tables: rollups -------------------------------------------------------------------

monthly_counts = Table(
    "monthly_counts",
    metadata,
    Column(
        "phone_number_id",
        String(64),
        ForeignKey("business_numbers.phone_number_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("month", Integer, nullable=False),  # YYYYMM in the account's time zone
    Column("bucket", String(16), nullable=False),
    Column("category", String(48), nullable=False),
    Column("pricing_type", String(48), nullable=False),
    Column("units", BigInteger, nullable=False),
    PrimaryKeyConstraint("phone_number_id", "month", "bucket", "category", "pricing_type"),
)

account_monthly_counts = Table(
    "account_monthly_counts",
    metadata,
    # The same rollup summed over an account's numbers: an account-wide answer reads a few
    # dozen rows whatever the number of numbers or events (measured: 1,000 numbers made the
    # per-number sum 135x slower than a bare request). Kept in step by store/counts.py.
    Column("account_id", Id64, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("month", Integer, nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("category", String(48), nullable=False),
    Column("pricing_type", String(48), nullable=False),
    Column("units", BigInteger, nullable=False),
    PrimaryKeyConstraint("account_id", "month", "bucket", "category", "pricing_type"),
)

# --- number tables: the inbox and the facts ---------------------------------------------------

inbox = Table(
    "inbox",
    metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    # SHA-256 of the raw body: Meta's retries and re-imports of the same file are the same body,
    # stored once (the unique indexes below).
    Column("body_sha256", String(64), nullable=False),
    # The body itself is in `inbox_bodies` (migration 0014), while it is kept.
    Column("source", String(16), nullable=False),  # webhook | import
    Column("received_at", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | processed | rejected
    Column("reason", Text),
    Column("events", Integer, nullable=False, default=0),
    Column("processed_at", BigInteger),
    Index(None, "state"),
    Index(None, "received_at"),
    # PostgreSQL: one unique index. SQLite: two, split by state (migrations 0012 and 0013),
    # because an index on a hash puts every new row in a random page of it, and that page is
    # written again by every commit: on the webhook's commit it was half of what storing a body
    # cost the inbox writer (issue 13, measured). The settled rows' index is unique and large;
    # a row enters it when counting marks it, in the counting child's large transactions, off
    # the webhook's path. The pending rows' index holds only the first 8 hex digits of each
    # hash (`ix_inbox_pending_sha_prefix`, below): a few pages for thousands of rows, so the
    # writer's commits touch few pages of it however many bodies wait to be counted. The writer
    # looks a new body up in both before inserting it, in the same write transaction, so no
    # hash is ever stored twice (`inbox.insert_bodies`).
    UniqueConstraint("body_sha256").ddl_if(dialect="postgresql"),
    Index(
        "uq_inbox_settled_sha256",
        "body_sha256",
        unique=True,
        sqlite_where=text("state <> 'pending'"),
    ).ddl_if(dialect="sqlite"),  # fmt: skip
)

PENDING_SHA_PREFIX = 8
"""Hex digits of a pending body's hash in `ix_inbox_pending_sha_prefix` (SQLite)."""

Index(
    "ix_inbox_pending_sha_prefix",
    func.substr(inbox.c.body_sha256, 1, PENDING_SHA_PREFIX),
    sqlite_where=text("state = 'pending'"),
).ddl_if(dialect="sqlite")

inbox_bodies = Table(
    "inbox_bodies",
    metadata,
    # A row's body, apart from the row (migration 0014): counting records each body's outcome
    # (state, events, reason), and SQLite rewrites a whole record when its size changes, the
    # body's overflow pages included. Kept with the row, a 10 KB body was written twice more
    # (to the WAL, then to the database) by the outcome alone: a quarter of the pages a counting
    # transaction wrote for 100-status bodies (issue 13, measured). Here, once stored, a body is
    # only read, re-sealed (`wastats security`) or deleted (retention).
    Column("id", Id64, ForeignKey("inbox.id"), primary_key=True, autoincrement=False),
    # `body_key` names the key that sealed the body (migration 0007); NULL: stored in clear by
    # a wastats from before sealing, read as is.
    Column("body_key", String(16)),
    # AES-256-GCM sealed (wastats.sealing); the row is deleted once the body is older than
    # WASTATS_RAW_RETENTION_DAYS.
    Column("body", LargeBinary, nullable=False),
)

inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("phone_number_id", String(64), nullable=False),
    Column("wamid", String(160), nullable=False),
    Column("user_key", String(32), nullable=False),  # canonical customer (after identity links)
    Column("wa_key", String(32)),  # hash of the phone number, if the message carried one
    Column("bsuid_key", String(32)),  # hash of the business-scoped user id, if any
    Column("ts", BigInteger, nullable=False),
    Column("country", String(2)),
    # One row per distinct (message, customer, time), like a message's statuses: Meta never
    # reuses a wamid, but when two copies of one disagree, keeping both is what keeps the counts
    # a function of the set of events received, whatever came first (migration 0006).
    PrimaryKeyConstraint("phone_number_id", "wamid", "user_key", "ts"),
    Index(None, "phone_number_id", "user_key", "ts"),
)

message_facts = Table(
    "message_facts",
    metadata,
    Column("phone_number_id", String(64), nullable=False),
    # wamid, or wamid/participant-hash for group messages (one delivery per member)
    Column("message_key", String(200), nullable=False),
    # Every distinct status Meta sent for the message, as a JSON array of rows in the order of
    # `wastats.store.facts.STATUS_FIELDS`, sorted. One row per message, not per status: the
    # rules always read a message's statuses together, and one index entry per message instead
    # of one per status is what lets a backfill keep up (docs/benchmarks.md, "Import").
    Column("statuses", Text, nullable=False),
    # The message's Rule P unit (`P:<message_key>`, kind `message`), if it counts as one: kept
    # in its message's row, not in `counted_units`, which saves the unit's own random index
    # write (docs/benchmarks.md, "Import"). `unit_ts` NULL: no unit.
    Column("unit_ts", BigInteger),
    Column("unit_bucket", String(16)),
    Column("unit_category", String(48)),
    Column("unit_pricing_type", String(48)),
    Column("unit_era", String(4)),
    Column("unit_user_key", String(32)),
    Column("unit_country", String(2)),
    PrimaryKeyConstraint("phone_number_id", "message_key"),
    Index(
        None,
        "phone_number_id",
        "unit_ts",
        sqlite_where=text("unit_ts IS NOT NULL"),
        postgresql_where=text("unit_ts IS NOT NULL"),
    ),
)

message_conversations = Table(
    "message_conversations",
    metadata,
    # Which messages carry which conversation id (Rule C gathers a conversation's members).
    # Only CBP-era statuses, and some v23 ones, carry an id, so this table stays small.
    Column("phone_number_id", String(64), nullable=False),
    Column("conversation_id", String(160), nullable=False),
    Column("message_key", String(200), nullable=False),
    PrimaryKeyConstraint("phone_number_id", "conversation_id", "message_key"),
)

user_links = Table(
    "user_links",
    metadata,
    Column("phone_number_id", String(64), nullable=False),
    Column("bsuid_key", String(32), nullable=False),
    Column("wa_key", String(32), nullable=False),
    PrimaryKeyConstraint("phone_number_id", "bsuid_key"),
)

# --- number tables: counted units ---------------------------------------------------------------

counted_units = Table(
    "counted_units",
    metadata,
    Column("phone_number_id", String(64), nullable=False),
    Column("unit_key", String(240), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("category", String(48), nullable=False),
    Column("pricing_type", String(48), nullable=False),
    Column("era", String(4)),
    Column("user_key", String(32)),
    Column("country", String(2)),
    # Incoming sessions (Rule I) and CBP conversations (Rule C); message units live in
    # `message_facts`.
    PrimaryKeyConstraint("phone_number_id", "unit_key"),
    Index(None, "phone_number_id", "ts"),
    # Recomputing a customer's sessions looks them up by customer. Only sessions: an index entry
    # per message unit would be one more random write per message (docs/benchmarks.md).
    Index(
        None,
        "phone_number_id",
        "user_key",
        sqlite_where=text("kind = 'incoming'"),
        postgresql_where=text("kind = 'incoming'"),
    ),
)

number_activity = Table(
    "number_activity",
    metadata,
    Column("phone_number_id", String(64), primary_key=True),
    # Event time (Meta's timestamp) of the newest event counted for the number: the `as_of` of
    # statistics answers. Kept here so no answer has to scan facts for it.
    Column("newest_event", BigInteger, nullable=False),
    Column("last_received", BigInteger, nullable=False),
)

# --- service state ----------------------------------------------------------------------------

service_state = Table(
    "service_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# --- Meta's record (spec/meta-record.md) ------------------------------------------------------

meta_reported = Table(
    "meta_reported",
    metadata,
    # Meta's `pricing_analytics` data points at HALF_HOUR granularity, as reported. Meta names
    # the number by its digits; the sync maps them to the phone-number id through the WABA's
    # phone-number list, so, like facts, rows of numbers nobody has registered are kept and
    # appear once the number is registered (spec, "Sync"), and the key leads with the number.
    Column("phone_number_id", String(64), nullable=False),
    Column("slot", BigInteger, nullable=False),  # UTC start of the half hour
    Column("country", String(2), nullable=False),  # "" when Meta gave none
    Column("category", String(48), nullable=False),  # lower case, as in /v1/stats
    Column("pricing_type", String(48), nullable=False),
    Column("tier", String(32), nullable=False),  # "" for free messages (Meta omits it)
    Column("waba_id", String(64), nullable=False),
    Column("volume", BigInteger, nullable=False),
    # Meta's `cost` in millionths of the WABA's currency (exact, unlike a float); NULL where Meta
    # returned none (WABAs on a partner's credit line).
    Column("cost_micros", BigInteger),
    Column("synced_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("phone_number_id", "slot", "country", "category", "pricing_type", "tier"),
)

meta_sync_state = Table(
    "meta_sync_state",
    metadata,
    Column("waba_id", String(64), primary_key=True),
    Column("account_id", Id64, ForeignKey("accounts.id", ondelete="SET NULL")),
    Column("linked_at", BigInteger, nullable=False),
    # [covered_from, covered_to): every chunk of this span has been stored completely. A sync
    # extends it chunk by chunk, each chunk in its own transaction, so a killed sync resumes
    # from `covered_to` and nothing half-read is ever inside the span.
    Column("covered_from", BigInteger),
    Column("covered_to", BigInteger),
    Column("last_success", BigInteger),  # end of the last sync that ran to the end
    Column("last_error", Text),
    Column("last_error_at", BigInteger),
    Column("failures", Integer, nullable=False, default=0),
    Column("next_try", BigInteger, nullable=False, default=0),
    # A sync in progress holds the WABA until `lease_until`: two processes (service workers, a
    # CLI `wastats meta sync`) never sync the same WABA at once.
    Column("lease_until", BigInteger, nullable=False, default=0),
)

# An account's own Meta access token (used for its WABAs instead of WASTATS_META_ACCESS_TOKEN),
# sealed like raw bodies (wastats.sealing, `for_meta_tokens`), bound to the account: a copy of
# the database never gives a token away. `key_id` names the key that sealed it, so a rotation of
# WASTATS_BODY_KEYS can find and reseal the tokens still sealed with an old key.
meta_tokens = Table(
    "meta_tokens",
    metadata,
    Column("account_id", Id64, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("set_at", BigInteger, nullable=False),
)

# --- forwarding to the customer's own webhook consumer (issue 15) ------------------------------

forward_destinations = Table(
    "forward_destinations",
    metadata,
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    # all | waba | number; `scope_value` is the WABA id or the number's digits ('' for all).
    Column("scope", String(16), nullable=False),
    Column("scope_value", String(64), nullable=False),
    # cli | config (WASTATS_FORWARD_URLS: kept in step with the setting at every start)
    Column("source", String(16), nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    # Totals and the last outcome, kept here by the delivery worker so that status and metrics
    # never count a destination's whole history.
    Column("delivered_total", BigInteger, nullable=False, default=0),
    Column("failed_attempts_total", BigInteger, nullable=False, default=0),
    Column("last_delivered_at", BigInteger),
    Column("last_error", Text),
    Column("last_error_at", BigInteger),
    Index(None, "url", "scope", "scope_value", unique=True),
)

forward_deliveries = Table(
    "forward_deliveries",
    metadata,
    # One row per (inbox body, destination), written in the inbox insert's own transaction.
    Column("id", Id64, primary_key=True, autoincrement=True),
    Column("inbox_id", Id64, ForeignKey("inbox.id"), nullable=False),
    Column(
        "destination_id",
        Id64,
        ForeignKey("forward_destinations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # Meta's own headers to send with the body (JSON [[name, value], ...]): the signature is
    # Meta's HMAC of the exact bytes, so the consumer verifies it as if Meta had called it.
    Column("headers", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | dead
    Column("created_at", BigInteger, nullable=False),  # start of the 7-day retry window
    Column("attempts", Integer, nullable=False, default=0),
    # When it may be tried next. A claim moves it forward by the lease, so a process that dies
    # mid-attempt leaves the row to be claimed again once the lease is over.
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", BigInteger),
    Column("dead_at", BigInteger),
    Index(None, "inbox_id", "destination_id", unique=True),
    Index(None, "destination_id", "state", "next_attempt_at"),
)
