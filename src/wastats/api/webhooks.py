"""`/webhooks/whatsapp`: Meta's verification handshake (GET) and event delivery (POST).

A plain Starlette endpoint rather than a FastAPI one: it is the hot path (thousands of requests
per second in a campaign), needs the exact raw bytes for the signature, and has no parameters
for FastAPI to validate. The signature is checked on the raw body before anything parses it.
"""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from wastats.api.context import context_of
from wastats.api.problems import problem
from wastats.forward.match import kept_headers
from wastats.ingest.service import IngestUnavailable
from wastats.whatsapp.signature import verify_signature

log = logging.getLogger(__name__)

_ACCEPTED = Response(b'{"status":"ok"}', media_type="application/json")


async def whatsapp_webhook(request: Request) -> Response:
    if request.method == "GET":
        return _verify(request)
    ctx = context_of(request)
    secrets = ctx.meta_app_secrets
    if not secrets:
        # Not 401: nothing is wrong with Meta's request. 503 makes Meta retry (for up to 7
        # days) until the operator sets the secret, so no event is lost meanwhile.
        log.error("webhook refused: WASTATS_META_APP_SECRET is not set")
        return problem(503, "Service Unavailable", "the webhook secret is not configured")
    raw = await request.body()
    signature = request.headers.get("x-hub-signature-256")
    # Each secret is checked in constant time; which one matched is no secret worth keeping.
    if not any(verify_signature(secret, raw, signature) for secret in secrets):
        what = "missing" if not signature else "invalid"
        return problem(401, "Unauthorized", f"{what} X-Hub-Signature-256 signature")
    ingest = ctx.ingest
    if ingest is None:
        return problem(503, "Service Unavailable", "ingestion is not running")
    try:
        # Meta's signature and content type go with the body to forwarding destinations.
        await ingest.accept(raw, kept_headers(request.headers.get))
    except IngestUnavailable as exc:
        return problem(503, "Service Unavailable", f"{exc}; retry later")
    return _ACCEPTED


def _verify(request: Request) -> Response:
    ctx = context_of(request)
    params = request.query_params
    expected = ctx.settings.meta_verify_token
    given = params.get("hub.verify_token", "")
    if (
        params.get("hub.mode") == "subscribe"
        and expected is not None
        and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        return PlainTextResponse(params.get("hub.challenge", ""))
    return PlainTextResponse("verification failed", status_code=403)
