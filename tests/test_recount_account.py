"""Recounting one account's rollup reads and rewrites that account only.

`recount --account` used to compare and rewrite every account's rollup (whole-table scans,
every shard on Citus); now each account is checked on its own, by its numbers."""

from __future__ import annotations

from sqlalchemy import text

from conftest import make_settings
from helpers import add_number, create_tenant, seed_units
from wastats.ingest.recount import accounts_to_recount, recount_account_rollups
from wastats.store import counts as counts_repo
from wastats.store.db import Database
from webhooks import at


def test_recounting_one_account_leaves_the_others_alone(database_url: str) -> None:
    config = make_settings(database_url)
    first, second = create_tenant(config, "First"), create_tenant(config, "Second")
    add_number(config, first, "15550001111", "1001")
    add_number(config, second, "15550002222", "2002")
    seed_units(config, "1001", [(at("2025-03-10 10:00"), "incoming")])
    seed_units(config, "2002", [(at("2025-03-10 10:00"), "marketing")])
    db = Database(database_url)
    try:
        with db.write() as conn:  # both accounts' rollups tampered with
            conn.execute(text("UPDATE account_monthly_counts SET units = units + 5"))
            ids = {
                name: conn.execute(
                    text("SELECT id FROM accounts WHERE name = :n"), {"n": name}
                ).scalar_one()
                for name in ("First", "Second")
            }
            assert sorted(accounts_to_recount(conn, None)) == sorted(ids.values())
            assert accounts_to_recount(conn, ids["First"]) == [ids["First"]]
            assert recount_account_rollups(conn, ids["First"], repair=True) == 1
            assert recount_account_rollups(conn, ids["First"], repair=False) == 0
            # The other account was neither read into the first's nor repaired with it.
            assert recount_account_rollups(conn, ids["Second"], repair=False) == 1
            first_rows = counts_repo.account_rows(conn, ids["First"], 202501, 202512)
            assert [row[-1] for row in first_rows] == [1]
            assert recount_account_rollups(conn, ids["Second"], repair=True) == 1
            assert recount_account_rollups(conn, ids["Second"], repair=False) == 0
    finally:
        db.dispose()
