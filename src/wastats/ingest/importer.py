"""`wastats import`: backfill from files of webhook bodies, one JSON body per line.

The same path as live webhooks minus the signature: each line is recorded in the inbox
(deduplicated by its hash, so importing a file twice changes nothing) and counted by the same
pipeline. What makes a backfill fast (docs/benchmarks.md, "Import"):

- lines are counted a chunk at a time (`CHUNK_BYTES`, which bounds memory) and committed several
  chunks at a time (`COMMIT_BYTES`): with hashed, hence random, keys every transaction rewrites
  most index pages, so fewer, larger ones write less;
- an imported line's raw body is not stored again (the file is the raw copy), unless the line
  is rejected, so `wastats events replay` can retry it after an upgrade;
- by default (`--serial` turns it off), parsing runs in a second process, one chunk ahead of the
  one being stored, so two cores work at once; that process also encodes and counts each
  message as if it were new (`pipeline.MessageDraft`), which is true of nearly all of a
  backfill, so the storing process is left mostly with SQL;
- the import's connection keeps a smaller SQLite page cache than the service's, and chunks are
  small, so both processes together stay well under 300 MB at 1M status updates;
- Python's cyclic garbage collector is paused while a chunk is counted and run between chunks:
  a chunk allocates hundreds of thousands of short-lived objects, freed by reference counting,
  and collection passes over them cost a fifth of the import's time (measured).
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import itertools
import multiprocessing
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from io import BufferedIOBase, BufferedReader
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Connection

from wastats.ingest.identity import CustomerHasher
from wastats.ingest.pipeline import BatchReport, Pipeline, PreparedBatch
from wastats.sealing import BodySealer
from wastats.store import inbox as inbox_repo
from wastats.store.db import Database

_decode_array = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode

CHUNK_BYTES = 3 * 1024 * 1024
"""Input counted at a time: bounds memory (measured at the 1M import: 3 MB chunks hold both
processes at 240 MB together, 4 MB at 260 MB, at the same speed)."""
IMPORT_CACHE_KIB = 16 * 1024
"""SQLite page cache of the import's connection (see `_GroupedWrites.connection`)."""
COMMIT_BYTES = 32 * 1024 * 1024
"""Input per transaction (see `_GroupedWrites`): measured, half the bytes written to disk of a
commit per chunk, and 10-20% faster."""


@dataclass
class ImportReport:
    lines: int = 0
    new_bodies: int = 0
    duplicates: int = 0
    counted: BatchReport = field(default_factory=BatchReport)
    rejected_lines: list[str] = field(default_factory=list)
    """`FILE:LINE: reason` of rejected lines (the first `REJECTED_LISTED`; all are counted in
    `counted.rejected` and kept, with the same text, for `wastats events rejected`)."""


def open_lines(raw: BufferedReader) -> BufferedIOBase:
    """The lines of a `.jsonl` or gzip-compressed file (by its magic bytes, whatever its name)."""
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


DOCUMENT_LIMIT = 256 * 1024 * 1024
"""The largest file imported as one JSON document (an array of bodies, or one pretty-printed
body): such a file is read whole. JSON Lines stream, whatever their size."""


class ImportFileError(Exception):
    """A file that could not be imported (whole or in part); the message says why and what was
    kept. The import goes on with the next file."""


class DamagedFile(ImportFileError):
    """A compressed file that ends early or is corrupt part-way. Everything before the damage
    was imported (and committed); the message says where it stopped."""


class DocumentTooLarge(ImportFileError):
    """A JSON document (not JSON Lines) over `DOCUMENT_LIMIT`: nothing of it was imported."""


@dataclass
class _Damage:
    error: Exception | None = None
    document: bool = False
    """The file was one JSON document: a body's place is its element's number, not a line."""


REJECTED_LISTED = 100


