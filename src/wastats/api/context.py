"""What every request handler may use: settings, database, clock. One per app, built in
`create_app`, reached through `request.app.state.ctx` (never a module-level global)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from wastats.domain import auth
from wastats.settings import Settings
from wastats.store.accounts import AccountRow
from wastats.store.db import Database

if TYPE_CHECKING:
    from wastats.ingest.service import IngestService

T = TypeVar("T")

SESSION_COOKIE = "wastats_session"
"""The dashboard's session cookie: an access token (stored hashed, like any other), HttpOnly,
SameSite=Strict. /v1 accepts it in place of an Authorization header."""


@dataclass
class AppContext:
    settings: Settings
    db: Database
    clock: Callable[[], float] = time.time
    ingest: IngestService | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    meta_app_secrets: list[bytes] = field(init=False)
    """From the settings, split once rather than on every webhook."""

    def __post_init__(self) -> None:
        self.meta_app_secrets = self.settings.meta_app_secrets()

    def now(self) -> int:
        return int(self.clock())

    def issue_token(
        self, client_id: str, client_secret: str, ip: str
    ) -> auth.IssuedToken | auth.TokenRefusal | auth.LockedOut:
        """A token for client credentials under the configured lifetime and lockout (blocking:
        call through `run`). The compatible API and the dashboard's sign-in share it."""
        s = self.settings
        with self.db.write() as conn:
            return auth.issue_token(
                conn,
                client_id=client_id,
                client_secret=client_secret,
                ip=ip,
                now=self.now(),
                lifetime=s.token_lifetime_seconds,
                lockout=auth.LockoutPolicy(
                    threshold=s.lockout_threshold,
                    window_seconds=s.lockout_window_seconds,
                    lock_seconds=s.lockout_seconds,
                    address_threshold=s.lockout_address_threshold,
                ),
            )

    def authenticate(self, token: str) -> AccountRow | None:
        """The account of a live token, or None (blocking: call through `run`)."""
        with self.db.read() as conn:
            return auth.authenticate(conn, token, self.now())

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking database work off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)


def context_of(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def client_ip(request: Request) -> str:
    # ProxyHeadersMiddleware has already replaced the peer with X-Forwarded-For's client when
    # the peer is a trusted proxy (WASTATS_FORWARDED_ALLOW_IPS).
    return request.client.host if request.client else "unknown"
