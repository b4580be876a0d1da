"""All configuration in one typed object, read from `WASTATS_*` environment variables and `.env`.

Nothing here runs at import time: `load_settings()` is called by the CLI, and tests build a
`Settings` directly, so no test has to set environment variables before importing wastats.
Every field is documented in `docs/configuration.md` (a test keeps the two in step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MIB = 1024 * 1024


class ConfigurationError(Exception):
    """Bad configuration: the message is one line a user can act on."""


class Settings(BaseSettings):
    """wastats configuration. Field names map to `WASTATS_<NAME>` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="WASTATS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: str = Field(
        default="sqlite:///wastats.db",
        description="SQLAlchemy URL of the database: `sqlite:///path.db` (default `wastats.db` "
        "in the working directory) or `postgresql+psycopg://user:pass@host/db`.",
    )
    token_lifetime_seconds: int = Field(
        default=3600, ge=60, le=86400 * 30, description="Lifetime of an access token."
    )
    lockout_threshold: int = Field(
        default=10,
        ge=1,
        description="Failed `accessToken` attempts for one client id from one address, within "
        "the lockout window, that block that client id from that address (an IPv6 address "
        "counts as its /64).",
    )
    lockout_window_seconds: int = Field(
        default=900, ge=1, description="Window in which failed attempts are counted."
    )
    lockout_seconds: int = Field(
        default=900,
        ge=1,
        description="How long an address (or a client id from it) stays blocked once over "
        "a threshold.",
    )
    max_body_bytes: int = Field(
        default=1 * MIB, ge=1024, description="Largest request body accepted by the APIs."
    )
    max_webhook_body_bytes: int = Field(
        default=3 * MIB,
        ge=1024,
        description="Largest webhook body accepted (Meta sends up to 3 MB).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the service."
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="Log line format of `wastats serve`: `json` (one object per line, for log "
        "collectors) or `text` (for reading in a terminal).",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated proxy addresses whose `X-Forwarded-For` is trusted for the "
        "client IP (the lockout is per client IP); `*` trusts every peer.",
    )
    meta_app_secret: SecretStr | None = Field(
        default=None,
        description="Meta app secret; webhook POSTs must carry a valid `X-Hub-Signature-256` "
        "made with it. Without it the webhook endpoint refuses every POST. Several, separated "
        "by commas, are all accepted: for the switch-over when the secret is reset, or for "
        "numbers of several Meta apps.",
    )
    meta_verify_token: SecretStr | None = Field(
        default=None,
        description="The verify token you entered in Meta's App Dashboard, for the GET handshake.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key for the keyed hashes of customers' phone numbers and user ids. If unset, "
        "one is generated on first start and kept in `wastats.secret` beside the SQLite "
        "database (or in the working directory for PostgreSQL).",
    )
    raw_retention_days: int = Field(
        default=30, ge=0, description="Days raw webhook bodies are kept; 0 keeps them forever."
    )

    # --- what the public port serves besides the APIs (/metrics, /docs) ---
    metrics: Literal["public", "token", "off"] | None = Field(
        default=None,
        description="Who may read `GET /metrics`: `public` (anyone who reaches the port), `token` "
        "(only with `Authorization: Bearer <WASTATS_METRICS_TOKEN>`) or `off` (no such route). "
        "Unset: `token` when `WASTATS_METRICS_TOKEN` is set, else `public`.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="The bearer token Prometheus sends for `/metrics` (at least 16 characters).",
    )
    docs: Literal["on", "off"] = Field(
        default="on",
        description="`on` serves the API reference (`/docs`, Swagger UI from the package) and "
        "`/openapi.json`; `off` serves neither.",
    )

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_is_set_when_needed(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None and info.data.get("metrics") == "token":
            raise ValueError("must be set when WASTATS_METRICS=token")
        if value is not None and len(value.get_secret_value()) < 16:
            # Prometheus sends it on every scrape; a short one could be guessed.
            raise ValueError("must be at least 16 characters")
        return value

    def metrics_access(self) -> Literal["public", "token", "off"]:
        """How `/metrics` is served, with the default resolved."""
        if self.metrics is not None:
            return self.metrics
        return "token" if self.metrics_token is not None else "public"

    # --- hardening (issue 11) -------------------------------------------------------------
    lockout_address_threshold: int = Field(
        default=100,
        ge=1,
        description="Failed `accessToken` attempts from one address, whatever the client id, "
        "within the lockout window, that block the whole address. Higher than "
        "`WASTATS_LOCKOUT_THRESHOLD`, so one tenant's typos do not lock out the others behind "
        "the same address.",
    )
    body_keys: SecretStr | None = Field(
        default=None,
        description="Secrets the raw webhook bodies are sealed with (AES-256-GCM, key by "
        "HKDF), comma-separated: the first seals new bodies, every one opens old ones "
        "(rotation: put a new secret first, drop the old one once bodies sealed with it are "
        "purged). Unset: the key is derived from the secret key.",
    )

    # --- limits and timeouts (issue 11: bounded cost per request, slow clients) -------------
    max_stats_rows: int = Field(
        default=10000,
        ge=10,
        description="Most rows one `/v1/stats` answer may have; a question that can have more "
        "is refused with a 422 problem saying how to narrow it.",
    )
    max_stats_units: int = Field(
        default=2_000_000,
        ge=1000,
        description="Most counted units one `/v1/stats` answer may read (questions the monthly "
        "rollups cannot answer: days, weeks, other zones, countries, unique customers), "
        "estimated from the rollups before reading; more is refused with a 422 problem.",
    )
    api_rate_per_minute: int = Field(
        default=120,
        ge=1,
        description="Requests per minute to the statistics APIs (`/v1`, `/api/whatsapp`) per "
        "access token (per client IP without one), in each server process; more get HTTP 429 "
        "with `Retry-After`.",
    )
    api_burst: int = Field(
        default=30,
        ge=1,
        description="Requests one token may make at once before `WASTATS_API_RATE_PER_MINUTE` "
        "applies (the size of its token bucket).",
    )
    api_concurrency: int = Field(
        # The dashboard asks four things at once when it loads.
        default=4,
        ge=1,
        description="Requests one access token may have in progress at once, per server process; "
        "another one gets HTTP 429.",
    )
    stats_workers: int = Field(
        default=2,
        ge=1,
        description="Statistics queries computed at once per server process (others wait their "
        "turn), so heavy questions never take every thread and core from webhooks.",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Time a client has to send a whole request body once it started; a slower "
        "one gets HTTP 408 and its connection is closed.",
    )
    graceful_shutdown_seconds: int = Field(
        default=30,
        ge=0,
        description="On SIGTERM, how long `wastats serve` waits for requests in progress before "
        "closing their connections and exiting.",
    )
    counting: Literal["process", "thread"] = Field(
        default="process",
        description="Where each server process counts the webhooks it stored: `process`, a "
        "child process of its own (off the event loop's GIL; restarted if it dies), or "
        "`thread`, a thread of the server process.",
    )

    # --- Meta's record (spec/meta-record.md, docs/meta-record.md) ---
    meta_access_token: SecretStr | None = Field(
        default=None,
        description="Meta access token (a system user's) with `whatsapp_business_management`, "
        "for `pricing_analytics` and phone-number lists. Without it nothing is synced. Never "
        "logged or shown.",
    )
    meta_graph_url: str = Field(
        default="https://graph.facebook.com",
        description="Base URL of the Graph API (tests and the walk-through point it at "
        "`wastats dev fake-graph`).",
    )
    meta_graph_version: str = Field(
        default="v24.0", pattern=r"^v[0-9]+\.[0-9]+$", description="Graph API version."
    )
    meta_sync_interval: int = Field(
        default=3600,
        ge=0,
        description="Seconds between the service's syncs of Meta's record (each re-reads the "
        "last 3 days); 0 turns the background sync off. Off anyway without an access token.",
    )

    # --- forwarding to the customer's own webhook consumer (docs/forwarding.md) -------------
    forward_urls: str = Field(
        default="",
        description="Comma-separated URLs every accepted webhook body is forwarded to, "
        "byte-exact with Meta's signature (more, per WABA or number: `wastats forward add`).",
    )
    forward_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Time one forwarding attempt may take, connection included; longer is a "
        "failed attempt, retried later.",
    )
    forward_concurrency: int = Field(
        default=16, ge=1, le=256, description="Requests in flight at once to one destination."
    )
    forward_degraded_after_seconds: int = Field(
        default=300,
        ge=1,
        description="`/healthz` says `degraded` when a destination's oldest pending delivery "
        "is older than this.",
    )
    forward_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities to trust for HTTPS destinations "
        "(default: the system's and certifi's). Certificates are always verified.",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url_is_supported(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL: {value!r}") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
            # Rewrite `postgresql://` to the psycopg 3 driver rather than making users know it.
            value = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return value

    @field_validator("forward_ca_file")
    @classmethod
    def _ca_file_is_readable(cls, value: Path | None) -> Path | None:
        # Read at the first HTTPS delivery, perhaps hours after the start: a wrong path is
        # said at the start instead. (Its contents are checked then: `ssl` has no cheaper way.)
        if value is not None and not (value.is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"no readable file at {value}")
        return value

    def meta_app_secrets(self) -> list[bytes]:
        """The app secrets webhook signatures are checked against (none: refuse every POST)."""
        if self.meta_app_secret is None:
            return []
        given = self.meta_app_secret.get_secret_value().split(",")
        return [secret.strip().encode() for secret in given if secret.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def data_directory(self) -> Path:
        """Where generated state lives: the SQLite file's directory, else the working directory."""
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(url.database).resolve().parent
        return Path.cwd()


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (and `.env`), raising a one-line error if bad."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        raise ConfigurationError(
            f"invalid configuration: WASTATS_{field.upper()}: {first['msg']}"
        ) from None


def forward_urls(settings: Settings) -> list[str]:
    """The destinations of `WASTATS_FORWARD_URLS`, in order, without blanks or repeats."""
    urls = [u.strip() for u in settings.forward_urls.split(",") if u.strip()]
    return list(dict.fromkeys(urls))
