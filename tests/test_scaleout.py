"""Scale-out: several real `wastats serve` processes on one PostgreSQL database count exactly
what one process counts, and what the independent reference says.

A few hundred generated events (both pricing eras, several customers, two numbers, fixed seed) are
packed into signed bodies and sent shuffled, with duplicates (identical bodies, and the same
events re-encoded as different bodies), by eight concurrent clients spread over one
`wastats serve --workers 2` and two `wastats serve --workers 1`. Every POST must get 200; once
the shared inbox has nothing pending, the statistics (asked of every process) must equal those of
a single process fed the same events once each in order on a fresh database, and those of
`reference_counting`; `wastats recount` must find nothing to repair.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import (
    drop_postgres_database,
    make_settings,
    new_citus_database,
    new_postgres_database,
)
from helpers import Tenant, add_number, bearer, create_tenant, get_token
from pgcluster import CitusCluster, PostgresCluster
from procs import (
    NUMBERS,
    ZONE,
    Server,
    expected_months,
    generate_events,
    months_of,
    pack,
    reencoded,
    run_cli,
    send_all,
    statistics,
    token,
)
from wastats.app import create_app
from webhooks import post, settle

SEED = 20250701


def register(database_url: str) -> Tenant:
    settings = make_settings(database_url)
    tenant = create_tenant(settings, "Scale", ZONE)
    for phone_number_id, digits in NUMBERS.items():
        add_number(settings, tenant, digits, phone_number_id)
    return tenant


def single_process_answers(
    database_url: str, raws: list[bytes]
) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """Statistics (all numbers; per number) of one in-process app fed `raws` one by one."""
    tenant = register(database_url)
    with TestClient(create_app(make_settings(database_url))) as client:
        for raw in raws:
            assert post(client, raw) == 200
        settle(client)
        headers = bearer(get_token(client, tenant))
        path = "/api/whatsapp/getConversationsStatistics"
        everything = client.get(path, headers=headers).json()
        per_number = {
            digits: client.get(path, headers=headers, params={"whatsapp": digits}).json()
            for digits in NUMBERS.values()
        }
    return everything, per_number


class Databases:
    """New databases on plain PostgreSQL or on the Citus cluster (distributed), and their URLs."""

    def __init__(self, cluster: PostgresCluster | CitusCluster) -> None:
        self.cluster = cluster

    def new(self) -> str:
        if isinstance(self.cluster, CitusCluster):
            return new_citus_database(self.cluster)
        return new_postgres_database(self.cluster)

    def drop(self, name: str) -> None:
        if isinstance(self.cluster, CitusCluster):
            self.cluster.drop_database(name)
        else:
            drop_postgres_database(self.cluster, name)


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql", "citus"])
def test_three_processes_on_one_postgresql_count_like_one_and_like_the_reference(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On plain PostgreSQL, and on Citus (coordinator + 2 workers, tables distributed; every
    process connects to the coordinator)."""
    pg_cluster = request.getfixturevalue(
        "pg_cluster" if engine == "postgresql" else "citus_cluster"
    )
    databases = Databases(pg_cluster)
    events = generate_events(SEED, 360)
    deliveries = pack(events, SEED)
    rng = random.Random(SEED)
    # ~20% duplicates: half identical bodies (inbox duplicates), half the same events in a
    # different body (counted-events duplicates).
    extra = rng.sample(deliveries, len(deliveries) // 5)
    stream = [d.raw for d in deliveries]
    stream += [d.raw if i % 2 else reencoded(d).raw for i, d in enumerate(extra)]
    rng.shuffle(stream)

    shared = databases.new()
    fresh = databases.new()
    servers: list[Server] = []
    try:
        url = pg_cluster.url(shared)
        tenant = register(url)
        servers = [
            Server(url, tmp_path / "a", workers=2),
            Server(url, tmp_path / "b"),
            Server(url, tmp_path / "c"),
        ]
        for server in servers:
            server.launch()  # all three start at once; then wait for each
        for server in servers:
            server.wait_healthy()
        bases = [s.url for s in servers]

        answers = send_all(bases, stream, threads=8)
        refused = [(i, code) for i, code in enumerate(answers) if code != 200]
        assert not refused, f"POSTs not answered 200: {refused[:10]}\n{servers[0].logs()}"

        for server in servers:
            health = server.wait_no_pending()
            assert health["inbox"]["rejected"] == 0, health
        # One inbox row per distinct body: duplicates recognised across processes too.
        assert health["inbox"]["processed"] == len(set(stream))

        expected = expected_months(events)
        assert expected, "the workload must count something"
        alone_all, alone_per_number = single_process_answers(
            pg_cluster.url(fresh), [d.raw for d in deliveries]
        )
        assert months_of(alone_all) == expected

        for server in servers:
            access = token(server.url, tenant.client_id, tenant.client_secret)
            answer = statistics(server.url, access)
            assert answer == alone_all
            assert months_of(answer) == expected
            assert answer["totalWhatsApp"] == len(NUMBERS)
            for phone_number_id, digits in NUMBERS.items():
                one = statistics(server.url, access, digits)
                assert one == alone_per_number[digits]
                assert months_of(one) == expected_months(events, phone_number_id)

        for server in servers:
            assert server.stop() is not None
        recount = run_cli(["recount"], url, tmp_path)
        assert recount.returncode == 0, recount.stdout + recount.stderr
        assert "No difference" in recount.stdout, recount.stdout
    finally:
        for server in servers:
            server.stop()
        databases.drop(shared)
        databases.drop(fresh)
