"""Tests for `wastats.whatsapp.signature`: X-Hub-Signature-256 over the exact raw body."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wastats.whatsapp.signature import sign, verify_signature

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "webhooks"
SECRET = b"app-secret-for-tests"
BODY = (FIXTURES / "meta-docs__status-sent-pmp-marketing-with-conversation.json").read_bytes()


def test_sign_is_sha256_prefix_and_lowercase_hex_hmac() -> None:
    header = sign(SECRET, BODY)
    expected = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert header == "sha256=" + expected
    assert header == header.lower()
    assert len(header) == len("sha256=") + 64


def test_known_vector() -> None:
    # RFC 4231 test case 2.
    header = sign(b"Jefe", b"what do ya want for nothing?")
    assert header == "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_round_trip() -> None:
    assert verify_signature(SECRET, BODY, sign(SECRET, BODY))


def test_wrong_secret() -> None:
    assert not verify_signature(b"other-secret", BODY, sign(SECRET, BODY))


def test_tampered_body_one_byte() -> None:
    header = sign(SECRET, BODY)
    index = BODY.index(b"1750030073")
    tampered = BODY[:index] + b"2" + BODY[index + 1 :]
    assert len(tampered) == len(BODY)
    assert not verify_signature(SECRET, tampered, header)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header(header: str | None) -> None:
    assert not verify_signature(SECRET, BODY, header)


def test_uppercase_hex_is_accepted() -> None:
    digest = sign(SECRET, BODY).removeprefix("sha256=")
    assert verify_signature(SECRET, BODY, "sha256=" + digest.upper())


@pytest.mark.parametrize(
    "make",
    [
        lambda h: h.removeprefix("sha256="),  # no prefix
        lambda h: "sha1=" + h.removeprefix("sha256="),  # wrong algorithm
        lambda h: "SHA256=" + h.removeprefix("sha256="),  # prefix is exact
        lambda h: h.replace("=", ":"),
        lambda h: " " + h,
        lambda h: h + "\n",
        lambda h: h[:-1],  # 63 hex digits
        lambda h: h + "0",  # 65 hex digits
        lambda h: h[:-1] + "g",  # non-hex
        lambda h: h[:-2] + "\u0661\u0662",  # non-ASCII digits
        lambda h: "sha256=" + "zz" * 32,
        lambda h: "garbage",
        lambda h: "sha256=",
    ],
)
def test_malformed_header(make: Callable[[str], str]) -> None:
    assert not verify_signature(SECRET, BODY, make(sign(SECRET, BODY)))


def test_signature_is_over_raw_bytes_not_reserialised_json() -> None:
    header = sign(SECRET, BODY)
    reserialised = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert json.loads(reserialised) == json.loads(BODY)
    assert not verify_signature(SECRET, reserialised, header)


def test_escaped_unicode_is_not_the_same_body() -> None:
    # Meta signs the \\u-escaped form it sends; decoding it first changes the bytes.
    escaped = b'{"text":"\\u00e4\\u00f6\\u00e5"}'
    decoded = '{"text":"\u00e4\u00f6\u00e5"}'.encode()
    assert verify_signature(SECRET, escaped, sign(SECRET, escaped))
    assert not verify_signature(SECRET, decoded, sign(SECRET, escaped))


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(max_size=80), raw=st.binary(max_size=500), header=st.text(max_size=80))
def test_never_raises(secret: bytes, raw: bytes, header: str) -> None:
    assert verify_signature(secret, raw, header) is False or header == sign(secret, raw)
    assert verify_signature(secret, raw, sign(secret, raw))
