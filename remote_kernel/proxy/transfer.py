"""Moving files between the notebook's folder and a session's work directory.

Only Backend.AI's file API is used (upload, download, list: protocol.md §1.7), so this works
against a real manager and against ``remote-kernel serve`` with or without its extensions.

* :func:`upload`: local files in multipart requests of at most :data:`UPLOAD_BATCH` files,
  each read in :data:`READ_CHUNK` pieces as it is sent;
* :func:`download`: work-directory paths, at most :data:`DOWNLOAD_BATCH` per request, each tar
  archive unpacked as it arrives (:class:`~remote_kernel.proxy.untar.TarSink`);
* :func:`list_folder` and :func:`walk_remote`: listings (one request per folder);
* :func:`sync_up` and :func:`sync_down`: ``%remote sync`` (the plan is :mod:`.sync`'s).

Memory stays bounded whatever the sizes: a few pieces in flight, never a whole file.
A 404 from a file call means a missing file unless the session itself is gone, which one
``GET /session/{id}`` decides (the error's text cannot: both say "session").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..client import RunLoopClient
from ..errors import (
    NotFoundError,
    ProtocolError,
    RemoteKernelError,
    SessionNotFoundError,
    TransportError,
)
from .magics import MagicError
from .progress import Progress
from .sync import (
    IgnoreRules,
    LocalFile,
    RemoteFile,
    Synced,
    SyncLedger,
    local_file,
    plan_down,
    plan_up,
    walk_local,
)
from .untar import TarSink

#: Files per upload request (a real Backend.AI manager takes at most 20).
UPLOAD_BATCH = 20
#: Paths per download request (a real Backend.AI manager takes at most 5).
DOWNLOAD_BATCH = 5
#: Bytes read from a local file at a time.
READ_CHUNK = 256 * 1024
#: Folders never sent, even by an explicit upload.
SKIPPED_FOLDERS = frozenset({".ipynb_checkpoints"})

ProgressFactory = Callable[[str, "int | None"], Progress]
_T = TypeVar("_T")


def _batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


async def _not_found(client: RunLoopClient, sid: str, exc: NotFoundError) -> Exception:
    """The error to raise for a 404 from a file call: the session's, if it is gone."""
    try:
        await client.session_info(sid, timeout=10)
    except SessionNotFoundError as gone:
        return gone
    except RemoteKernelError:
        pass
    return MagicError("FileNotFoundError", exc.msg)


# -- uploads -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalItem:
    """One local file to send, and its path in the work directory."""

    path: Path
    remote: str
    size: int


def upload_plan(cwd: Path, sources: Sequence[str], to: str) -> list[LocalItem]:
    """The files ``%remote upload SOURCES --to TO`` sends.

    A file goes to ``TO/name``; a folder, recursively, to ``TO/name/...`` (``.``, or a path
    ending in ``/``, sends the folder's contents into ``TO``). Links to folders are not
    followed; ``.ipynb_checkpoints`` is skipped. A missing source is an error, raised before
    anything is sent.
    """
    items: list[LocalItem] = []
    for source in sources:
        path = cwd / os.path.expanduser(source)
        if not path.exists():
            raise MagicError("FileNotFoundError", f"No such file or folder: {source!r} (in {cwd}).")
        contents = source.endswith(("/", os.sep)) or os.path.normpath(source) in (".", "..")
        name = "" if contents else path.name
        if path.is_file():
            items.append(LocalItem(path, _join(to, name or path.name), path.stat().st_size))
        elif path.is_dir():
            items.extend(_folder_items(path, _join(to, name)))
        else:
            raise MagicError(
                "FileNotFoundError", f"{source!r} is neither a regular file nor a folder."
            )
    for item in items:
        if any(c in item.remote for c in "\r\n\x00"):
            raise MagicError(
                "ValueError", f"Cannot send {str(item.path)!r}: its name has a line break."
            )
    return items


def _folder_items(top: Path, remote: str) -> list[LocalItem]:
    items: list[LocalItem] = []
    for folder, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_FOLDERS)
        rel = os.path.relpath(folder, top)
        for name in sorted(names):
            path = Path(folder) / name
            try:
                if not path.is_file():
                    continue
                size = path.stat().st_size
            except OSError:
                continue
            parts = [] if rel == "." else rel.split(os.sep)
            items.append(LocalItem(path, _join(remote, *parts, name), size))
    return items


