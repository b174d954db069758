"""Files of a session's work directory: confined paths, uploads, tar downloads, listings.

Every client-given path goes through :func:`confine`, which refuses paths no file system can
take (NUL, lone surrogates or undecodable bytes, a component over ``NAME_MAX`` bytes, a whole
path over ``PATH_MAX``), absolute paths, ``..`` components (also percent-encoded) and anything
whose real path, symlinks resolved, leaves the work directory. Nothing is read or written
outside it. File-system errors caused by the path the client chose (a file where a folder is
expected, a name too long) are 400 problems, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .. import protocol as p
from ..errors import InvalidAPIParamsError, NotFoundError, RequestTooLargeError
from .safe_fs import AtomicWrite, confined_dir, open_confined

#: Longest file name (one path component), in bytes, and longest path (Linux's limits).
NAME_MAX = 255
PATH_MAX = 4096
#: Errors of a file-system call that the client's path caused (answered 400, not 500).
_CLIENT_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ELOOP, errno.EILSEQ,
     errno.EINVAL}
)  # fmt: skip


def check_path_text(rel: str) -> str:
    """``rel`` percent-decoded, if a file system can take it as a relative path; 400 otherwise.

    Refused: not a string or empty, percent-escapes that are not UTF-8, NUL, lone surrogates
    (``"\\ud800"`` in JSON, or header bytes that are not UTF-8), a component longer than
    ``NAME_MAX`` bytes and a path longer than ``PATH_MAX`` bytes.
    """
    if not isinstance(rel, str) or rel == "":
        raise InvalidAPIParamsError("A file path is required.")
    if p.has_lone_surrogate(rel):
        raise InvalidAPIParamsError(
            f"Invalid file path {rel!r}: it is not valid Unicode (a lone surrogate such as "
            '"\\ud800" in JSON, or a header filename whose bytes are not UTF-8).'
        )
    try:
        decoded = unquote(rel, errors="strict")
    except UnicodeDecodeError:
        raise InvalidAPIParamsError(
            f"Invalid file path {rel!r}: its percent-escapes are not UTF-8."
        ) from None
    if "\x00" in decoded:
        raise InvalidAPIParamsError(f"Invalid file path {rel!r}: it contains a NUL character.")
    encoded = decoded.encode("utf-8")
    if len(encoded) >= PATH_MAX:
        raise InvalidAPIParamsError(
            f"The file path {rel[:60]!r}... is too long: {len(encoded)} bytes, at most "
            f"{PATH_MAX - 1}."
        )
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            raise InvalidAPIParamsError(
                f"The file name {part[:60].decode(errors='replace')!r}... in {rel[:60]!r} is too "
                f"long: {len(part)} bytes, at most {NAME_MAX}."
            )
    return decoded


@contextlib.contextmanager
def client_os_errors(rel: str) -> Iterator[None]:
    """Answer an ``OSError`` that the client's path ``rel`` caused as 400 (ENOENT as 404)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            missing = f"No such file or directory in the work directory: {rel!r}."
            raise NotFoundError(missing) from None
        if exc.errno in _CLIENT_ERRNOS:
            raise InvalidAPIParamsError(f"Cannot use the path {rel!r}: {exc.strerror}.") from None
        raise


def confine(
    root: Path, rel: str, *, must_exist: bool = False, extra_roots: Iterable[Path] = ()
) -> Path:
    """The absolute path of ``rel`` inside ``root``; 400 when it is invalid or would escape.

    ``rel`` is percent-decoded first (the SDK percent-encodes upload names), so ``..%2Fx`` is
    refused like ``../x``. ``extra_roots`` are folders mounted into the work dir: a path that
    resolves into one of them (through its link) is inside too.
    """
    decoded = check_path_text(rel)
    if decoded.startswith(("/", "\\")) or os.path.isabs(decoded):
        raise InvalidAPIParamsError(
            f"Absolute paths are not allowed: {rel!r}; give a path relative to the work directory."
        )
    parts = decoded.replace("\\", "/").split("/")
    if ".." in parts:
        raise InvalidAPIParamsError(f"The path {rel!r} leaves the session's work directory.")
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(real_root / decoded))
    allowed = [real_root, *(Path(os.path.realpath(r)) for r in extra_roots)]
    if not any(target == r or r in target.parents for r in allowed):
        raise InvalidAPIParamsError(f"The path {rel!r} leaves the session's work directory.")
    if must_exist and not os.path.lexists(target):
        raise NotFoundError(f"No such file or directory in the work directory: {rel!r}.")
    return target


