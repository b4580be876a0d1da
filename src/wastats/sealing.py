"""Raw webhook bodies sealed at rest: AES-256-GCM under keys derived from the service's secrets.

A webhook body holds customers' phone numbers, names and message text. The inbox keeps it only
for replay (`wastats events replay`) and only for `WASTATS_RAW_RETENTION_DAYS`; meanwhile a copy
of the database (a backup, a stolen disk, a read-only SQL injection) must not give it away. So
each body is sealed before it is stored:

* **Key**: HKDF-SHA256 (RFC 5869) of a secret, with a fixed `info` naming this use, so the
  same secret can also key the customer hashes (wastats.ingest.identity) without the two keys
  being related. The secrets are `WASTATS_BODY_KEYS` when set, else the hashing secret
  (`WASTATS_SECRET_KEY` or the `wastats.secret` file).
* **Key id**: 8 hex digits of another HKDF output of the same secret, stored beside each body
  (`inbox.body_key`): it names the key without revealing anything about it, so keys can rotate:
  the first of `WASTATS_BODY_KEYS` seals, all of them open (docs/security.md).
* **Nonce**: 96 random bits per body (NIST SP 800-38D allows 2^32 messages per key with random
  nonces; a service that sees a billion bodies a year should rotate yearly).
* **Associated data**: the body's SHA-256, which is its inbox row's key, so a sealed body
  copied into another row does not open.

The same secrets seal the per-account Meta access tokens (`meta_tokens`, docs/meta-record.md),
through `BodySealer.for_meta_tokens()`: another HKDF `info`, so a token key is not a body key
(one leaked key opens one kind of secret), the same key ids, so one `WASTATS_BODY_KEYS` rotation
covers both; the associated data is the account, so a sealed token copied to another account's
row does not open.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
_BODY_INFO = b"wastats inbox body AES-256-GCM v1"
_KEY_ID_INFO = b"wastats inbox body key id v1"
_META_TOKEN_INFO = b"wastats meta access token AES-256-GCM v1"


class BodyUnreadable(Exception):
    """A sealed body that no configured key opens: its key is gone, or it was tampered with."""


def _derive(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


class BodySealer:
    """Seals with the first secret's key; opens with any of them, chosen by the stored key id."""

    def __init__(self, secrets: Sequence[bytes], *, info: bytes = _BODY_INFO) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed to seal bodies")
        self._secrets = tuple(secrets)
        self._keys: dict[str, AESGCM] = {}
        for secret in secrets:
            key_id = _derive(secret, _KEY_ID_INFO, 4).hex()
            self._keys.setdefault(key_id, AESGCM(_derive(secret, info, 32)))
        self.key_id = _derive(secrets[0], _KEY_ID_INFO, 4).hex()
        """The id stored beside every body sealed now."""
        self._sealing = self._keys[self.key_id]

    def for_meta_tokens(self) -> BodySealer:
        """A sealer for Meta access tokens: the same secrets and key ids, keys of their own."""
        return BodySealer(self._secrets, info=_META_TOKEN_INFO)

    @property
    def key_ids(self) -> list[str]:
        """Every key id this sealer can open (the sealing one first)."""
        return [self.key_id, *(k for k in self._keys if k != self.key_id)]

    def seal(self, raw: bytes, sha256: str) -> bytes:
        """`raw` sealed with the current key, bound to its hash: nonce || ciphertext || tag."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._sealing.encrypt(nonce, raw, sha256.encode("ascii"))

    def open(self, sealed: bytes, key_id: str | None, sha256: str) -> bytes:
        """The body back; `key_id` None is a body stored in clear by a wastats before sealing."""
        if key_id is None:
            return sealed
        key = self._keys.get(key_id)
        if key is None:
            raise BodyUnreadable(
                f"sealed with key {key_id}, which is not configured (WASTATS_BODY_KEYS)"
            )
        try:
            return key.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], sha256.encode("ascii"))
        except InvalidTag:
            raise BodyUnreadable(f"sealed body does not open with key {key_id}") from None
