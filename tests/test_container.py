"""The image and compose.yaml, for real: built and run with podman and podman-compose, the
README's walk-through against them, and PostgreSQL restarted under the running service.

Everything is named after one run id (`wastats-test-...`): its own image tag, compose project,
containers, volumes and network, all removed by name at the end, and a free port on 127.0.0.1.
One image stays, on purpose: the build stage, as `BUILD_CACHE` (see there).
compose.yaml is used as committed, from a scratch directory that holds it and the `.env` the
README tells users to write. Without podman (or the base images) the tests skip with the reason,
unless WASTATS_REQUIRE_PODMAN=1 (set by .ci/run), which makes that a failure. On a machine that
reaches no registry, ../shared/containers/prepare.sh provides podman and the base images.

Selected alone with `pytest -m container`. Waits are bounded polls of something observable
(`podman wait`, a health check, `/healthz`), never a blind sleep.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import APP_SECRET, REQUIRE_PODMAN, SECRET_KEY, VERIFY_TOKEN
from pgcluster import free_port
from wastats.whatsapp.signature import sign
from webhooks import PHONE_NUMBER_ID, at, envelope, inbound

# One group (`--dist loadgroup`, scripts/test): the three tests share one image build and one
# compose stack (the module's `stack` fixture), which must happen on one worker, once. The mark is
# set here, at collection, where pytest-xdist reads it to suffix the ids with `@container`.
pytestmark = [pytest.mark.container, pytest.mark.xdist_group("container")]

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGES = ("docker.io/library/debian:bookworm-slim", "docker.io/library/postgres:15")
WHATSAPP = "972501234567"
POSTGRES_PASSWORD = "0123456789abcdef0123456789abcdef"  # hex, as the README's recipe makes


def podman(
    *args: str, timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def _unavailable() -> str | None:
    """Why these tests cannot run here, or None."""
    for tool in ("podman", "podman-compose"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (../shared/containers/prepare.sh installs it)"
    for image in BASE_IMAGES:
        if podman("image", "exists", image).returncode != 0:
            return (
                f"the base image {image} is not here: `podman pull` it, or run "
                "../shared/containers/prepare.sh where no registry is reachable"
            )
    return None


@dataclass
class Stack:
    """One compose project of this test run, and everything it made, by name."""

    name: str
    directory: Path
    image: str
    port: int
    built: list[str] = field(default_factory=list)
    """Ids of the images the build made (not those it took from the cache): removed at the end."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def container(self, service: str) -> str:
        return f"{self.name}_{service}_1"  # podman-compose's naming

    def compose(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        # podman-compose takes its global options before the subcommand.
        return subprocess.run(
            ["podman-compose", "-p", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            check=False,
        )

    def wastats(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`wastats ARGS...` inside the running service's container (`docker compose exec`)."""
        return podman("exec", self.container("wastats"), "wastats", *args, timeout=120.0)

    def logs(self, service: str) -> str:
        result = podman("logs", "--tail", "40", self.container(service))
        return (result.stdout + result.stderr)[-4000:]

    def teardown(self) -> None:
        self.compose("down", "-v", timeout=120.0)
        # By name, one per call (`podman rm -f a b` removes nothing if `a` is gone), in case
        # `down` stopped part-way; `down` also leaves the network behind.
        for service in ("wastats", "migrate", "db"):
            podman("rm", "-f", "-i", self.container(service))
        for volume in ("pgdata", "wastats-data"):
            podman("volume", "rm", "-f", f"{self.name}_{volume}")
        podman("network", "rm", "-f", f"{self.name}_default")
        podman("rmi", self.image)
        for image in reversed(self.built):  # children first; one still in use stays
            podman("rmi", image)


BUILD_CACHE = "localhost/wastats-test-cache:build"
"""The Dockerfile's build stage, kept between runs under this one name so the next build takes
its layers (Debian's python3, the dependencies) from the cache: about 1 minute instead of 5 on
this machine. Only the latest is kept: the one it replaces is removed."""


def _image_id(name: str) -> str | None:
    result = podman("image", "inspect", "--format", "{{.Id}}", name)
    return result.stdout.strip() if result.returncode == 0 else None


def _build(stack: Stack) -> None:
    before = _image_id(BUILD_CACHE)
    stage = podman("build", "--format", "docker", "--pull=never", "--target", "build",
                   "-t", BUILD_CACHE, str(ROOT), timeout=420.0)  # fmt: skip
    assert stage.returncode == 0, stage.stdout[-3000:] + stage.stderr[-3000:]
    if before is not None and before != _image_id(BUILD_CACHE):
        podman("rmi", before)  # and its parents that nothing else uses
    result = podman("build", "--format", "docker", "--pull=never", "-t", stack.image, str(ROOT),
                    timeout=420.0)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Each step ends with `--> ID`; one taken from the cache says `--> Using cache FULL-ID` first:
    # those images were there before this build, and stay.
    cached = re.findall(r"^--> Using cache ([0-9a-f]{64})$", result.stdout, re.MULTILINE)
    stack.built = [
        image
        for image in re.findall(r"^--> ([0-9a-f]{11,64})$", result.stdout, re.MULTILINE)
        if not any(full.startswith(image) for full in cached)
    ]


def _poll(stack: Stack, what: str, check: Callable[[], Any], timeout: float, service: str) -> Any:
    """Call `check` until it returns something true, at most `timeout` seconds. Between calls,
    `podman inspect` checks that the service's container is still running (it must never stop
    here): that doubles as the pause between polls."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.TransportError, subprocess.TimeoutExpired) as exc:
            last = exc
        else:
            if last:
                return last
        running = podman("inspect", "--format", "{{.State.Running}}", stack.container("wastats"))
        assert running.stdout.strip() == "true", f"wastats stopped:\n{stack.logs('wastats')}"
    raise AssertionError(f"{what} not after {timeout}s ({last!r}):\n{stack.logs(service)}")


def _healthy(stack: Stack, service: str) -> bool:
    # No systemd here to run podman's health-check timers: run the container's check directly.
    return podman("healthcheck", "run", stack.container(service), timeout=30.0).returncode == 0


def _service_up(stack: Stack, http: httpx.Client) -> dict[str, Any] | None:
    if not _healthy(stack, "wastats"):
        return None
    answer = http.get("/healthz")
    if answer.status_code == 200 and answer.json()["ingest"] == "running":
        return dict(answer.json())
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = _unavailable()
    if reason is not None:
        if REQUIRE_PODMAN:
            pytest.fail(f"WASTATS_REQUIRE_PODMAN=1 but {reason}")
        pytest.skip(reason)
    run_id = f"wastats-test-{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp("compose")
    shutil.copyfile(ROOT / "compose.yaml", directory / "compose.yaml")
    port = free_port()
    # The .env the README's recipe writes, plus the image and the port of this run.
    (directory / ".env").write_text(
        (ROOT / ".env.example").read_text() + f"POSTGRES_PASSWORD={POSTGRES_PASSWORD}\n"
        f"WASTATS_SECRET_KEY={SECRET_KEY}\n"
        f"WASTATS_META_APP_SECRET={APP_SECRET}\n"
        f"WASTATS_META_VERIFY_TOKEN={VERIFY_TOKEN}\n"
        f"WASTATS_IMAGE=localhost/{run_id}:latest\n"
        f"WASTATS_PUBLISH=127.0.0.1:{port}\n"
    )
    stack = Stack(run_id, directory, f"localhost/{run_id}:latest", port)
    try:
        _build(stack)
        up = stack.compose("up", "-d")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # The one-shot migration finishes (with 0) before the service is trusted.
        waited = podman("wait", stack.container("migrate"), timeout=180.0)
        assert waited.stdout.strip() == "0", stack.logs("migrate")
        with httpx.Client(base_url=stack.url, timeout=10.0) as http:
            _poll(stack, "wastats healthy", lambda: _service_up(stack, http), 180.0, "wastats")
        yield stack
    finally:
        stack.teardown()


def test_image_is_small_unprivileged_and_checks_its_health(stack: Stack) -> None:
    inspected = json.loads(podman("image", "inspect", stack.image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "wastats"
    assert config["Cmd"] == ["wastats", "serve"]
    assert "/var/lib/wastats" in config["Volumes"]
    assert "healthz" in " ".join(inspected["Healthcheck"]["Test"])
    assert all(v.split("=", 1)[0].startswith(("WASTATS_", "PATH", "PYTHON")) for v in config["Env"])
    print(f"image size: {inspected['Size'] / 1e6:.0f} MB")  # reported with -s / -rA
    # No installer or compiler in the final image, and the service is not root.
    probe = podman("exec", stack.container("wastats"), "sh", "-c",
                   "id -u; command -v gcc cc make pip pip3; "
                   "python3 -c 'import pip' 2>/dev/null && echo pip-importable; true")  # fmt: skip
    lines = probe.stdout.split()
    assert lines[0] == "10001", probe.stdout
    assert lines[1:] == [], probe.stdout
    # Every volume is one of the project's named ones: none anonymous, left behind by `down`.
    for service in ("db", "migrate", "wastats"):
        mounts = json.loads(podman("inspect", stack.container(service)).stdout)[0]["Mounts"]
        assert all(m["Name"].startswith(f"{stack.name}_") for m in mounts), (service, mounts)


def _post(http: httpx.Client, value: dict[str, Any]) -> int:
    raw = json.dumps(envelope(value)).encode()
    headers = {"X-Hub-Signature-256": sign(APP_SECRET.encode(), raw)}
    return http.post("/webhooks/whatsapp", content=raw, headers=headers).status_code


def _statistics(http: httpx.Client, token: str) -> dict[str, Any]:
    # As the README's curl sends it: a JSON body on a GET.
    body = json.dumps({"start_date": "012025", "whatsapp": WHATSAPP})
    answer = http.request(
        "GET",
        "/api/whatsapp/getConversationsStatistics",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _restarts(stack: Stack) -> int:
    return int(json.loads(podman("inspect", stack.container("wastats")).stdout)[0]["RestartCount"])


def _counted(http: httpx.Client, processed: int) -> Callable[[], bool]:
    def check() -> bool:
        inbox = http.get("/healthz").json()["inbox"]
        return bool(inbox["pending"] == 0 and inbox["processed"] >= processed)

    return check


def test_walkthrough_on_postgres_survives_a_database_restart(stack: Stack) -> None:
    # 1. An account, 2. its number: the README's commands, in the service's container.
    created = stack.wastats("accounts", "create", "--name", "Shop", "--timezone", "Asia/Jerusalem",
                            "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    creds = json.loads(created.stdout)
    added = stack.wastats("numbers", "add", "--account", creds["client_id"],
                          "--whatsapp", "+972-50-123-4567", "--phone-number-id", PHONE_NUMBER_ID,
                          "--display-name", "Shop", "--business-name", "Shop Ltd")  # fmt: skip
    assert added.returncode == 0, added.stderr

    with httpx.Client(base_url=stack.url, timeout=15.0) as http:
        # 3. A token, as the README's curl asks for it.
        answer = http.post(
            "/api/settings/accessToken",
            content=json.dumps(
                {"client_id": creds["client_id"], "client_secret": creds["client_secret"]}
            ),  # fmt: skip
        ).json()
        assert answer["status"] == "OK", answer
        token = answer["access_token"]

        # Meta's verification, then a signed webhook: a customer writes in March 2025.
        handshake = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                     "hub.challenge": "4711"}  # fmt: skip
        challenge = http.get("/webhooks/whatsapp", params=handshake)
        assert (challenge.status_code, challenge.text) == (200, "4711")
        assert _post(http, inbound("972529999999", at("2025-03-10 12:00"))) == 200
        _poll(stack, "the webhook counted", _counted(http, 1), 60.0, "wastats")

        # 4. Statistics.
        before = _statistics(http, token)
        assert before["status"] == "OK", before
        march = [item for item in before["list"] if item["monthYear"] == "032025"]
        assert [m["totalIncoming"] for m in march] == [1], before

        # PostgreSQL restarts under the running service. (The service may have been restarted
        # once already, at the start: podman-compose 1.0 does not wait for the database's
        # health before starting it, and `serve` exits when it cannot reach it within
        # DATABASE_WAIT_SECONDS.)
        restarts = _restarts(stack)
        restarted = podman("restart", stack.container("db"), timeout=120.0)
        assert restarted.returncode == 0, restarted.stderr
        _poll(stack, "PostgreSQL healthy again", lambda: _healthy(stack, "db"), 120.0, "db")
        _poll(stack, "wastats healthy again", lambda: _service_up(stack, http), 120.0, "wastats")

        # Nothing lost: the same token works and the same counts come back ...
        assert _statistics(http, token) == before
        listed = stack.wastats("accounts", "list", "--json")
        assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["Shop"]
        # ... and the service recovered by itself (not restarted): it takes and counts more.
        assert _restarts(stack) == restarts, stack.logs("wastats")
        assert _post(http, inbound("972528888888", at("2025-03-11 12:00"))) == 200
        _poll(stack, "the second webhook counted", _counted(http, 2), 60.0, "wastats")
        after = _statistics(http, token)
        march = [item for item in after["list"] if item["monthYear"] == "032025"]
        assert [m["totalIncoming"] for m in march] == [2], after

    # The operator's view agrees: `wastats stats` in the container, through the service.
    shown = stack.wastats("stats", "--account", creds["client_id"], "--from", "2025-03",
                          "--to", "2025-03", "--csv")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "2025-03" in shown.stdout


def test_the_image_alone_keeps_sqlite_and_its_key_in_its_volume(stack: Stack) -> None:
    """`docker run` of the image without compose: SQLite, created by `serve` in the volume."""
    name = f"{stack.name}_alone"
    try:
        started = podman("run", "-d", "--name", name, "-v", f"{name}:/var/lib/wastats",
                         "-e", f"WASTATS_META_APP_SECRET={APP_SECRET}", stack.image)  # fmt: skip
        assert started.returncode == 0, started.stderr

        def healthy() -> bool:
            check = podman("healthcheck", "run", name, timeout=30.0)
            assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == (
                "true"
            ), podman("logs", name).stderr[-3000:]
            return check.returncode == 0

        deadline = time.monotonic() + 120.0
        while not healthy():
            assert time.monotonic() < deadline, podman("logs", name).stderr[-3000:]
        created = podman("exec", name, "wastats", "accounts", "create", "--name", "Solo", "--json")
        assert created.returncode == 0, created.stderr
        listing = podman("exec", name, "ls", "-l", "/var/lib/wastats")
        assert "wastats.db" in listing.stdout, listing.stdout
        assert "wastats.secret" in listing.stdout, listing.stdout
        assert all("wastats wastats" in line for line in listing.stdout.splitlines()[1:]), (
            listing.stdout
        )
    finally:
        podman("rm", "-f", "-i", name)
        podman("volume", "rm", "-f", name)
