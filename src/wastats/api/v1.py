"""The modern statistics API (docs/api-v1.md): being built."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["statistics (v1)"])
