"""What ``%remote sync`` sends or brings back: ignore rules, file lists, the plan. Pure, except
:func:`walk_local`, which reads the local folder's metadata.

Which files are "new or changed": a file the other side lacks is new. For a file both sides
have, the :class:`SyncLedger` remembers, per session, both sides' (size, modification time)
after the last transfer between them: a file is changed when its side no longer matches that
record (the other side's changes are left for the other direction). Without a record (a file
moved by ``%remote upload``, or a session this kernel did not fill), the newer side wins, and
equal times (within a second: tar keeps whole seconds) with equal sizes mean unchanged.
Nothing is ever deleted.

``.remoteignore`` (in the notebook's folder) lists patterns, one a line, like ``.gitignore``:
``#`` comments, ``*``/``?``/``[...]`` within a name, ``**`` across folders, a ``/`` inside a
pattern anchors it to the notebook's folder, a trailing ``/`` matches folders only, ``!``
takes a name back. Hidden names (``.*``, with ``.ipynb_checkpoints``) are always skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

IGNORE_FILE = ".remoteignore"
#: Seconds two modification times may differ and still be "the same" (tar keeps whole seconds).
MTIME_SLACK = 1.0


# -- ignore rules ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    anchored: bool
    dirs_only: bool
    negated: bool


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            close = pattern.find("]", i + 1)
            if close == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : close].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class IgnoreRules:
    """The patterns of a ``.remoteignore``; the last one that matches a path decides."""

    def __init__(self, text: str = "") -> None:
        self.rules: list[_Rule] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            line = line[1:] if negated else line
            dirs_only = line.endswith("/")
            line = line.strip("/") if dirs_only else line
            anchored = "/" in line
            line = line.lstrip("/")
            if line:
                regex = re.compile(_glob_regex(line) + r"\Z")
                self.rules.append(_Rule(regex, anchored, dirs_only, negated))

    @classmethod
    def load(cls, folder: Path) -> IgnoreRules:
        """The rules of ``folder/.remoteignore`` (none when there is no such file)."""
        try:
            return cls((folder / IGNORE_FILE).read_text(encoding="utf-8", errors="replace"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return cls()

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether ``rel`` (a ``/``-separated path below the top) is skipped. Hidden names always
        are; a skipped folder's contents are never looked at (the callers prune)."""
        name = rel.rsplit("/", 1)[-1]
        if name.startswith("."):
            return True
        verdict = False
        for rule in self.rules:
            if rule.dirs_only and not is_dir:
                continue
            subject = rel if rule.anchored else name
            if rule.regex.match(subject):
                verdict = not rule.negated
        return verdict


# -- both sides' files -------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalFile:
    """A file of the notebook's folder: its path below the top, size and modification time."""

    rel: str
    size: int
    mtime_ns: int

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


@dataclass(frozen=True)
class RemoteFile:
    """A file of the work directory as its listing shows it (``mtime`` as the server wrote it)."""

    rel: str
    size: int
    mtime: str = ""

    @property
    def timestamp(self) -> float | None:
        return parse_mtime(self.mtime)


def parse_mtime(text: str) -> float | None:
    """A listing's ``mtime`` (ISO 8601; no zone means UTC) as a POSIX time, or None."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def local_file(root: Path, rel: str) -> LocalFile | None:
    """``root/rel`` if it is a file (links followed), else None."""
    try:
        st = (root / rel).stat()
    except OSError:
        return None
    if not os.path.isfile(root / rel):
        return None
    return LocalFile(rel, st.st_size, st.st_mtime_ns)


def walk_local(root: Path, rules: IgnoreRules) -> dict[str, LocalFile]:
    """The files below ``root`` that sync sends, by path (links to folders not followed)."""
    found: dict[str, LocalFile] = {}
    stack = [""]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(root / folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = f"{folder}/{entry.name}" if folder else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file()
            except OSError:
                continue
            if rules.ignored(rel, is_dir):
                continue
            if is_dir:
                stack.append(rel)
            elif is_file:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                found[rel] = LocalFile(rel, st.st_size, st.st_mtime_ns)
    return found


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Synced:
    """Both sides of one file right after a transfer between them."""

    local: tuple[int, int]  # (size, mtime_ns)
    remote: tuple[int, str]  # (size, mtime as listed)


@dataclass
class SyncLedger:
    """What this kernel last moved between the notebook's folder and one session's work dir."""

    session_id: str | None = None
    entries: dict[str, Synced] = field(default_factory=dict)

    def of(self, session_id: str) -> dict[str, Synced]:
        """The records of ``session_id`` (a new session starts with none)."""
        if session_id != self.session_id:
            self.session_id = session_id
            self.entries = {}
        return self.entries

    @staticmethod
    def record(local: LocalFile, remote: RemoteFile) -> Synced:
        return Synced((local.size, local.mtime_ns), (remote.size, remote.mtime))


def _source_wins(source: float | None, target: float | None, sizes_differ: bool) -> bool:
    """Without a record: send when the source is clearly newer, or when the sizes differ and
    neither side is clearly newer (or a time is unknown)."""
    if source is None or target is None:
        return sizes_differ
    if source > target + MTIME_SLACK:
        return True
    return sizes_differ and abs(source - target) <= MTIME_SLACK


def plan_up(
    local: dict[str, LocalFile], remote: dict[str, RemoteFile], records: dict[str, Synced]
) -> tuple[list[LocalFile], list[str]]:
    """(files to send, paths unchanged), in path order."""
    send: list[LocalFile] = []
    unchanged: list[str] = []
    for rel, mine in sorted(local.items()):
        theirs = remote.get(rel)
        if theirs is None:
            send.append(mine)
            continue
        record = records.get(rel)
        if record is not None:
            changed = record.local != (mine.size, mine.mtime_ns)
        else:
            changed = _source_wins(mine.mtime, theirs.timestamp, mine.size != theirs.size)
        if changed:
            send.append(mine)
        else:
            unchanged.append(rel)
    return send, unchanged


def plan_down(
    remote: dict[str, RemoteFile], local: dict[str, LocalFile], records: dict[str, Synced]
) -> tuple[list[RemoteFile], list[str]]:
    """(files to bring back, paths unchanged), in path order."""
    fetch: list[RemoteFile] = []
    unchanged: list[str] = []
    for rel, theirs in sorted(remote.items()):
        mine = local.get(rel)
        if mine is None:
            fetch.append(theirs)
            continue
        record = records.get(rel)
        if record is not None:
            changed = record.remote != (theirs.size, theirs.mtime)
        else:
            changed = _source_wins(theirs.timestamp, mine.mtime, mine.size != theirs.size)
        if changed:
            fetch.append(theirs)
        else:
            unchanged.append(rel)
    return fetch, unchanged
