"""Real `wastats serve` processes for the tests that need several of them, or a hard kill, and a
reproducible workload of signed webhook bodies to send them.

A server runs `.venv/bin/wastats serve` in its own process group (so `kill()` takes uvicorn's
worker processes down with the supervisor, like `kill -9` of a container would), in a scratch
directory (no `.env` is picked up), with its stdout and stderr in a log file that every failure
message quotes. Waits are bounded polls of something observable (`/healthz`, the process' exit),
never a blind sleep.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from conftest import APP_SECRET, SECRET_KEY
from pgcluster import free_port
from reference_counting import reference_monthly_counts
from wastats.whatsapp.signature import sign
from webhooks import at, envelope, generated_inbound, generated_status

WASTATS = Path(sys.executable).with_name("wastats")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `wastats` subprocess: ours, minus any WASTATS_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASTATS_")}
    env.update(
        WASTATS_DATABASE_URL=database_url,
        WASTATS_META_APP_SECRET=APP_SECRET,
        WASTATS_SECRET_KEY=SECRET_KEY,
        WASTATS_LOG_LEVEL="WARNING",
        WASTATS_LOG_FORMAT="text",
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], database_url: str, cwd: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run `wastats ARGS...` against `database_url`; returns the finished process."""
    return subprocess.run(
        [str(WASTATS), *args],
        env=server_env(database_url, COLUMNS="200"),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Server:
    """One `wastats serve` process group."""

    database_url: str
    directory: Path
    workers: int = 1
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        """Start (or restart) and return once `/healthz` says ingestion runs."""
        self.launch()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def launch(self) -> Server:
        """Start the process without waiting for it (see `wait_healthy`); a restart gets a new
        port, so a client of the previous run can never reach this one by accident."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        self.starts += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"serve-{self.port}-{self.starts}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(WASTATS), "serve", "--port", str(self.port), "--workers", str(self.workers)],
                env=server_env(self.database_url, **self.env_extra),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, for kill()
            )
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Poll `/healthz` until it answers 200 with ingestion running (bounded)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last: object = None
        with httpx.Client(base_url=self.url, timeout=5.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"wastats serve exited with {self.process.returncode}:\n{self.logs()}"
                    )
                try:
                    response = http.get("/healthz")
                    last = (response.status_code, response.text)
                    if response.status_code == 200 and response.json()["ingest"] == "running":
                        return dict(response.json())
                except httpx.TransportError as exc:
                    last = exc
                # Doubles as the pause between polls and a check that the process is alive.
                _wait_exit(self.process, 0.1)
        raise AssertionError(
            f"wastats serve not healthy after {timeout}s ({last!r}):\n{self.logs()}"
        )

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/healthz", timeout=15.0)

    def wait_no_pending(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll `/healthz` until the inbox has no pending body; returns the last answer."""
        deadline = time.monotonic() + timeout
        answer: dict[str, Any] = {}
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            while time.monotonic() < deadline:
                response = http.get("/healthz")
                if response.status_code == 200:
                    answer = response.json()
                    if answer["inbox"]["pending"] == 0:
                        return answer
                assert self.process is not None
                if _wait_exit(self.process, 0.1):
                    raise AssertionError(f"wastats serve died:\n{self.logs()}")
        raise AssertionError(f"inbox still pending after {timeout}s: {answer}\n{self.logs()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful: uvicorn stops its workers), SIGKILL after `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if not _wait_exit(self.process, timeout):
                self._killpg()
                self.process.wait(STOP_TIMEOUT)
        self._killpg()  # any worker left behind by its supervisor
        return self.process.returncode

    def kill(self) -> None:
        """`kill -9` of the whole process group: supervisor and workers die at once."""
        if self.process is None:
            return
        self._killpg()
        self.process.wait(STOP_TIMEOUT)

    def _killpg(self) -> None:
        assert self.process is not None
        # Its own process group (start_new_session): only this server's processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)

    def logs(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-6000:]


def _wait_exit(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to `seconds` for the process to exit; True if it has."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


# --- talking to a server ------------------------------------------------------------------------


def post_webhook(http: httpx.Client, raw: bytes) -> int:
    """POST one signed webhook body; returns the HTTP status."""
    signature = sign(APP_SECRET.encode(), raw)
    response = http.post(
        "/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": signature}
    )
    return response.status_code


def token(base_url: str, client_id: str, client_secret: str) -> str:
    answer = httpx.post(
        f"{base_url}/api/settings/accessToken",
        json={"client_id": client_id, "client_secret": client_secret},
        timeout=15.0,
    ).json()
    assert answer["status"] == "OK", answer
    return str(answer["access_token"])


def statistics(base_url: str, access_token: str, whatsapp: str | None = None) -> dict[str, Any]:
    """The `getConversationsStatistics` answer (all months; all numbers or one)."""
    params = {"whatsapp": whatsapp} if whatsapp else {}
    response = httpx.get(
        f"{base_url}/api/whatsapp/getConversationsStatistics",
        params=params,
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=15.0,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "OK", answer
    return dict(answer)


# --- the workload: events, bodies, and what the reference says they count ----------------------

# Two business numbers (phone_number_id → the digits customers see) of one account.
NUMBERS = {"106540352242922": "15550783881", "106540352242923": "15550783882"}
ZONE = "Asia/Jerusalem"

PMP_START = at("2025-07-01 00:00")
DAY = 86400
BASES = [PMP_START - 3 * DAY, PMP_START - 3600, PMP_START, at("2025-01-31 22:00"),
         at("2025-08-31 23:00"), at("2025-03-15 12:00")]  # fmt: skip
OFFSETS = [0, 1, 59, 3600, DAY - 1, DAY, DAY + 1, 2 * DAY, 7200 + DAY]
USERS = ["972501111111", "972502222222", "14155550100", "447700900123", "33612345678"]
CATEGORIES = ["marketing", "utility", "authentication", "service", "marketing_lite",
              "referral_conversion", "business_initiated", "user_initiated", "group_marketing",
              "ai_bot"]  # fmt: skip

Event = tuple[Any, ...]
"""("in", number, user, ts) or ("st", number, wamid, status, ts, conversation, pricing, user)."""


def generate_events(seed: int, count: int) -> list[Event]:
    """`count` events, both eras, several customers, two numbers; deterministic in `seed`.

    Like Meta, never two different events with the same natural key (number, message, status,
    time): the service keeps the first one it sees of such a pair, so that would make the counts
    depend on arrival order, which no real stream does."""
    rng = random.Random(seed)

    def when() -> int:
        return rng.choice(BASES) + rng.choice(OFFSETS)

    events: list[Event] = []
    keys: set[tuple[Any, ...]] = set()
    numbers = sorted(NUMBERS)
    for _ in range(count * 10):
        if len(events) == count:
            break
        number = rng.choice(numbers)
        if rng.random() < 0.35:
            event: Event = ("in", number, rng.choice(USERS), when())
            key: tuple[Any, ...] = event
        else:
            wamid = f"wamid.m{rng.randrange(80)}"
            conversation = None
            if rng.random() < 0.6:
                conversation = (
                    f"conv{rng.randrange(25)}",
                    rng.choice([None, *CATEGORIES]),
                    rng.choice([None, when()]),
                )
            pricing = None
            if rng.random() < 0.7:
                pricing = (
                    rng.choice(["PMP", "CBP", None]),
                    rng.choice(CATEGORIES),
                    rng.choice(["regular", "free_customer_service", "free_entry_point", None]),
                    rng.choice([True, False, None]),
                )
            state = rng.choice(["sent", "delivered", "read", "failed"])
            user = USERS[int(wamid.removeprefix("wamid.m")) % len(USERS)]  # one per message
            event = ("st", number, wamid, state, when(), conversation, pricing, user)
            key = event[:5]
        if key not in keys:
            keys.add(key)
            events.append(event)
    assert len(events) == count
    return events


def to_value(event: Event) -> dict[str, Any]:
    """The webhook change value of one event."""
    number = event[1]
    metadata = {"display_phone_number": NUMBERS[number], "phone_number_id": number}
    if event[0] == "in":
        _, _, user, ts = event
        return generated_inbound(metadata, user, ts, f"wamid.in.{number}.{user}.{ts}")
    _, _, wamid, state, ts, conversation, pricing, user = event
    return generated_status(metadata, wamid, state, ts, user, conversation, pricing)


@dataclass(frozen=True)
class Delivery:
    raw: bytes
    events: tuple[Event, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def pack(events: list[Event], seed: int) -> list[Delivery]:
    """Events packed 1 to 4 per body in order, as Meta batches them; each event in one body."""
    rng = random.Random(seed)
    deliveries: list[Delivery] = []
    i = 0
    while i < len(events):
        part = tuple(events[i : i + rng.randint(1, 4)])
        raw = json.dumps(envelope(*(to_value(e) for e in part))).encode()
        deliveries.append(Delivery(raw, part))
        i += len(part)
    return deliveries


def reencoded(delivery: Delivery) -> Delivery:
    """The same events as a different body (other JSON whitespace): not an inbox duplicate."""
    raw = json.dumps(json.loads(delivery.raw), indent=1).encode()
    assert raw != delivery.raw
    return Delivery(raw, delivery.events)


def expected_months(events: Iterable[Event], number: str | None = None) -> dict[str, list[int]]:
    """mmyyyy → [marketing, service, incoming] per the reference, for one number or all."""
    zone = ZoneInfo(ZONE)
    totals: dict[str, list[int]] = {}
    chosen = [e for e in set(events) if number is None or e[1] == number]
    for each in sorted({e[1] for e in chosen}):
        mine = [e for e in chosen if e[1] == each]
        inbound = [(e[2], e[3]) for e in mine if e[0] == "in"]
        statuses = []
        for _, _, wamid, state, ts, conv, price, user in (e for e in mine if e[0] == "st"):
            c_id, origin, expiration = conv if conv else (None, None, None)
            model, category, type_, billable = price if price else (None, None, None, None)
            statuses.append((wamid, state, ts, c_id, origin, expiration, model, type_, category,
                             billable, user))  # fmt: skip
        for (month, bucket), n in reference_monthly_counts(inbound, statuses, zone).items():
            if n:
                row = totals.setdefault(f"{month % 100:02d}{month // 100}", [0, 0, 0])
                row[["marketing", "service", "incoming"].index(bucket)] += n
    return {m: row for m, row in totals.items() if any(row)}


def months_of(answer: Mapping[str, Any]) -> dict[str, list[int]]:
    """A `getConversationsStatistics` answer in the shape of `expected_months`, checked for
    consistency (totals are sums, newest month first)."""
    items = answer["list"]
    months = [int(i["monthYear"][2:]) * 100 + int(i["monthYear"][:2]) for i in items]
    assert months == sorted(months, reverse=True), "months must be newest first"
    result: dict[str, list[int]] = {}
    for item in items:
        row = [item["totalMarketing"], item["totalService"], item["totalIncoming"]]
        assert item["totalConversations"] == sum(row), item
        result[item["monthYear"]] = row
    return result


def send_all(
    base_urls: list[str],
    raws: list[bytes],
    threads: int,
) -> list[int | None]:
    """POST every body concurrently (`threads` clients), body i to base_urls[i % n]; returns each
    one's HTTP status (None: no answer)."""
    per_thread = threading.local()
    opened: list[httpx.Client] = []
    lock = threading.Lock()

    def send(i: int) -> int | None:
        clients: dict[str, httpx.Client] | None = getattr(per_thread, "clients", None)
        if clients is None:
            clients = {u: httpx.Client(base_url=u, timeout=30.0) for u in base_urls}
            per_thread.clients = clients
            with lock:
                opened.extend(clients.values())
        try:
            return post_webhook(clients[base_urls[i % len(base_urls)]], raws[i])
        except httpx.TransportError:
            return None

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(send, range(len(raws))))
    finally:
        for client in opened:
            client.close()
