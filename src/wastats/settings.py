"""All configuration in one typed object, read from `WASTATS_*` environment variables and `.env`.

Nothing here runs at import time: `load_settings()` is called by the CLI, and tests build a
`Settings` directly, so no test has to set environment variables before importing wastats.
Every field is documented in `docs/configuration.md` (a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
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
        description="Failed `accessToken` attempts from one IP, within the lockout window, that "
        "block it.",
    )
    lockout_window_seconds: int = Field(
        default=900, ge=1, description="Window in which failed attempts are counted."
    )
    lockout_seconds: int = Field(
        default=900, ge=1, description="How long an IP stays blocked once over the threshold."
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
        default=4, ge=1, le=256, description="Requests in flight at once to one destination."
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
        "(default: the system's). Certificates are always verified.",
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