class _FileChunks:
    """A local file's content, read in a worker thread as the request sends it."""

    def __init__(self, path: Path, progress: Progress) -> None:
        self.path = path
        self.progress = progress
        self.error: OSError | None = None
        self._gen: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._gen = self._chunks()
        return self._gen

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        try:
            fh = await loop.run_in_executor(None, open, self.path, "rb")
        except OSError as exc:
            self.error = exc
            raise
        try:
            while chunk := await loop.run_in_executor(None, fh.read, READ_CHUNK):
                self.progress.add(len(chunk))
                yield chunk
        except OSError as exc:
            self.error = exc
            raise
        finally:
            fh.close()

    async def aclose(self) -> None:
        """Close the file if the request stopped between two pieces. A piece still being read
        belongs to aiohttp's writer task, which is being cancelled: that closes it."""
        gen = self._gen
        if gen is not None and not getattr(gen, "ag_running", False):
            await gen.aclose()


async def upload(
    client: RunLoopClient, sid: str, items: Sequence[LocalItem], progress: Progress
) -> None:
    """Send ``items``; the progress counts the bytes read from the local files."""
    for batch in _batches(items, UPLOAD_BATCH):
        readers = [_FileChunks(item.path, progress) for item in batch]
        try:
            await client.upload_files(
                sid, [(item.remote, reader) for item, reader in zip(batch, readers, strict=True)]
            )
        except TransportError:
            for reader in readers:  # aiohttp reports a failed read as a lost connection
                if reader.error is not None:
                    raise MagicError(
                        "OSError", f"Cannot read {str(reader.path)!r}: {reader.error}"
                    ) from None
            raise
        except NotFoundError as exc:
            raise await _not_found(client, sid, exc) from None
        finally:
            for reader in readers:
                await reader.aclose()


# -- downloads ---------------------------------------------------------------------------------
@dataclass
class Downloaded:
    """What a download wrote (local paths), how many bytes, and what it refused."""

    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


async def download(
    client: RunLoopClient,
    sid: str,
    pairs: Sequence[tuple[str, Path]],
    progress: Progress,
) -> Downloaded:
    """Download each (work-directory path, local folder): the path's archive is unpacked into
    that folder (a file as ``folder/name``, a folder as ``folder/name/...``)."""
    done = Downloaded()
    for batch in _batches(pairs, DOWNLOAD_BATCH):
        sink: TarSink | None = None
        current = -1
        try:
            pieces = client.download_files(sid, [name for name, _ in batch])
            async with contextlib.aclosing(pieces):
                async for index, piece in pieces:
                    if index != current:
                        if sink is not None:
                            await _close(sink, done)
                        sink, current = TarSink(batch[index][1]), index
                    assert sink is not None
                    await sink.feed(piece)
                    progress.update(done.bytes + sink.written)
            if sink is not None:
                await _close(sink, done)
                sink = None
        except NotFoundError as exc:
            raise await _not_found(client, sid, exc) from None
        except tarfile.TarError as exc:
            name = batch[max(current, 0)][0]
            raise ProtocolError(f"The server sent a damaged archive of {name!r}: {exc}") from None
        finally:
            if sink is not None:
                await sink.abort()
    return done


async def _close(sink: TarSink, done: Downloaded) -> None:
    await sink.close()
    done.files.extend(sink.dest / name for name in sink.files)
    done.bytes += sink.written
    done.skipped.extend(sink.skipped)


# -- listings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteEntry:
    """One entry of a work-directory listing."""

    name: str
    size: int
    is_dir: bool
    is_link: bool
    mtime: str


async def list_folder(client: RunLoopClient, sid: str, path: str) -> list[RemoteEntry]:
    """The entries of one work-directory folder (``""``: the top), by name."""
    try:
        raw = await client.list_files(sid, path or ".")
    except NotFoundError as exc:
        raise await _not_found(client, sid, exc) from None
    entries = []
    for item in raw:
        name = str(item.get("filename") or "")
        if not name or name in (".", ".."):
            continue
        mode = str(item.get("mode") or "")
        size = item.get("size")
        entries.append(
            RemoteEntry(
                name=name,
                size=size if isinstance(size, int) and not isinstance(size, bool) else 0,
                is_dir=mode.startswith("d"),
                is_link=mode.startswith("l"),
                mtime=str(item.get("mtime") or ""),
            )
        )
    return sorted(entries, key=lambda e: e.name)