def _blocks(stream: BufferedIOBase, damage: _Damage) -> Iterator[bytes]:
    """About `CHUNK_BYTES` of `stream` at a time, until its end or its damage.

    `read1`, not `read`: on a truncated gzip file `read(n)` raises and drops everything it had
    decompressed in that call, while `read1` returns each piece as it is decompressed, so a
    damaged file loses nothing before the damage. (On a plain file each is one system call.)"""
    pieces: list[bytes] = []  # joined once per block: a gzip piece is some 100 KB
    size = 0
    while True:
        try:
            piece = stream.read1(CHUNK_BYTES - size)
        except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            damage.error = exc
            piece = b""
        if piece:
            pieces.append(piece)
            size += len(piece)
            if size < CHUNK_BYTES:
                continue
        if pieces:
            yield b"".join(pieces)
            pieces, size = [], 0
        if not piece:
            return


def _chunks(
    raw: BufferedReader, stream: BufferedIOBase, on_bytes: Callable[[int], None], damage: _Damage
) -> Iterator[tuple[list[bytes], list[int]]]:
    """The bodies of `stream`, about `CHUNK_BYTES` at a time: its non-empty lines (JSON Lines),
    or, for a file that is one JSON document (an array of bodies, or one body over several
    lines, as an export or a saved example is often written), the elements of that document;
    with each body, its place: its line's number, or its element's (`damage.document`), so a
    rejected body can be found in the file.

    Read in large blocks and split, not line by line: a line is a whole webhook body (up to
    3 MB), and a block read is one system call where line iteration makes several per body.
    A damaged file's last, cut-off line is not a body, and is left out."""
    position = 0

    def blocks() -> Iterator[bytes]:
        nonlocal position
        for block in _blocks(stream, damage):
            # Progress in bytes of the file on disk, so a compressed file's bar ends at 100%.
            now_at = raw.tell()
            on_bytes(now_at - position)
            position = now_at
            yield block

    read = blocks()
    first = next(read, b"")
    opening = _document_opening(first)
    if opening is not None:
        data = _whole(first, read)
        elements = _elements(data, opening)
        if elements is not None:
            damage.document = True
            yield from _grouped(elements)
            return
        read, first = iter(()), data  # not a JSON document after all: its lines, as any file
    rest = b""
    line_number = 0
    for block in itertools.chain([first], read):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        chunk: list[bytes] = []
        places: list[int] = []
        for number, line in enumerate(lines, line_number + 1):
            body = line.strip()
            if body:
                chunk.append(body)
                places.append(number)
        line_number += len(lines)
        if chunk:
            yield chunk, places
    if rest.strip() and damage.error is None:
        yield [rest.strip()], [line_number + 1]


def _document_opening(block: bytes) -> bytes | None:
    """`[` or `{` if a file starting with `block` is one JSON document rather than JSON Lines:
    its first line opens an array or object and goes no further (pretty-printed), or is a whole
    array; else None. A first line that is merely broken JSON still means JSON Lines: that line
    is kept as rejected, the others are imported."""
    line = block.lstrip().split(b"\n", 1)[0].strip()
    if line in (b"[", b"{", b"[{"):
        return line[:1]
    if not line.startswith(b"["):
        return None
    try:
        return b"[" if isinstance(msgspec.json.decode(line), list) else None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return b"["  # an array over several lines, e.g. `[{"object": ...,` first


def _whole(first: bytes, rest: Iterator[bytes]) -> bytes:
    pieces, size = [first], len(first)
    for block in rest:
        pieces.append(block)
        size += len(block)
        if size > DOCUMENT_LIMIT:
            raise DocumentTooLarge(
                f"the file is one JSON document over {DOCUMENT_LIMIT // 2**20} MB, which is read "
                "whole; write it as JSON Lines, one body per line (for an array: "
                "jq -c '.[]' FILE > bodies.jsonl), and import that: nothing of it was imported"
            )
    return b"".join(pieces)


