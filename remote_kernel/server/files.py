"""Files of a session's work directory: confined paths, uploads, tar downloads, listings.

Every client-given path goes through :func:`confine`, which refuses absolute paths, ``..``
components (also percent-encoded) and anything whose real path, symlinks resolved, leaves the
work directory. Nothing is read or written outside it.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import InvalidAPIParamsError, NotFoundError, RequestTooLargeError


def confine(
    root: Path, rel: str, *, must_exist: bool = False, extra_roots: Iterable[Path] = ()
) -> Path:
    """The absolute path of ``rel`` inside ``root``; 400 when it would escape.

    ``rel`` is percent-decoded first (the SDK percent-encodes upload names), so ``..%2Fx`` is
    refused like ``../x``. ``extra_roots`` are folders mounted into the work dir: a path that
    resolves into one of them (through its link) is inside too.
    """
    if not isinstance(rel, str) or rel == "":
        raise InvalidAPIParamsError("A file path is required.")
    decoded = unquote(rel)
    if "\x00" in decoded:
        raise InvalidAPIParamsError(f"Invalid file path {rel!r}.")
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
        raise NotFoundError(f"No such file or directory in the session: {rel!r}.")
    return target


async def save_upload(
    root: Path,
    name: str,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    extra_roots: Iterable[Path] = (),
) -> Path:
    """Write one uploaded file under ``root`` (parents created); 413 past ``max_bytes``."""
    target = confine(root, name, extra_roots=extra_roots)
    if target.is_dir():
        raise InvalidAPIParamsError(f"{name!r} is a directory in the session.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.uploading")
    written = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise RequestTooLargeError(
                        f"{name!r} is larger than the server's limit of {max_bytes} bytes "
                        "(ServerApp.max_upload_bytes)."
                    )
                fh.write(chunk)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def tar_of(root: Path, rel: str, *, max_bytes: int, extra_roots: Iterable[Path] = ()) -> bytes:
    """A tar archive of one path (a directory with its contents); symlinks stay links."""
    target = confine(root, rel, must_exist=True, extra_roots=extra_roots)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(target, arcname=target.name or ".", recursive=True)
        if buf.tell() > max_bytes:
            raise RequestTooLargeError(
                f"{rel!r} is larger than the server's download limit of {max_bytes} bytes "
                "(ServerApp.max_download_bytes)."
            )
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise RequestTooLargeError(
            f"{rel!r} is larger than the server's download limit of {max_bytes} bytes "
            "(ServerApp.max_download_bytes)."
        )
    return data


def list_dir(root: Path, rel: str, *, extra_roots: Iterable[Path] = ()) -> dict[str, Any]:
    """Backend.AI's listing body: ``files`` is a JSON *string* of entries."""
    import json

    target = confine(root, rel or ".", must_exist=True, extra_roots=extra_roots)
    if not target.is_dir():
        raise InvalidAPIParamsError(f"{rel!r} is not a directory.")
    entries = []
    for entry in sorted(os.scandir(target), key=lambda e: e.name):
        st = entry.stat(follow_symlinks=False)
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
