"""The dashboard at /dashboard (being built: see docs/api-v1.md for the data it shows)."""

from __future__ import annotations

from fastapi import FastAPI


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard's routes and its static assets on `app`."""
