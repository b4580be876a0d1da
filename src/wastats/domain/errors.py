"""Errors the domain raises; the HTTP layer and the CLI turn each into their own answer."""

from __future__ import annotations


class DomainError(Exception):
    """An expected failure with a message fit to show a user."""


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class InvalidInput(DomainError):
    pass
