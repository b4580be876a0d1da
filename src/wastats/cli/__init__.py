"""The `wastats` command. Thin: every command calls the same domain services as the HTTP API."""

from wastats.cli.main import app, main

__all__ = ["app", "main"]