async def walk_remote(
    client: RunLoopClient,
    sid: str,
    top: str = "",
    *,
    rules: IgnoreRules | None = None,
    descend: Callable[[str], bool] | None = None,
) -> dict[str, RemoteFile]:
    """The files below ``top``, by path; links are left out, and so is what ``rules`` skip.
    Only folders for which ``descend(path)`` holds are listed (all, without it)."""
    found: dict[str, RemoteFile] = {}
    stack = [top]
    while stack:
        folder = stack.pop()
        for entry in await list_folder(client, sid, folder):
            rel = _join(folder, entry.name)
            if entry.is_link or (rules is not None and rules.ignored(rel, entry.is_dir)):
                continue
            if entry.is_dir:
                if descend is None or descend(rel):
                    stack.append(rel)
            else:
                found[rel] = RemoteFile(rel, entry.size, entry.mtime)
    return found


async def remote_total(client: RunLoopClient, sid: str, names: Sequence[str]) -> int | None:
    """The bytes of files that downloading ``names`` brings (None if unknown, e.g. a link);
    a name the work directory lacks is an error here, before anything is downloaded."""
    total: int | None = 0
    for name in names:
        parent, _, base = name.rpartition("/")
        entry = next((e for e in await list_folder(client, sid, parent) if e.name == base), None)
        if entry is None:
            raise MagicError(
                "FileNotFoundError", f"No such file or folder in the work directory: {name!r}."
            )
        if entry.is_link:
            total = None
        elif total is not None:
            if entry.is_dir:
                total += sum(f.size for f in (await walk_remote(client, sid, name)).values())
            else:
                total += entry.size
    return total


# -- sync --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncReport:
    """How many files moved (and their bytes), how many were unchanged, what was refused."""

    moved: int
    bytes: int
    unchanged: int
    skipped: tuple[str, ...] = ()


async def sync_up(
    client: RunLoopClient, sid: str, root: Path, ledger: SyncLedger, progress: ProgressFactory
) -> SyncReport:
    """Send the new and changed files of ``root`` (the notebook's folder) to the work dir."""
    rules = IgnoreRules.load(root)
    local = await asyncio.get_running_loop().run_in_executor(None, walk_local, root, rules)
    folders = {rel.rsplit("/", 1)[0] for rel in local if "/" in rel}
    folders |= {f.rsplit("/", i)[0] for f in folders for i in range(f.count("/") + 1)}
    remote = await walk_remote(client, sid, rules=rules, descend=folders.__contains__)
    records = ledger.of(sid)
    send, unchanged = plan_up(local, remote, records)
    total = sum(f.size for f in send)
    shown = progress(f"Syncing {_files(len(send))} to the work directory", total)
    items = [LocalItem(root / f.rel, f.rel, f.size) for f in send]
    await upload(client, sid, items, shown)
    shown.finish()
    after: dict[str, RemoteFile] = {}
    for folder in sorted({f.rel.rpartition("/")[0] for f in send}):
        for entry in await list_folder(client, sid, folder):
            rel = _join(folder, entry.name)
            after[rel] = RemoteFile(rel, entry.size, entry.mtime)
    for f in send:
        if f.rel in after:
            records[f.rel] = SyncLedger.record(f, after[f.rel])
    _remember_unchanged(records, unchanged, local, remote)
    return SyncReport(len(send), total, len(unchanged))


async def sync_down(
    client: RunLoopClient, sid: str, root: Path, ledger: SyncLedger, progress: ProgressFactory
) -> SyncReport:
    """Bring the work directory's new and changed files into ``root``."""
    rules = IgnoreRules.load(root)
    remote = await walk_remote(client, sid, rules=rules)
    local = {rel: f for rel in remote if (f := local_file(root, rel)) is not None}
    records = ledger.of(sid)
    fetch, unchanged = plan_down(remote, local, records)
    shown = progress(
        f"Syncing {_files(len(fetch))} from the work directory", sum(f.size for f in fetch)
    )
    done = await download(client, sid, [(f.rel, (root / f.rel).parent) for f in fetch], shown)
    shown.finish()
    written = {str(path) for path in done.files}
    moved = 0
    for theirs in fetch:
        mine = local_file(root, theirs.rel)
        if mine is not None and str(root / theirs.rel) in written:
            records[theirs.rel] = SyncLedger.record(mine, theirs)
            moved += 1
    _remember_unchanged(records, unchanged, local, remote)
    return SyncReport(moved, done.bytes, len(unchanged), tuple(done.skipped))


def _remember_unchanged(
    records: dict[str, Synced],
    unchanged: list[str],
    local: dict[str, LocalFile],
    remote: dict[str, RemoteFile],
) -> None:
    """Unchanged pairs without a record get one: later syncs then need no clocks."""
    for rel in unchanged:
        if rel not in records:
            records[rel] = SyncLedger.record(local[rel], remote[rel])


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
