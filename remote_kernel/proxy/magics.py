"""``%remote`` lines: find them in a cell, parse them, complete them. Pure.

The proxy runs ``%remote`` lines itself (the remote kernel never sees them). A cell that has
any is split into steps, in order: chunks of code (run remotely) and magic lines (run here)::

    plan_cell("x = 1\\n%remote upload data.csv\\nprint(x)")
    -> [CodeChunk("x = 1"), MagicLine(2, "%remote upload data.csv", Upload(("data.csv",))),
        CodeChunk("print(x)")]

Only lines that start a line (column 0) are magics; an indented ``%remote`` line is refused
(it would sit inside a block, which the proxy cannot split), and a cell that starts with a cell
magic (``%%time``...) belongs to it entirely. Every line is parsed before anything runs, so a
typo on the last line stops the cell before its first line has run. Arguments follow argparse
rules (quotes as in a shell, ``--to DIR`` or ``--to=DIR``); an error is a
:class:`MagicUsageError` whose message names the line and the fix.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any, NoReturn

#: The work directory of a Backend.AI session; remote paths are relative to it.
WORK_DIR = "/home/work"

_MAGIC_RE = re.compile(r"^%remote(?=\s|$)")
_INDENTED_RE = re.compile(r"^\s+%remote(?=\s|$)")


class MagicError(Exception):
    """A ``%remote`` line failed in a way the user can fix; shown as ``ename: message``."""

    def __init__(self, ename: str, message: str) -> None:
        super().__init__(message)
        self.ename = ename


class MagicUsageError(MagicError):
    """A ``%remote`` line does not parse."""

    def __init__(self, message: str) -> None:
        super().__init__("UsageError", message)


# -- commands --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """Send local files or folders (recursively) into ``to``, a work-directory folder."""

    sources: tuple[str, ...]
    to: str = ""


@dataclass(frozen=True)
class Download:
    """Bring work-directory files or folders back into ``to``, a local folder."""

    sources: tuple[str, ...]
    to: str = "."


@dataclass(frozen=True)
class Ls:
    """List one work-directory folder: names and sizes (hidden names with ``all``)."""

    path: str = ""
    all: bool = False


@dataclass(frozen=True)
class Sync:
    """Send the notebook folder's new and changed files (``down``: bring the work dir's back)."""

    down: bool = False


@dataclass(frozen=True)
class Info:
    """The session: name, image, endpoint, resources, work directory, uptime."""


@dataclass(frozen=True)
class Help:
    """Usage, of everything or of one subcommand."""

    topic: str = ""


Command = Upload | Download | Ls | Sync | Info | Help


# -- parsing -----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        topic = self.prog.split()[-1]
        raise MagicUsageError(f"{self.prog}: {message}. See `%remote help {topic}`.")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise MagicUsageError(message or f"{self.prog}: invalid arguments")


class _Formatter(argparse.HelpFormatter):
    """Help at a fixed width (not the kernel process's terminal's)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=90)


def _parsers() -> dict[str, _Parser]:
    def new(name: str, description: str) -> _Parser:
        return _Parser(
            prog=f"%remote {name}", description=description, add_help=False,
            allow_abbrev=False, formatter_class=_Formatter,
        )  # fmt: skip

    upload = new(
        "upload",
        "Send files or folders (recursively) from the notebook's folder to the work directory.",
    )
    upload.add_argument("sources", nargs="+", metavar="LOCAL", help="a file or folder")
    upload.add_argument(
        "--to", default="", metavar="REMOTE_DIR", help="work-directory folder (default: its top)"
    )
    download = new("download", "Bring files or folders from the work directory back.")
    download.add_argument("sources", nargs="+", metavar="REMOTE", help="a file or folder")
    download.add_argument(
        "--to", default=".", metavar="LOCAL_DIR", help="local folder (default: the notebook's)"
    )
    ls = new("ls", "List a work-directory folder: names and sizes.")
    ls.add_argument("path", nargs="?", default="", metavar="REMOTE_DIR")
    ls.add_argument("-a", "--all", action="store_true", help="also show hidden names")
    sync = new(
        "sync",
        "Send the notebook folder's new and changed files to the work directory, skipping "
        "hidden files, .ipynb_checkpoints and what .remoteignore lists.",
    )
    sync.add_argument(
        "--down", action="store_true", help="bring the work directory's new and changed files back"
    )
    info = new("info", "The session: name, image, endpoint, resources, work directory, uptime.")
    help_ = new("help", "Usage of %remote, or of one subcommand.")
    help_.add_argument("topic", nargs="?", default="", metavar="SUBCOMMAND")
    return {"upload": upload, "download": download, "ls": ls, "sync": sync, "info": info,
            "help": help_}  # fmt: skip


