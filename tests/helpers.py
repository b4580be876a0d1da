"""Test helpers that go through the real domain services and storage (no fakes)."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fastapi.testclient import TestClient
from sqlalchemy import Connection

from conftest import SECRET_KEY
from wastats.counting.model import Bucket, CountedUnit, Era, UnitKind
from wastats.domain import accounts, numbers
from wastats.domain.accounts import load_zone
from wastats.ingest.pipeline import Pipeline
from wastats.sealing import BodySealer
from wastats.settings import Settings
from wastats.store import counts as counts_repo
from wastats.store import inbox as inbox_repo
from wastats.store import numbers as numbers_repo
from wastats.store import units as units_repo
from wastats.store.db import Database

_ids = itertools.count(1)


@dataclass(frozen=True)
class Tenant:
    client_id: str
    client_secret: str
    timezone: str


def create_tenant(settings: Settings, name: str = "Shop", timezone: str = "UTC") -> Tenant:
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            creds = accounts.create_account(conn, name=name, timezone=timezone, now=1_735_689_600)
    finally:
        db.dispose()
    return Tenant(creds.client_id, creds.client_secret, timezone)


def add_number(
    settings: Settings,
    tenant: Tenant,
    whatsapp: str,
    phone_number_id: str | None = None,
    **extra: object,
) -> str:
    """Register a number; returns its phone_number_id."""
    pnid = phone_number_id or f"10{next(_ids):08d}"
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            numbers.add_number(
                conn,
                client_id=tenant.client_id,
                whatsapp=whatsapp,
                phone_number_id=pnid,
                waba_id=extra.get("waba_id"),  # type: ignore[arg-type]
                display_name=extra.get("display_name"),  # type: ignore[arg-type]
                business_name=extra.get("business_name"),  # type: ignore[arg-type]
                coexistence=bool(extra.get("coexistence", False)),
                now=int(extra.get("now", 1_735_800_000)),  # type: ignore[call-overload]
                with_history=bool(extra.get("with_history", False)),
            )
    finally:
        db.dispose()
    return pnid


def seed_units(
    settings: Settings, phone_number_id: str, units: Iterable[tuple[int, Bucket | str]]
) -> None:
    """Write counted units (UTC time, bucket) for a number through the units repository, with
    their rollups in the number's account zone, exactly as the counting pipeline would: an
    `incoming` unit is an incoming session, any other a CBP conversation of that category
    (both kinds are kept in `counted_units`), each added to its rollup by `rollup_key`."""
    db = Database(settings.database_url)
    try:
        with db.write() as conn:
            zone = load_zone(numbers_repo.zones_of(conn, [phone_number_id])[phone_number_id])
            seeded = []
            for ts, bucket in units:
                n, kind = next(_ids), Bucket(bucket)
                incoming = kind is Bucket.INCOMING
                unit = CountedUnit(
                    unit_key=f"I:seeded-{n}:{ts}" if incoming else f"C:seeded-{n}",
                    kind=UnitKind.INCOMING_SESSION if incoming else UnitKind.CBP_CONVERSATION,
                    timestamp=ts,
                    bucket=kind,
                    category=kind.value,
                    pricing_type="" if incoming else "regular",
                    era=None if incoming else Era.CBP,
                    user_key=f"seeded-{n}" if incoming else None,
                    country=None,
                )
                seeded.append((phone_number_id, unit))
            units_repo.write(conn, seeded, [])
            counts_repo.apply_deltas(
                conn, Counter(counts_repo.rollup_key(n, unit, zone) for n, unit in seeded)
            )
    finally:
        db.dispose()


def get_token(client: TestClient, tenant: Tenant, ip: str | None = None) -> str:
    headers = {"X-Forwarded-For": ip} if ip else {}
    answer = client.post(
        "/api/settings/accessToken",
        json={"client_id": tenant.client_id, "client_secret": tenant.client_secret},
        headers=headers,
    ).json()
    assert answer["status"] == "OK", answer
    return str(answer["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


TEST_SEALER = BodySealer([SECRET_KEY.encode()])
"""The sealer of an app built from the test settings (no WASTATS_BODY_KEYS: the secret key)."""


def store_bodies(
    conn: Connection, raws: Sequence[bytes], *, now: int, source: str = "webhook"
) -> dict[str, int]:
    """Raw bodies into the inbox, sealed as the app seals them: the new ones' ids by SHA-256."""
    return inbox_repo.insert_bodies(
        conn,
        [inbox_repo.NewBody(hashlib.sha256(r).hexdigest(), r, source, now) for r in raws],
        TEST_SEALER,
    )


def count_batch(conn: Connection, pipeline: Pipeline, batch: list[bytes], *, draft: bool) -> None:
    """Record raw bodies in the inbox and count the new ones in one step, as `wastats import`
    counts a chunk (`draft`: prepared as it does, each message as if new)."""
    new = store_bodies(conn, batch, now=0, source="import")
    by_sha = {hashlib.sha256(b).hexdigest(): b for b in batch}
    prepared = pipeline.prepare([by_sha[sha] for sha in new], draft=draft)
    pipeline.store(conn, prepared, list(new.values()), 0)
