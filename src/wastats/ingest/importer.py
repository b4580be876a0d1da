"""`wastats import`: backfill from files of webhook bodies, one JSON body per line.

The same path as live webhooks minus the signature: each line is recorded in the inbox
(deduplicated by its hash, so importing a file twice changes nothing) and counted by the same
pipeline. What makes a backfill fast (docs/benchmarks.md, "Import"):

- lines are grouped into large transactions (`CHUNK_BYTES`): with hashed, hence random, keys
  every transaction rewrites the index pages it touches, so fewer, larger ones write less;
- an imported line's raw body is not stored again (the file is the raw copy), unless the line
  is rejected, so `wastats events replay` can retry it after an upgrade;
- Python's cyclic garbage collector is paused while a chunk is counted and run between chunks:
  a chunk allocates hundreds of thousands of short-lived objects, freed by reference counting,
  and collection passes over them cost a fifth of the import's time (measured).
"""

from __future__ import annotations

import gc
import gzip
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from wastats.ingest.pipeline import BatchReport, Pipeline
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database

CHUNK_BYTES = 8 * 1024 * 1024


@dataclass
class ImportReport:
    lines: int = 0
    new_bodies: int = 0
    duplicates: int = 0
    counted: BatchReport | None = None

    def __post_init__(self) -> None:
        if self.counted is None:
            self.counted = BatchReport()


def open_lines(raw: BinaryIO) -> BinaryIO:
    """The lines of a `.jsonl` or gzip-compressed file (by its magic bytes, whatever its name)."""
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _chunks(
    raw: BinaryIO, stream: BinaryIO, on_bytes: Callable[[int], None]
) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    position = 0
    for line in stream:
        # Progress in bytes of the file on disk, so a compressed file's bar ends at 100%.
        now_at = raw.tell()
        on_bytes(now_at - position)
        position = now_at
        body = line.strip()
        if not body:
            continue
        chunk.append(body)
        size += len(body)
        if size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@contextmanager
def _collector_paused() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(1)


def import_file(
    db: Database,
    pipeline: Pipeline,
    path: Path,
    *,
    now: int,
    report: ImportReport,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> None:
    with path.open("rb") as raw, open_lines(raw) as stream:
        for chunk in _chunks(raw, stream, on_bytes):
            bodies = {hashlib.sha256(b).hexdigest(): b for b in chunk}
            with _collector_paused(), db.write() as conn:
                new = inbox_repo.insert_bodies(
                    conn,
                    [
                        inbox_repo.NewBody(sha256=sha, body=None, source="import", received_at=now)
                        for sha in bodies
                    ],
                )
                by_id = {inbox_id: bodies[sha] for sha, inbox_id in new.items()}
                counted = pipeline.process(conn, list(by_id.items()), now)
                inbox_repo.keep_bodies(conn, {i: by_id[i] for i in counted.rejected_ids})
            report.lines += len(chunk)
            report.new_bodies += len(new)
            report.duplicates += len(chunk) - len(new)
            assert report.counted is not None
            report.counted.add(counted)