_PARSERS = _parsers()
SUBCOMMANDS: tuple[str, ...] = tuple(_PARSERS)
_OPTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(opt for action in parser._actions for opt in action.option_strings
                if opt.startswith("--"))
    for name, parser in _PARSERS.items()
}  # fmt: skip

USAGE = """\
%remote moves files between the notebook's folder and the remote session's work directory.
The kernel runs %remote lines itself, in order with the code around them.

  %remote upload LOCAL... [--to REMOTE_DIR]    send files or folders (recursively)
  %remote download REMOTE... [--to LOCAL_DIR]  bring files or folders back
  %remote ls [REMOTE_DIR] [-a]                 list a work-directory folder: names and sizes
  %remote sync [--down]                        send the notebook folder's new and changed files
                                               (--down: bring the work directory's back)
  %remote info                                 session, image, endpoint, resources, work dir, uptime
  %remote help [SUBCOMMAND]                    this text, or one subcommand's

Local paths are relative to the notebook's folder, remote paths to the work directory.
sync skips hidden files, .ipynb_checkpoints and the patterns listed in .remoteignore.
"""


def usage(topic: str = "") -> str:
    """The help text of ``%remote`` or of one subcommand."""
    if not topic:
        return USAGE
    parser = _PARSERS.get(topic)
    if parser is None:
        raise MagicUsageError(_unknown(topic))
    return parser.format_help()


def _unknown(name: str) -> str:
    return f"%remote: unknown subcommand {name!r}; use one of {', '.join(SUBCOMMANDS)}."


def is_magic_line(line: str) -> bool:
    return bool(_MAGIC_RE.match(line))


def parse_line(line: str) -> Command:
    """One ``%remote ...`` line as a command; :class:`MagicUsageError` if it does not parse."""
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise MagicUsageError(f"%remote: cannot read {line.strip()!r}: {exc}.") from None
    args = words[1:]
    if not args:
        return Help()
    name, rest = args[0], args[1:]
    parser = _PARSERS.get(name)
    if parser is None:
        raise MagicUsageError(_unknown(name))
    if "-h" in rest or "--help" in rest:
        return Help(name)
    ns = parser.parse_args(rest)
    if name == "upload":
        return Upload(tuple(ns.sources), remote_path(ns.to, allow_top=True))
    if name == "download":
        return Download(tuple(remote_path(s) for s in ns.sources), ns.to)
    if name == "ls":
        return Ls(remote_path(ns.path, allow_top=True), ns.all)
    if name == "sync":
        return Sync(ns.down)
    if name == "info":
        return Info()
    if ns.topic and ns.topic not in _PARSERS:
        raise MagicUsageError(_unknown(ns.topic))
    return Help(ns.topic)


def remote_path(text: str, *, allow_top: bool = False) -> str:
    """A work-directory path, normalised and relative (``""`` is the top).

    ``/home/work/x`` is taken as ``x``; other absolute paths and paths that leave the work
    directory (``..``) are refused.
    """
    path = text.strip()
    if path == WORK_DIR or path.startswith(WORK_DIR + "/"):
        path = path[len(WORK_DIR) :]
        path = path.lstrip("/")
    if path.startswith("/"):
        raise MagicUsageError(
            f"%remote: {text!r} is not in the work directory; remote paths are relative to it "
            f"({WORK_DIR})."
        )
    norm = posixpath.normpath(path) if path else "."
    if norm == ".." or norm.startswith("../"):
        raise MagicUsageError(f"%remote: {text!r} leaves the work directory.")
    if norm == ".":
        if not allow_top:
            raise MagicUsageError("%remote: name a file or folder of the work directory.")
        return ""
    return norm


# -- cells -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodeChunk:
    """Lines of code between magic lines, run remotely as one execution."""

    code: str


@dataclass(frozen=True)
class MagicLine:
    """A ``%remote`` line, with its 1-based line number in the cell."""

    lineno: int
    line: str
    command: Command


Step = CodeChunk | MagicLine


