"""Virtual folders: the folders sessions mount, each one owned by the access key that made it.

A folder lives at ``<vfolder_root>/<owner dir>/<name>``, where the owner dir is the first 16 hex
digits of the SHA-256 of the access key (paths never show a key). Its id and creation time are
kept next to it in ``<owner dir>/.meta/<name>.json``. Folder names start with a letter, digit or
``_``, so no folder can be named like ``.meta`` or a folder being deleted (``.trash-<uuid>``).

Every lookup is within the caller's own folders: another key's folder of the same name does not
exist for the caller, and no error lists a name the caller does not own. Plain I/O only (no
aiohttp); the HTTP handlers are in :mod:`.folder_handlers`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidAPIParamsError, NotFoundError, ServerError

VFOLDER_NAME_RE = re.compile(r"^[\w][\w.-]{0,63}\Z", re.ASCII)
META_DIR = ".meta"
TRASH_PREFIX = ".trash-"


class VFolderAlreadyExistsError(ServerError):
    """The caller already has a folder of that name (Backend.AI's ``vfolder-already-exists``)."""

    status = 409
    kind = "vfolder-already-exists"
    title = "The virtual folder already exists with the same name."


def owner_dir_name(owner: str) -> str:
    """The directory of ``owner``'s folders: a short SHA-256 hex of the access key."""
    return hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_name(name: Any) -> str:
    """``name`` if it is a valid folder name; 400 otherwise."""
    if not isinstance(name, str) or not VFOLDER_NAME_RE.match(name):
        raise InvalidAPIParamsError(
            f"Invalid folder name {name!r}: 1 to 64 characters, letters, digits, '_', '-' or "
            "'.', starting with a letter, digit or '_'."
        )
    return name


@dataclass(frozen=True)
class Folder:
    """One of a key's folders."""

    id: str  # UUID, 32 hex digits
    name: str
    path: Path
    created_at: str
    user: str  # the owner dir name, a stand-in for Backend.AI's user UUID

    def entry(self) -> dict[str, Any]:
        """One item of ``GET /folders`` (and the body of ``POST /folders``)."""
        return {
            "name": self.name,
            "id": self.id,
            "host": "local",
            "usage_mode": "general",
            "created_at": self.created_at,
            "is_owner": True,
            "permission": "rw",
            "user": self.user,
            "group": None,
            "creator": "",
            "user_email": None,
            "group_name": None,
            "ownership_type": "user",
            "type": "user",
            "unmanaged_path": None,
            "cloneable": False,
            "max_files": 0,
            "max_size": 0,
            "status": "ready",
        }

    def info(self) -> dict[str, Any]:
        """The body of ``GET /folders/{name}``: the entry, with file count and bytes used."""
        files, used = 0, 0
        for root, _dirs, names in os.walk(self.path):
            for fname in names:
                with contextlib.suppress(OSError):
                    used += os.lstat(os.path.join(root, fname)).st_size
                    files += 1
        return {
            **self.entry(),
            "numFiles": files,
            "num_files": files,
            "used_bytes": used,
            "created": self.created_at,
            "last_used": self.created_at,
        }


class FolderStore:
    """The folders of every key under one root; every call is scoped to one owner."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def owner_root(self, owner: str) -> Path:
        return self.root / owner_dir_name(owner)

    def _meta_path(self, owner: str, name: str) -> Path:
        return self.owner_root(owner) / META_DIR / f"{name}.json"

    def _load(self, owner: str, name: str) -> Folder | None:
        """The folder ``name`` of ``owner`` if it exists (its metadata written if missing)."""
        path = self.owner_root(owner) / name
        if not VFOLDER_NAME_RE.match(name) or path.is_symlink() or not path.is_dir():
            return None
        meta_path = self._meta_path(owner, name)
        try:
            meta = json.loads(meta_path.read_text())
            folder_id, created = str(uuid.UUID(meta["id"]).hex), str(meta["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            folder_id, created = self._write_meta(owner, name)
        return Folder(folder_id, name, path, created, owner_dir_name(owner))

    def _write_meta(self, owner: str, name: str) -> tuple[str, str]:
        folder_id = uuid.uuid4().hex
        created = datetime.now(timezone.utc).isoformat()
        meta_path = self._meta_path(owner, name)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta_path.with_name(f".{name}.{folder_id}.tmp")
        tmp.write_text(json.dumps({"id": folder_id, "created_at": created}))
        os.replace(tmp, meta_path)
        return folder_id, created

    def list(self, owner: str) -> builtins.list[Folder]:
        """The caller's folders, by name."""
        base = self.owner_root(owner)
        if not base.is_dir():
            return []
        folders = (self._load(owner, p.name) for p in sorted(base.iterdir()))
        return [f for f in folders if f is not None]

    def names(self, owner: str) -> builtins.list[str]:
        return [f.name for f in self.list(owner)]

    def not_found(
        self, owner: str, key: str, what: str = "No such virtual folder"
    ) -> NotFoundError:
        """404 for ``key``; the message lists the caller's own folders, nobody else's."""
        mine = self.names(owner)
        return NotFoundError(
            f"{what}: {key!r}. Your folders: {', '.join(mine) or 'none'} "
            "(create one with POST /folders).",
            data={"available": mine},
        )

    def get(self, owner: str, key: str) -> Folder:
        """The caller's folder by name, or by id (UUID, hex or dashed); 404 otherwise."""
        if isinstance(key, str) and VFOLDER_NAME_RE.match(key):
            folder = self._load(owner, key)
            if folder is not None:
                return folder
        try:
            wanted = uuid.UUID(str(key)).hex
        except ValueError:
            wanted = None
        if wanted is not None:
            for folder in self.list(owner):
                if folder.id == wanted:
                    return folder
        raise self.not_found(owner, str(key))

    def by_id(self, owner: str, key: Any) -> Folder:
        """The caller's folder of id ``key`` (UUID, hex or dashed); 400 not an id, 404 unknown."""
        try:
            wanted = uuid.UUID(key).hex if isinstance(key, str) else None
        except ValueError:
            wanted = None
        if wanted is None:
            raise InvalidAPIParamsError(f"Invalid folder id {key!r}: a UUID is expected.")
        folder = next((f for f in self.list(owner) if f.id == wanted), None)
        if folder is None:
            raise self.not_found(owner, key, "No such folder to mount")
        return folder

    def create(self, owner: str, name: Any) -> Folder:
        """A new empty folder; 400 for a bad name, 409 if the caller already has one so named."""
        name = check_name(name)
        base = self.owner_root(owner)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = base / name
        try:
            path.mkdir()
        except FileExistsError:
            raise VFolderAlreadyExistsError(
                f"You already have a folder named {name!r}.", data={"name": name}
            ) from None
        self._write_meta(owner, name)
        folder = self._load(owner, name)
        assert folder is not None
        return folder

    def detach(self, folder: Folder) -> Path:
        """Take ``folder`` away at once (its name is free again); return where its files are now.

        The caller deletes the returned directory (slow for big folders: off the event loop).
        """
        trash = folder.path.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex}")
        os.rename(folder.path, trash)
        with contextlib.suppress(OSError):
            (folder.path.parent / META_DIR / f"{folder.name}.json").unlink()
        return trash

    @staticmethod
    def purge(trash: Path) -> None:
        shutil.rmtree(trash, ignore_errors=True)

    def mount_source(self, owner: str, name: Any) -> Path:
        """The directory a session of ``owner`` mounts for ``name``; 400 bad name, 404 unknown."""
        if not isinstance(name, str) or not VFOLDER_NAME_RE.match(name):
            raise InvalidAPIParamsError(f"Invalid folder name {name!r}.")
        folder = self._load(owner, name)
        if folder is None:
            raise self.not_found(owner, name, "No such folder to mount")
        return folder.path.resolve()
