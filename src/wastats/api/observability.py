"""Operations: /metrics (Prometheus), request ids and structured JSON logs (being built)."""

from __future__ import annotations

from fastapi import FastAPI

from wastats.api.context import AppContext
from wastats.settings import Settings


def install_observability(app: FastAPI, ctx: AppContext) -> None:
    """Add the request-id / access-log / metrics middleware and the /metrics route to `app`."""


def configure_logging(settings: Settings) -> None:
    """Configure the process's logging (called by `wastats serve` before uvicorn starts)."""
