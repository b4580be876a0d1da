"""The fake Graph API (wastats.meta.fake_graph) served on a loopback port for a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from live import live_server
from wastats.meta.fake_graph import FakeGraph, create_fake_graph
from wastats.meta.graph import GraphClient

TOKEN = "fake-graph-token-0123456789"
VERSION = "v24.0"


@contextmanager
def fake_graph(state: FakeGraph) -> Iterator[str]:
    """Serve `state`; yields the base URL. Hanging answers are released before the server
    stops, so teardown never waits for them."""
    try:
        with live_server(create_fake_graph(state)) as url:  # type: ignore[arg-type]
            try:
                yield url
            finally:
                state.unhang.set()
    finally:
        state.unhang.set()


def client_for(url: str, *, timeout: float = 10.0, retries: int = 2) -> GraphClient:
    # No waiting between retries in tests: what is checked is how often, not how long.
    return GraphClient(url, VERSION, TOKEN, timeout=timeout, retries=retries, sleep=lambda _: None)