def _elements(data: bytes, opening: bytes) -> list[bytes] | None:
    """The bodies of a JSON document that opens with `opening`: an array's elements, each
    exactly as written, or the document itself; None if it is not one valid JSON document."""
    try:
        if opening == b"[":
            return [bytes(element) for element in _decode_array(data)]
        return [bytes(_decode_raw(data)).strip()]
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _grouped(bodies: list[bytes]) -> Iterator[tuple[list[bytes], list[int]]]:
    chunk: list[bytes] = []
    size = 0
    start = 1
    for body in bodies:
        chunk.append(body)
        size += len(body)
        if size >= CHUNK_BYTES:
            yield chunk, list(range(start, start + len(chunk)))
            start += len(chunk)
            chunk, size = [], 0
    if chunk:
        yield chunk, list(range(start, start + len(chunk)))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Automatic collection off for the block (which may nest), the young generations collected
    at its end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect(1)


# --- parsing in a second process ---------------------------------------------------------------

_worker_pipeline: Pipeline | None = None


def _start_worker(key: bytes) -> None:
    global _worker_pipeline
    _worker_pipeline = Pipeline(CustomerHasher(key, message_cache=16_384))
    # Collection off for good, not only while a chunk is parsed (`_prepare` collects the young
    # generations after each): the executor pickles the result after `_prepare` returns, and
    # the collector then kept traversing the whole chunk (measured: 9% of this process).
    gc.disable()


@dataclass
class _Chunk:
    distinct: dict[str, int]
    """{sha256: index in the chunk's lines} of its distinct bodies, in order."""
    prepared: PreparedBatch
    """The distinct bodies parsed, in the same order."""


def _prepare(lines: list[bytes], pipeline: Pipeline | None = None) -> _Chunk:
    distinct: dict[str, int] = {}
    for index, body in enumerate(lines):
        distinct.setdefault(hashlib.sha256(body).hexdigest(), index)
    worker = pipeline or _worker_pipeline
    assert worker is not None, "the parsing process was not started"
    with _collector_paused():
        return _Chunk(distinct, worker.prepare([lines[i] for i in distinct.values()], draft=True))


