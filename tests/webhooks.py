"""Builders for WhatsApp Cloud API webhook bodies, shaped like Meta's documented examples."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient

from conftest import APP_SECRET
from wastats.whatsapp.signature import sign

PHONE_NUMBER_ID = "106540352242922"
DISPLAY = "15550783881"
WEBHOOK = "/webhooks/whatsapp"


def at(text: str, zone: str = "UTC") -> int:
    """Unix seconds of a local time such as `2025-01-31 22:30` in `zone`."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp())


def envelope(*values: dict[str, Any], waba: str = "102290129340398") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "changes": [{"field": "messages", "value": v} for v in values]}],
    }


def _value(phone_number_id: str, **parts: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": phone_number_id},
    }
    value.update(parts)
    return value


def inbound(
    user: str,
    ts: int,
    wamid: str | None = None,
    *,
    number: str = PHONE_NUMBER_ID,
    type_: str = "text",
    user_id: str | None = None,
) -> dict[str, Any]:
    """A `messages` change value: customer `user` (digits) wrote at `ts`."""
    message: dict[str, Any] = {
        "from": user,
        "id": wamid or f"wamid.in.{user}.{ts}",
        "timestamp": str(ts),
        "type": type_,
    }
    if type_ == "text":
        message["text"] = {"body": "hello"}
    contact: dict[str, Any] = {"profile": {"name": "Customer"}, "wa_id": user}
    if user_id:
        contact["user_id"] = user_id
    return _value(number, contacts=[contact], messages=[message])


def status(
    wamid: str,
    status_: str,
    ts: int,
    *,
    user: str = "16505551234",
    number: str = PHONE_NUMBER_ID,
    pricing: tuple[str, str, str | None] | None = None,
    conversation: tuple[str, str | None, int | None] | None = None,
    billable: bool | None = None,
) -> dict[str, Any]:
    """A status change value. `pricing` = (model, category, type); `conversation` = (id,
    origin, expiration)."""
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status_,
        "timestamp": str(ts),
        "recipient_id": user,
    }
    if conversation is not None:
        conv_id, origin, expiration = conversation
        entry["conversation"] = {"id": conv_id}
        if origin:
            entry["conversation"]["origin"] = {"type": origin}
        if expiration is not None:
            entry["conversation"]["expiration_timestamp"] = str(expiration)
    if pricing is not None:
        model, category, type_ = pricing
        entry["pricing"] = {"pricing_model": model, "category": category}
        if type_ is not None:
            entry["pricing"]["type"] = type_
        entry["pricing"]["billable"] = (type_ == "regular") if billable is None else billable
    if status_ == "failed":
        entry["errors"] = [{"code": 131049, "title": "This message was not delivered"}]
    return _value(number, statuses=[entry])


def generated_inbound(metadata: dict[str, str], user: str, ts: int, wamid: str) -> dict[str, Any]:
    """The change value of one inbound text message, for generated event streams."""
    message = {"from": user, "id": wamid, "timestamp": str(ts), "type": "text",
               "text": {"body": "hi"}}  # fmt: skip
    return {"messaging_product": "whatsapp", "metadata": metadata,
            "contacts": [{"wa_id": user, "profile": {"name": "x"}}],
            "messages": [message]}  # fmt: skip


def generated_status(
    metadata: dict[str, str],
    wamid: str,
    state: str,
    ts: int,
    user: str,
    conversation: tuple[str, str | None, int | None] | None,
    pricing: tuple[str | None, str, str | None, bool | None] | None,
) -> dict[str, Any]:
    """The change value of one status, for generated event streams: unlike `status`, every
    pricing field is given as is (model, category, type, billable; None leaves it out)."""
    entry: dict[str, Any] = {"id": wamid, "status": state, "timestamp": str(ts),
                             "recipient_id": user}  # fmt: skip
    if conversation is not None:
        entry["conversation"] = {"id": conversation[0]}
        if conversation[1] is not None:
            entry["conversation"]["origin"] = {"type": conversation[1]}
        if conversation[2] is not None:
            entry["conversation"]["expiration_timestamp"] = str(conversation[2])
    if pricing is not None:
        model, category, type_, billable = pricing
        entry["pricing"] = {"category": category}
        if model is not None:
            entry["pricing"]["pricing_model"] = model
        if type_ is not None:
            entry["pricing"]["type"] = type_
        if billable is not None:
            entry["pricing"]["billable"] = billable
    return {"messaging_product": "whatsapp", "metadata": metadata, "statuses": [entry]}


def body(*values: dict[str, Any]) -> bytes:
    return json.dumps(envelope(*values)).encode()


def post(client: TestClient, raw: bytes, secret: str = APP_SECRET) -> int:
    response = client.post(
        WEBHOOK, content=raw, headers={"X-Hub-Signature-256": sign(secret.encode(), raw)}
    )
    return response.status_code


def deliver(client: TestClient, *values: dict[str, Any]) -> None:
    """POST each value as its own signed webhook, then wait until all are counted."""
    for value in values:
        assert post(client, body(value)) == 200
    settle(client)


def settle(client: TestClient) -> None:
    ingest = client.app.state.ctx.ingest  # type: ignore[attr-defined]
    assert ingest.wait_idle(30), "ingestion did not finish"