async def save_upload(
    root: Path,
    name: str,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    extra_roots: Iterable[Path] = (),
    owner: tuple[int, int] | None = None,
) -> Path:
    """Write one uploaded file under ``root`` (parents created); 413 past ``max_bytes``.

    Nothing the session plants can redirect it (:mod:`~remote_kernel.server.safe_fs`): the
    directory is reached without following links, the temporary file is new (``O_EXCL``) and
    renamed into place through the directory's descriptor. ``owner``: uid and gid the file and
    new directories get (a root server's session user).
    """
    roots = [root, *extra_roots]
    target = confine(root, name, extra_roots=roots[1:])
    base = next(
        r for r in (Path(os.path.realpath(r)) for r in roots)
        if target == r or r in target.parents
    )  # fmt: skip
    if target == base:
        raise InvalidAPIParamsError(f"{name!r} is a directory in the session.")
    parts = target.parent.relative_to(base).parts
    with client_os_errors(name):
        dir_fd = confined_dir(base, parts, create=True, owner=owner)
    try:
        with client_os_errors(name):
            try:
                st = os.stat(target.name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(st.st_mode):
                    raise InvalidAPIParamsError(f"{name!r} is a directory in the session.")
            writer = AtomicWrite(dir_fd, target.name, owner=owner)
        written = 0
        try:
            with client_os_errors(name):
                async for chunk in chunks:
                    written += len(chunk)
                    if written > max_bytes:
                        raise RequestTooLargeError(
                            f"{name!r} is larger than the server's limit of {max_bytes} bytes "
                            "(ServerApp.max_upload_bytes)."
                        )
                    writer.file.write(chunk)
                writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        os.close(dir_fd)
    return target


#: Bytes a download reads from a file (in a worker thread) and sends at a time.
READ_CHUNK = 256 * 1024


#: What a download may send beyond its checked size before it is cut off (long-name headers,
#: which :func:`tar_size` leaves out; a file growing while it is sent).
DOWNLOAD_SLACK = 1024 * 1024


class DownloadBudget:
    """Bytes a download may still send, shared by its archives (``max_bytes`` plus
    ``DOWNLOAD_SLACK``: the limit itself was checked before the response started)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.left = max_bytes + DOWNLOAD_SLACK

    def spend(self, rel: str, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _too_large(rel, self.max_bytes)


def _too_large(rel: str, max_bytes: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"{rel!r} is larger than the server's download limit of {max_bytes} bytes "
        "(ServerApp.max_download_bytes)."
    )


def tar_size(target: Path) -> int:
    """The size of the tar archive :func:`tar_stream` makes of ``target`` (without the extra
    headers of names over 100 bytes): a 512-byte header per entry, file data in 512-byte
    blocks, two end blocks, padded to whole records. Symlinks are not followed."""
    total = 0
    stack = [str(target)]
    while stack:
        path = stack.pop()
        st = os.lstat(path)
        total += tarfile.BLOCKSIZE
        if stat.S_ISREG(st.st_mode):
            total += -(-st.st_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        elif stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(path, name) for name in os.listdir(path))
    total += 2 * tarfile.BLOCKSIZE
    return -(-total // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def download_targets(
    root: Path, names: list[str], *, max_bytes: int, extra_roots: Iterable[Path] = ()
) -> list[Path]:
    """The confined path of each name to download; 400/404 for a bad one, and 413 when their
    archives together would exceed ``max_bytes``: all checked before anything is sent."""
    roots = list(extra_roots)
    targets = [confine(root, name, must_exist=True, extra_roots=roots) for name in names]
    total = 0
    for name, target in zip(names, targets, strict=True):
        with client_os_errors(name):
            total += tar_size(target)
        if total > max_bytes:
            raise _too_large(name, max_bytes)
    return targets


async def tar_stream(
    target: Path, rel: str, budget: DownloadBudget, roots: Sequence[Path] = ()
) -> AsyncIterator[bytes]:
    """A tar archive of one path (a directory with its contents; symlinks stay links), made
    piece by piece as it is sent: the same bytes as ``tarfile.add`` writes, but never more than
    ``READ_CHUNK`` of it in memory. Files are read in a worker thread. Past ``budget`` (a file
    grew since :func:`download_targets` checked) it stops with 413, which aborts the response.
    Files and directories are opened without following links and must really be inside
    ``roots`` (the work directory and mounted folders; default: ``target`` itself).
    """
    roots = list(roots) or [target]
    loop = asyncio.get_running_loop()
    tar = tarfile.TarFile(fileobj=io.BytesIO(), mode="w")  # for gettarinfo/tobuf only
    out = bytearray()
    offset = 0
    stack = [(str(target), target.name or ".")]
    with client_os_errors(rel):
        while stack:
            path, arcname = stack.pop()
            info = tar.gettarinfo(path, arcname)
            if info is None:  # a socket, a fifo...: tarfile.add skips it too
                continue
            out += info.tobuf(tar.format, tar.encoding, tar.errors)
            if info.isreg():
                with os.fdopen(open_confined(path, roots), "rb") as fh:
                    remaining = info.size
                    while remaining > 0:
                        chunk = await loop.run_in_executor(
                            None, fh.read, min(READ_CHUNK, remaining)
                        )
                        if not chunk:
                            raise OSError(errno.EIO, f"{arcname} shrank while being sent")
                        remaining -= len(chunk)
                        out += chunk
                        if len(out) >= READ_CHUNK:
                            budget.spend(rel, len(out))
                            offset += len(out)
                            yield bytes(out)
                            out.clear()
                out += tarfile.NUL * (-info.size % tarfile.BLOCKSIZE)
            elif info.isdir():
                dir_fd = open_confined(path, roots, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    names = sorted(os.listdir(dir_fd), reverse=True)  # popped in sorted order
                finally:
                    os.close(dir_fd)
                stack.extend((os.path.join(path, n), f"{arcname}/{n}") for n in names)
            if len(out) >= READ_CHUNK:
                budget.spend(rel, len(out))
                offset += len(out)
                yield bytes(out)
                out.clear()
    out += tarfile.NUL * (2 * tarfile.BLOCKSIZE)
    out += tarfile.NUL * (-(offset + len(out)) % tarfile.RECORDSIZE)
    budget.spend(rel, len(out))
    yield bytes(out)


def list_dir(root: Path, rel: str, *, extra_roots: Iterable[Path] = ()) -> dict[str, Any]:
    """Backend.AI's listing body: ``files`` is a JSON *string* of entries."""
    import json

    target = confine(root, rel or ".", must_exist=True, extra_roots=extra_roots)
    if not target.is_dir():
        raise InvalidAPIParamsError(f"{rel!r} is not a directory.")
    entries = []
    with client_os_errors(rel):
        scanned = sorted(os.scandir(target), key=lambda e: e.name)
    for entry in scanned:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed since the scan
            continue
        entries.append(
            {
                "filename": entry.name,
                "size": st.st_size,
                "mode": stat.filemode(st.st_mode),
                "ctime": _iso(st.st_ctime),
                "mtime": _iso(st.st_mtime),
                "atime": _iso(st.st_atime),
            }
        )
    return {"files": json.dumps(entries), "errors": "", "abspath": rel or "."}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()
