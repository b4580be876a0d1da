"""`X-Hub-Signature-256` helpers: Meta signs every webhook POST with the app secret.

The HMAC is computed over the exact bytes received. Re-serialising the parsed JSON changes
whitespace and escaping (Meta escapes non-ASCII as `\\uXXXX`), so it must never be used here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

__all__ = ["sign", "verify_signature"]

PREFIX: Final = "sha256="

# fullmatch plus an explicit ASCII class: `\d`-style checks would let non-ASCII
# digits through, and `$` alone would accept a trailing newline.
_HEADER: Final = re.compile(r"sha256=([0-9a-fA-F]{64})")


def sign(app_secret: bytes, raw: bytes) -> str:
    """The header value Meta sends for `raw`: `sha256=` and the lowercase hex HMAC-SHA256."""
    return PREFIX + hmac.new(app_secret, raw, hashlib.sha256).hexdigest()


def verify_signature(app_secret: bytes, raw: bytes, header: str | None) -> bool:
    """True if `header` is a valid `sha256=<64 hex>` signature of `raw` under `app_secret`.

    Never raises: a missing, empty or malformed header (or arguments of the wrong type) is
    simply not a valid signature.
    """
    if not isinstance(header, str):
        return False
    match = _HEADER.fullmatch(header)
    if match is None:
        return False
    try:
        expected = hmac.digest(app_secret, raw, "sha256")
    except (TypeError, ValueError):
        return False
    # Compare bytes, not hex text, so upper- and lowercase hex are equally accepted; the
    # comparison itself is constant-time.
    return hmac.compare_digest(expected, bytes.fromhex(match.group(1)))
