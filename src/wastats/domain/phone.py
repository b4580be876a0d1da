"""Phone numbers as the compatible API writes them: international digits, no `+`."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[+\s\-().]")
_DIGITS = re.compile(r"[0-9]{8,15}")


def normalise_whatsapp(value: str) -> str | None:
    """`+972-50-123 4567` → `972501234567`; None if the result is not 8 to 15 digits."""
    digits = _SEPARATORS.sub("", value)
    return digits if _DIGITS.fullmatch(digits) else None
