"""``TarSink``: unpack a tar archive into a local folder as it downloads, refusing the unsafe.

The archive arrives in pieces on the event loop (:meth:`TarSink.feed`); a worker thread reads it
with :mod:`tarfile` in stream mode (``r|``: one pass, nothing kept) and writes each file as it
comes. At most ``depth`` pieces wait between the two, so a download of any size holds a few MiB.

Refused (skipped, and listed in :attr:`TarSink.skipped`): absolute names, names with a ``..``
component, and whatever :func:`tarfile.data_filter` refuses (a link pointing outside the folder
or to an absolute path, a path leading outside through a link, device files). A file is
written beside its target first and renamed into place when whole, with the archive's
modification time (sync compares times).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import queue
import tarfile
from pathlib import Path
from typing import IO, Any, cast

#: Bytes the worker copies from the archive to a file at a time.
COPY_CHUNK = 256 * 1024


def unsafe_reason(name: str) -> str | None:
    """Why a member called ``name`` is refused before any other check, or None."""
    if not name or "\x00" in name:
        return "an empty or invalid name"
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a path with '..'"
    return None


class _Pipe:
    """Pieces from the event loop to the worker thread, which reads them as a file."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        self._loop = loop
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._room = asyncio.Event()
        self._piece = b""
        self._pos = 0
        self._eof = False

    # -- event-loop side -------------------------------------------------------------------
    async def put(self, piece: bytes | None, reader: asyncio.Future[Any]) -> None:
        """Queue ``piece`` (None: the end), waiting while the queue is full; returns early
        (without queueing) if the reader has ended."""
        while not reader.done():
            try:
                self._queue.put_nowait(piece)
                return
            except queue.Full:
                pass
            self._room.clear()
            if not self._queue.full():
                continue
            room = asyncio.ensure_future(self._room.wait())
            try:
                await asyncio.wait({room, reader}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()

    def abort(self) -> None:
        """Drop what is queued and make the reader see the end at once."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    # -- worker side: a read-only file ---------------------------------------------------------
    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._piece) and not self._eof:
            piece = self._queue.get()
            self._loop.call_soon_threadsafe(self._room.set)
            if piece is None:
                self._eof = True
            else:
                self._piece, self._pos = piece, 0
        if self._eof and self._pos >= len(self._piece):
            return b""
        end = len(self._piece) if size < 0 else min(len(self._piece), self._pos + size)
        out = self._piece[self._pos : end]
        self._pos = end
        return out


class TarSink:
    """Unpacks one tar archive into ``dest`` (created if missing) as it is fed."""

    def __init__(self, dest: Path, *, depth: int = 16) -> None:
        self.dest = dest
        self.files: list[str] = []  # member names written (files)
        self.skipped: list[str] = []  # "name: reason"
        self.written = 0  # bytes of file data written (read from the loop: one writer)
        loop = asyncio.get_running_loop()
        self._pipe = _Pipe(loop, depth)
        self._worker: asyncio.Future[None] = loop.run_in_executor(None, self._extract)

    async def feed(self, piece: bytes) -> None:
        """The next piece of the archive; raises the worker's error if it stopped."""
        await self._pipe.put(piece, self._worker)
        if self._worker.done():
            self._worker.result()  # raises its error
            raise tarfile.ReadError("the archive ended before its data did")

    async def close(self) -> None:
        """The archive is complete: wait for the last file; raises the worker's error."""
        await self._pipe.put(None, self._worker)
        await self._worker

    async def abort(self) -> None:
        """Stop (a download failed or was interrupted); the worker's error is not raised."""
        self._pipe.abort()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._worker)

    # -- the worker thread ---------------------------------------------------------------------
    def _extract(self) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)
        dest = os.path.realpath(self.dest)
        with tarfile.open(fileobj=cast(IO[bytes], self._pipe), mode="r|") as tar:
            for member in tar:
                reason = unsafe_reason(member.name)
                safe = member
                if reason is None:
                    try:
                        safe = tarfile.data_filter(member, dest)
                    except tarfile.FilterError as exc:
                        reason = str(exc)
                if reason is not None:
                    self.skipped.append(f"{member.name}: {reason}")
                    continue
                target = os.path.join(dest, safe.name)
                if safe.isreg():
                    self._write(tar, safe, target)
                elif safe.isdir():
                    os.makedirs(target, exist_ok=True)
                else:
                    try:
                        tar.extract(safe, dest, set_attrs=False, filter="fully_trusted")
                    except (OSError, tarfile.TarError) as exc:
                        self.skipped.append(f"{member.name}: {exc}")

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            return
        parent, name = os.path.split(target)
        if os.path.isdir(target) and not os.path.islink(target):
            self.skipped.append(f"{member.name}: a local folder of that name is in the way")
            return
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name[:200]}.downloading")
        try:
            with open(tmp, "wb") as out:
                while block := source.read(COPY_CHUNK):
                    out.write(block)
                    self.written += len(block)
            if member.mode is not None:
                os.chmod(tmp, member.mode & 0o777)
            os.utime(tmp, (member.mtime, member.mtime))
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.files.append(posixpath.normpath(member.name))
