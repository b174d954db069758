"""File access inside a session's directories that the session itself cannot redirect.

The session's code owns its work directory and runs at the same time as the server's file
handlers, so any path the server checked may be swapped for a symlink before the server uses it
(a planted ``.name.uploading`` link, a directory replaced by a link to ``/etc``). On a root server
that would turn an upload into a write anywhere and a download into a read of anything. So:

- :func:`open_confined` opens with ``O_NOFOLLOW`` and then checks where the *opened* file really
  is (``/proc/self/fd``), not where the path pointed a moment before;
- :func:`confined_dir` walks to a directory one component at a time with ``O_NOFOLLOW``
  (creating what is missing), and :class:`AtomicWrite` writes a new file beside its target with
  ``O_EXCL | O_NOFOLLOW`` relative to that directory's descriptor and renames it into place
  there; ``rename`` replaces a link, it never follows one.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidAPIParamsError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class ConfinementError(InvalidAPIParamsError):
    """A path that is, or has become, a link leading out of the session's directories."""


def _real_roots(roots: Sequence[Path]) -> list[str]:
    return [os.path.realpath(r) for r in roots]


def fd_path(fd: int) -> str:
    """Where an open file really is (the kernel's view, after every link)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def open_confined(path: Path | str, roots: Sequence[Path], flags: int = os.O_RDONLY) -> int:
    """``os.open`` that refuses a final symlink and anything that ended up outside ``roots``."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link; a parent became a link to a file
            name = Path(path).name
            raise ConfinementError(f"{name!r} is a symbolic link; not followed.") from exc
        raise
    try:
        if not _inside(fd_path(fd), _real_roots(roots)):
            raise ConfinementError(f"{Path(path).name!r} leads out of the session's directories.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def confined_dir(
    root: Path, parts: Sequence[str], *, create: bool, owner: tuple[int, int] | None = None
) -> int:
    """A descriptor of ``root/parts...``, reached without following any link below ``root``;
    missing directories are made (``owner``: their uid and gid) when ``create``."""
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise ConfinementError(f"Invalid path component {part!r}.")
            try:
                nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile; opened (without following) just below
                else:
                    if owner is not None:
                        os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfinementError(
                        f"{part!r} is a symbolic link or not a directory; not followed."
                    ) from exc
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class AtomicWrite:
    """Write ``name`` in the directory ``dir_fd`` atomically: a fresh hidden temporary file
    (``O_CREAT | O_EXCL | O_NOFOLLOW``), renamed over ``name`` on :meth:`commit`, removed on
    :meth:`abort`. The caller keeps ``dir_fd`` open until then."""

    def __init__(self, dir_fd: int, name: str, *, owner: tuple[int, int] | None = None) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ConfinementError(f"Invalid file name {name!r}.")
        self.dir_fd = dir_fd
        self.name = name
        stem = os.fsencode(name)[:200].decode("utf-8", "ignore")
        self.tmp = f".{stem}.{secrets.token_hex(4)}.uploading"
        fd = os.open(
            self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644,
            dir_fd=dir_fd,
        )  # fmt: skip
        if owner is not None:
            os.fchown(fd, *owner)
        self.file = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def abort(self) -> None:
        self.file.close()
        try:
            os.unlink(self.tmp, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
