"""The audit spool: where a server process puts each allowed decision before its response leaves,
so that killing the process (SIGKILL, the OOM killer) loses no AuditEvent (docs/scaling.md, "The
audit stream").

A spool file is append-only: a header (`MAGIC`, then the offset through which its events are
stored) and frames (length, CRC-32, a `marshal`led list of records as plain tuples). The server
appends one frame per request with one `os.write` (no fsync: the kernel keeps the data when the process dies); its
writer process reads the frames, stores them, and writes the stored offset into the header. A
server rotates to a new file past `SPOOL_BYTES`; the writer deletes a file once it is stored
through its end.

Whoever uses a file holds a shared `flock` on it (the server on the files it has not seen stored,
the writer on the one it reads); a file on which an exclusive lock can be taken belongs to no
live process, and any writer process that finds it stores it from its stored offset (`orphans`):
the events have their ids before they are first written, so a file stored twice by a race, or
from an offset written late, still stores each event once.

The files live in `<FHIR_DATA_DIR>/audit-spool/<database>`, one folder per database (`directory`),
so that a server only ever takes over spools meant for its own database. They hold what the
AuditEvents hold (references and codes), with the data folder's permissions (0600 files).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import marshal
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

MAGIC = b"FHIRAUD1"
HEADER = struct.Struct(">8sQ")  # magic, offset stored through
STORED = struct.Struct(">Q")
FRAME = struct.Struct(">II")  # payload length, CRC-32 of the payload
SUFFIX = ".spool"
# A server starts a new file past this size (the writer deletes the old one once stored).
SPOOL_BYTES = 64 * 1024 * 1024
# What a writer reads (and stores in one batch) at most at a time.
READ_BYTES = 4 * 1024 * 1024

Position = tuple[int, int]  # (file number, offset): how far a server's spool goes


def directory(data_dir: Path, database_url: str) -> Path:
    """The spool folder of the database at `database_url` (by host, port and database name)."""
    params = conninfo_to_dict(database_url)
    key = "\0".join(str(params.get(k) or "") for k in ("host", "port", "dbname"))
    return data_dir / "audit-spool" / hashlib.sha256(key.encode()).hexdigest()[:16]


class Spool:
    """A server process's side: appends frames, holds its files until they are stored."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.number = -1
        self.size = 0
        self._fds: dict[int, int] = {}  # file number -> descriptor (holding the shared lock)

    def path(self, number: int) -> Path:
        return self.folder / f"{self.prefix}-{number:06d}{SUFFIX}"

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._next()

    def _next(self) -> None:
        number = self.number + 1
        # made under another name and locked before it gets its own: no one takes it over
        temporary = self.folder / f"{self.prefix}-{number:06d}.tmp"
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(fd, fcntl.LOCK_SH)
        _write_all(fd, HEADER.pack(MAGIC, HEADER.size))
        os.rename(temporary, self.path(number))
        self._fds[number] = fd
        self.number, self.size = number, HEADER.size

    def append(self, item: Any) -> Position:
        """Write `item` (one frame: plain values, tuples and lists) and return where the spool
        ends after it. ValueError for an item `marshal` cannot take (nothing written); an
        OSError (a full disk) leaves at worst a torn frame at the end, which readers skip."""
        payload = marshal.dumps(item)
        frame = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        if self.size + len(frame) > SPOOL_BYTES and self.size > HEADER.size:
            self._next()
        _write_all(self._fds[self.number], frame)
        self.size += len(frame)
        return self.number, self.size

    def release(self, stored: Position) -> None:
        """Let go of the files stored through their end (the writer deletes them)."""
        for number in [n for n in self._fds if n < stored[0]]:
            os.close(self._fds.pop(number))

    def close(self, *, delete: bool) -> None:
        """Close every file; with `delete`, remove them (everything in them is stored)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if delete:
            for path in self.folder.glob(f"{self.prefix}-*{SUFFIX}"):
                path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Reader:
    """A writer's side of one spool file: frames from the stored offset on."""

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        """Opens and locks `path` (shared; `exclusive`: only if no one else holds it, else
        BlockingIOError). FileNotFoundError if it is gone (stored and deleted by another)."""
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if exclusive:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.flock(self.fd, fcntl.LOCK_SH)
            header = os.pread(self.fd, HEADER.size, 0)
            magic, stored = HEADER.unpack(header) if len(header) == HEADER.size else (b"", 0)
            if magic != MAGIC:
                raise ValueError(f"{path} is not an audit spool")
        except BaseException:
            os.close(self.fd)
            raise
        self.stored: int = stored
        self.position: int = stored

    def read(self, limit: int = READ_BYTES) -> tuple[list[Any], bool]:
        """The items of the complete frames after `position` (which moves past them), and
        whether there may be more right away (the read stopped at `limit`). A frame not
        complete yet, or torn, ends the read."""
        items: list[Any] = []
        data = os.pread(self.fd, limit, self.position)
        more = len(data) == limit
        at = 0
        grown = False
        while len(data) - at >= FRAME.size:
            length, crc = FRAME.unpack_from(data, at)
            end = at + FRAME.size + length
            if end > len(data):
                if at == 0 and more and not grown:  # one frame larger than `limit`
                    data, grown = os.pread(self.fd, end, self.position), True
                    continue
                break
            payload = data[at + FRAME.size : end]
            if zlib.crc32(payload) != crc:
                break
            items.append(marshal.loads(payload))  # noqa: S302 - the server's own spool, checked
            at = end
        self.position += at
        return items, more and at > 0

    def left(self) -> int:
        """Bytes after `position` (a torn frame at the end of a dead server's file)."""
        return os.fstat(self.fd).st_size - self.position

    def mark(self) -> None:
        """Record that everything before `position` is stored."""
        os.pwrite(self.fd, STORED.pack(self.position), len(MAGIC))
        self.stored = self.position

    def close(self, *, delete: bool = False) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def orphans(folder: Path, own: str) -> Iterator[Reader]:
    """The spool files in `folder` that no live process holds (not `own`'s), each locked
    exclusively for the caller; leftover temporary files (a server killed while making one)
    are removed."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.name.startswith(f"{own}-"):
            continue
        if path.suffix == ".tmp":
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                finally:
                    os.close(fd)
            continue
        if path.suffix != SUFFIX:
            continue
        try:
            yield Reader(path, exclusive=True)
        except (BlockingIOError, FileNotFoundError):
            continue