def has_magic(code: str) -> bool:
    """Whether the cell holds ``%remote`` lines for the proxy (cheap; see :func:`plan_cell`)."""
    if "%remote" not in code or _starts_with_cell_magic(code):
        return False
    return any(is_magic_line(line) or _INDENTED_RE.match(line) for line in code.splitlines())


def _starts_with_cell_magic(code: str) -> bool:
    return code.lstrip().startswith("%%")


def plan_cell(code: str) -> list[Step]:
    """The cell as steps in order; whitespace-only chunks are left out.

    Raises :class:`MagicUsageError` for the first line that does not parse (with its number).
    """
    steps: list[Step] = []
    pending: list[str] = []

    def flush() -> None:
        text = "\n".join(pending)
        if text.strip():
            steps.append(CodeChunk(text))
        pending.clear()

    for lineno, line in enumerate(code.splitlines(), start=1):
        if _INDENTED_RE.match(line):
            raise MagicUsageError(
                f"line {lineno}: %remote must start the line; it runs in the kernel between the "
                "code around it, so it cannot be indented inside a block."
            )
        if not is_magic_line(line):
            pending.append(line)
            continue
        flush()
        try:
            command = parse_line(line)
        except MagicUsageError as exc:
            raise MagicUsageError(f"line {lineno}: {exc}") from None
        steps.append(MagicLine(lineno, line.rstrip(), command))
    flush()
    return steps


def history_stub(code: str) -> str:
    """The cell's ``%remote`` lines as Python comments: what a remote that counts cells runs for
    a cell without code, so that the cell takes an execution count there too."""
    lines = [line.strip() for line in code.splitlines()
             if is_magic_line(line) or _INDENTED_RE.match(line)]  # fmt: skip
    return "\n".join(f"# {line}" for line in lines)


# -- completion --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathQuery:
    """Completion of a path: list ``folder`` (local or remote) for names starting ``prefix``."""

    remote: bool
    folder: str
    prefix: str
    start: int
    end: int


def complete(code: str, cursor_pos: int) -> dict[str, Any] | PathQuery | None:
    """The ``complete_reply`` for a cursor on a ``%remote`` line, a :class:`PathQuery` when a
    path is being typed (the caller lists the folder, then calls :func:`path_reply`), or None
    when the cursor is not on a ``%remote`` line."""
    pos = max(0, min(cursor_pos, len(code)))
    line_start = code.rfind("\n", 0, pos) + 1
    before = code[line_start:pos]
    if not is_magic_line(before):
        return None
    end = pos
    words = before.split()
    typing = "" if before[-1:].isspace() else words[-1]
    start = pos - len(typing)
    index = len(words) - (1 if typing else 0)  # the word being typed: 1 is the subcommand
    if index <= 0:
        return _reply([], start, end)
    if index == 1:
        return _reply([s for s in SUBCOMMANDS if s.startswith(typing)], start, end)
    name = words[1]
    if typing.startswith("-"):
        return _reply([o for o in _OPTIONS.get(name, ()) if o.startswith(typing)], start, end)
    after_to = words[index - 1] == "--to"
    if name == "upload":  # local sources, a remote --to
        return _path_query(after_to, typing, start, end)
    if name == "download":  # remote sources, a local --to
        return _path_query(not after_to, typing, start, end)
    if name == "ls":
        return _path_query(True, typing, start, end)
    if name == "help" and index == 2:
        return _reply([s for s in SUBCOMMANDS if s.startswith(typing)], start, end)
    return _reply([], start, end)


def _path_query(remote: bool, typing: str, start: int, end: int) -> PathQuery:
    folder, _, prefix = typing.rpartition("/")
    return PathQuery(remote, folder + "/" if folder else "", prefix, start, end)


def path_reply(query: PathQuery, names: list[tuple[str, bool]]) -> dict[str, Any]:
    """The ``complete_reply`` of a :class:`PathQuery` from the folder's (name, is_folder)."""
    matches = [
        query.folder + name + ("/" if is_dir else "")
        for name, is_dir in sorted(names)
        if name.startswith(query.prefix) and (query.prefix.startswith(".") or
                                              not name.startswith("."))
    ]  # fmt: skip
    return _reply(matches, query.start, query.end)


def _reply(matches: list[str], start: int, end: int) -> dict[str, Any]:
    return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": end,
            "metadata": {}}  # fmt: skip
