"""Schemathesis against the app's own /openapi.json: no generated request to a /v1 route may
produce a server error or an answer that contradicts the documented schema.

The account has a year of traffic on two numbers (every bucket, free messages, customers of
several countries), so the answers checked against the schema have rows, groups and unique
customers, not only empty lists."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig

from conftest import make_settings
from helpers import add_number, create_tenant
from wastats.app import create_app
from wastats.domain import auth
from wastats.store.db import Database
from webhooks import at, deliver, inbound, status

A_ID, B_ID = "106540352242922", "106540352242933"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z: the default range (the last 12 months) has the data


def traffic() -> list[dict[str, Any]]:
    """A message of every kind in each month of 2025, alternating numbers and customers."""
    values: list[dict[str, Any]] = []
    users = ["972501111111", "14155550100", "447700900123", "4915123456789"]
    pricings = [("PMP", "marketing", "regular"), ("PMP", "utility", "regular"),
                ("PMP", "authentication", "regular"),
                ("PMP", "service", "free_customer_service")]  # fmt: skip
    for month in range(1, 13):
        number = A_ID if month % 2 else B_ID
        for i, pricing in enumerate(pricings):
            user = users[(month + i) % len(users)]
            ts = at(f"2025-{month:02d}-{10 + i} 10:00", "Asia/Jerusalem")
            values.append(inbound(user, ts - 600, number=number))
            values.append(status(f"w{month}.{i}", "delivered", ts, user=user, number=number,
                                 pricing=pricing))  # fmt: skip
    return values


@pytest.fixture
def authorized_app(sqlite_template: Any, tmp_path: Any) -> tuple[FastAPI, str]:
    import shutil

    target = tmp_path / "wastats.db"
    shutil.copyfile(sqlite_template, target)
    config = make_settings(f"sqlite:///{target}")
    tenant = create_tenant(config, "Fuzz", "Asia/Jerusalem")
    add_number(config, tenant, "972501234567", A_ID)
    add_number(config, tenant, "972507654321", B_ID, display_name="Shop B")
    with TestClient(create_app(config, clock=lambda: float(NOW))) as client:
        deliver(client, *traffic())
    db = Database(config.database_url)
    try:
        with db.write() as conn:
            issued = auth.issue_token(
                conn, client_id=tenant.client_id, client_secret=tenant.client_secret, ip="t",
                now=NOW, lifetime=10**8,
                lockout=auth.LockoutPolicy(threshold=10, window_seconds=60, lock_seconds=60),
            )  # fmt: skip
    finally:
        db.dispose()
    assert isinstance(issued, auth.IssuedToken)
    return create_app(config, clock=lambda: float(NOW)), issued.access_token


# Zone names, calendar dates and range limits are checked semantically (a schema can't say that
# 2025-13 or Mars/Base is invalid): a 422 for a schema-valid value is the documented answer.
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {"enabled": False}}})


def test_v1_never_fails_on_generated_requests(authorized_app: tuple[FastAPI, str]) -> None:
    # Driven through Hypothesis directly: schemathesis' pytest plugin does not support this
    # pytest version yet, and its strategies are the part we need.
    app, token = authorized_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG).include(
        path_regex="^/v1/"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/v1/stats", "/v1/numbers", "/v1/reconciliation"}
    counted: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"})
            ok = response.status_code == 200 and case.path == "/v1/stats"
            if ok and response.text.startswith("{"):  # JSON, not CSV
                counted.append(response.json()["totals"]["total"])

        run()
    # The generated requests did meet the data (not only 422s and empty answers).
    assert any(counted), counted