@contextmanager
def parsing_process(pipeline: Pipeline) -> Iterator[Executor]:
    """A second process that parses chunks for `import_file`. Spawned, not forked: a fork
    would inherit this process's open database connections."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_start_worker, initargs=(pipeline.hasher.key,)
    ) as pool:
        yield pool


class _GroupedWrites:
    """One write transaction for several chunks, committed every `COMMIT_BYTES` of input.

    Counting happens a chunk at a time (Python's memory stays one chunk's), but SQLite commits
    less often: a commit writes every index page the transaction touched, and with hashed keys
    each chunk touches most pages of the fact and unit indexes. While those indexes fit the page
    cache, a longer transaction writes each page once instead of once per chunk."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._open: ExitStack | None = None
        self._conn: Connection | None = None
        self._size = 0

    def connection(self) -> Connection:
        if self._conn is None:
            self._open = ExitStack()
            self._conn = self._open.enter_context(self._db.write())
            if self._db.is_sqlite:
                # A 16 MiB page cache, not the service's 64 MiB: measured at the 1M import, no
                # slower (the random-key index that matters, message_facts' key, is about
                # 20 MB and the OS caches the rest), and 85 MB less memory.
                self._conn.exec_driver_sql(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
        return self._conn

    def stored(self, size: int) -> None:
        self._size += size
        if self._size >= COMMIT_BYTES:
            self.commit()

    def commit(self) -> None:
        if self._open is not None:
            self._open.close()
        self._open, self._conn, self._size = None, None, 0

    def __enter__(self) -> _GroupedWrites:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._open is not None:
            self._open.__exit__(*exc_info)  # commits, or rolls back on an exception
        self._open, self._conn = None, None


def import_file(
    db: Database,
    pipeline: Pipeline,
    path: Path,
    *,
    now: int,
    report: ImportReport,
    on_bytes: Callable[[int], None] = lambda n: None,
    parser: Executor | None = None,
    sealer: BodySealer,
) -> None:
    """Import one file. With `parser` (from `parsing_process`), each chunk is parsed there while
    the one before it is being stored; without, everything runs in this process. Lines are
    stored as hashes only, except rejected ones, whose bodies are kept sealed by `sealer` for
    `wastats events replay`."""
    ahead: deque[tuple[list[bytes], list[int], Future[_Chunk]]] = deque()
    damage = _Damage()

    def place(number: int) -> str:
        return f"{path}, element {number}" if damage.document else f"{path}:{number}"

    lines_before = report.lines
    # The collector stays off for the whole file, not just while a chunk is counted: a parsed
    # chunk arrives (is unpickled) on a thread of the executor, while this one works.
    with (
        _collector_paused(),
        path.open("rb") as raw,
        open_lines(raw) as stream,
        _GroupedWrites(db) as writes,
    ):
        for lines, places in _chunks(raw, stream, on_bytes, damage):
            if parser is None:
                prepared = _prepare(lines, pipeline)
                _store(writes, pipeline, lines, prepared, now=now, report=report,
                       sealer=sealer, places=[place(n) for n in places])  # fmt: skip
                continue
            ahead.append((lines, places, parser.submit(_prepare, lines)))
            if len(ahead) > 1:
                lines, places, parsed = ahead.popleft()
                _store(writes, pipeline, lines, parsed.result(), now=now, report=report,
                       sealer=sealer, places=[place(n) for n in places])  # fmt: skip
        while ahead:
            lines, places, parsed = ahead.popleft()
            _store(writes, pipeline, lines, parsed.result(), now=now, report=report,
                   sealer=sealer, places=[place(n) for n in places])  # fmt: skip
    if damage.error is not None:
        # Raised only now, after the transaction above committed what came before the damage.
        raise DamagedFile(
            f"the file is damaged ({damage.error}); the {report.lines - lines_before} "
            "complete bodies before the damage were read and kept, the rest of the file could not "
            "be read"
        )


def _store(
    writes: _GroupedWrites,
    pipeline: Pipeline,
    lines: list[bytes],
    chunk: _Chunk,
    now: int,
    report: ImportReport,
    sealer: BodySealer,
    places: list[str],
) -> None:
    """Store and count one parsed chunk; `places` says where each of its lines is in its file."""
    with _collector_paused():
        conn = writes.connection()
        new = inbox_repo.insert_bodies(
            conn,
            [
                inbox_repo.NewBody(sha256=sha, body=None, source="import", received_at=now)
                for sha in chunk.distinct
            ],
            sealer,
        )
        if len(new) == len(chunk.distinct):
            ids = [new[sha] for sha in chunk.distinct]
            counted = pipeline.store(conn, chunk.prepared, ids, now)
        else:  # some lines were imported before: count only the others (a re-import)
            todo = [(new[sha], lines[i]) for sha, i in chunk.distinct.items() if sha in new]
            counted = pipeline.process(conn, todo, now)
        by_id = {new[sha]: lines[i] for sha, i in chunk.distinct.items() if sha in new}
        inbox_repo.keep_bodies(conn, {i: by_id[i] for i in counted.rejected_ids}, sealer)
        if counted.rejected_ids:
            _locate_rejected(conn, chunk, new, set(counted.rejected_ids), places, report)
    writes.stored(sum(len(line) for line in lines))
    report.lines += len(lines)
    report.new_bodies += len(new)
    report.duplicates += len(lines) - len(new)
    report.counted.add(counted)


def _locate_rejected(
    conn: Connection,
    chunk: _Chunk,
    new: dict[str, int],
    rejected: set[int],
    places: list[str],
    report: ImportReport,
) -> None:
    """Prefix the reason of each rejected line with its `FILE:LINE`, in the inbox (for `wastats
    events rejected`) and in the report (for the import's own output)."""
    located: dict[int, str] = {}
    # The parsed outcomes are in the order of `chunk.distinct`, hence the enumerate.
    for position, (sha, index) in enumerate(chunk.distinct.items()):
        inbox_id = new.get(sha)
        if inbox_id in rejected:
            reason = inbox_repo.redact_reason(chunk.prepared.outcomes[position][1])
            located[inbox_id] = f"{places[index]}: {reason or 'not understood'}"
    inbox_repo.set_reasons(conn, located)
    room = REJECTED_LISTED - len(report.rejected_lines)
    report.rejected_lines += list(located.values())[: max(room, 0)]
