"""``RemoteCommands``: what each ``%remote`` subcommand does, and the lines it reports.

Called by :class:`~remote_kernel.proxy.magic_cell.MagicCell` for each magic line, on the
kernel's main event loop. A command publishes its report (``stream`` stdout) and, for a
transfer that lasts, a :class:`~remote_kernel.proxy.progress.Progress` display; it raises
:class:`~remote_kernel.proxy.magics.MagicError` (or a
:class:`~remote_kernel.errors.RemoteKernelError`) for the cell to report as its error.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from time import time
from typing import Any, Protocol

from .. import protocol as p
from ..errors import RemoteKernelError, SessionNotFoundError
from . import transfer
from .cell import CellHost
from .magics import (
    WORK_DIR,
    Command,
    Download,
    Help,
    Info,
    Ls,
    MagicError,
    Sync,
    Upload,
    usage,
)
from .progress import Progress, Publish, format_size
from .sync import SyncLedger, parse_mtime

#: Code run (silently, no history) to learn the remote's working directory.
CWD_PROBE = "print(__import__('os').getcwd())"

UPLOADED = "Uploaded {files} ({size}) to {where}.\n"
DOWNLOADED = "Downloaded {files} ({size}) into {where}.\n"
SYNCED_UP = "Sync to the work directory: {moved} sent ({size}), {unchanged} unchanged.\n"
SYNCED_DOWN = "Sync from the work directory: {moved} received ({size}), {unchanged} unchanged.\n"
REFUSED = "[remote_kernel] Refused {count} unsafe archive entr{ies} (not written):\n{lines}"
EMPTY_FOLDER = "(empty)\n"


class MagicHost(CellHost, Protocol):
    """What the ``%remote`` commands need from the kernel, beyond what a cell needs."""

    transfer_progress_after: float
    sync_ledger: SyncLedger
    start_sync: str  # the report of the sync at session start ("" if there was none)


def files_count(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def format_resources(slots: Any) -> str:
    """``{"cpu": 1, "mem": "1073741824"}`` -> ``cpu=1, mem=1.0 GiB``."""
    if not isinstance(slots, dict) or not slots:
        return "(server defaults)"
    parts = []
    for key, value in sorted(slots.items()):
        if key == "mem" and str(value).isdigit():
            value = format_size(int(value))
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def format_listing(entries: list[transfer.RemoteEntry], show_hidden: bool) -> str:
    """One line per entry: the size (right-aligned; ``-`` for a folder) and the name (with
    ``/`` after a folder, ``@`` after a link)."""
    shown = [e for e in entries if show_hidden or not e.name.startswith(".")]
    if not shown:
        return EMPTY_FOLDER
    lines = []
    for e in shown:
        size = "-" if e.is_dir or e.is_link else format_size(e.size)
        suffix = "/" if e.is_dir else "@" if e.is_link else ""
        lines.append(f"{size:>10}  {e.name}{suffix}\n")
    return "".join(lines)


class RemoteCommands:
    """Runs ``%remote`` commands for one cell.

    ``session`` waits for the remote session and returns its id; ``hidden`` runs code in the
    remote kernel silently and returns what it printed (used by ``info``).
    """

    def __init__(
        self,
        host: MagicHost,
        publish: Publish,
        session: Callable[[], Awaitable[str]],
        hidden: Callable[[str], Awaitable[str]],
        cwd: Path | None = None,
    ) -> None:
        self.host = host
        self.publish = publish
        self.session = session
        self.hidden = hidden
        self.cwd = cwd or Path.cwd()

    async def run(self, command: Command) -> None:
        if isinstance(command, Help):
            self._print(usage(command.topic))
        elif isinstance(command, Upload):
            await self.upload(command)
        elif isinstance(command, Download):
            await self.download(command)
        elif isinstance(command, Ls):
            await self.ls(command)
        elif isinstance(command, Sync):
            await self.sync(command)
        elif isinstance(command, Info):
            await self.info()

    # -- output ------------------------------------------------------------------------------
    def _print(self, text: str, name: str = "stdout") -> None:
        self.publish("stream", {"name": name, "text": text})

    def _progress(self, label: str, total: int | None) -> Progress:
        return Progress(self.publish, label, total, after=self.host.transfer_progress_after)

    def _refused(self, skipped: list[str] | tuple[str, ...]) -> None:
        if skipped:
            lines = "".join(f"  {line}\n" for line in skipped)
            ies = "y" if len(skipped) == 1 else "ies"
            self._print(REFUSED.format(count=len(skipped), ies=ies, lines=lines), "stderr")

    # -- the subcommands -----------------------------------------------------------------------
    async def upload(self, command: Upload) -> None:
        items = transfer.upload_plan(self.cwd, command.sources, command.to)
        sid = await self.session()
        total = sum(item.size for item in items)
        progress = self._progress(f"Uploading {files_count(len(items))}", total)
        await transfer.upload(self.host.remote.client, sid, items, progress)
        progress.finish()
        where = f"{command.to}/ in the work directory" if command.to else "the work directory"
        self._print(UPLOADED.format(files=files_count(len(items)), size=format_size(total),
                                    where=where))  # fmt: skip

    async def download(self, command: Download) -> None:
        sid = await self.session()
        client = self.host.remote.client
        total = await transfer.remote_total(client, sid, command.sources)
        dest = self.cwd / os.path.expanduser(command.to)
        if dest.exists() and not dest.is_dir():
            raise MagicError("NotADirectoryError", f"{command.to!r} is a file, not a folder.")
        label = f"Downloading {', '.join(command.sources)}"
        progress = self._progress(label if len(label) <= 60 else label[:57] + "...", total)
        done = await transfer.download(client, sid, [(s, dest) for s in command.sources],
                                       progress)  # fmt: skip
        progress.finish()
        where = "the notebook's folder" if command.to in ("", ".") else f"{command.to}/"
        self._print(DOWNLOADED.format(files=files_count(len(done.files)),
                                      size=format_size(done.bytes), where=where))  # fmt: skip
        self._refused(done.skipped)

    async def ls(self, command: Ls) -> None:
        sid = await self.session()
        entries = await transfer.list_folder(self.host.remote.client, sid, command.path)
        self._print(format_listing(entries, command.all))

    async def sync(self, command: Sync) -> None:
        sid = await self.session()
        client, ledger = self.host.remote.client, self.host.sync_ledger
        if command.down:
            report = await transfer.sync_down(client, sid, self.cwd, ledger, self._progress)
            text = SYNCED_DOWN
        else:
            report = await transfer.sync_up(client, sid, self.cwd, ledger, self._progress)
            text = SYNCED_UP
        self._print(text.format(moved=report.moved, size=format_size(report.bytes),
                                unchanged=report.unchanged))  # fmt: skip
        self._refused(report.skipped)

    async def info(self) -> None:
        sid = await self.session()
        remote = self.host.remote
        client = remote.client
        try:
            info = await client.session_info(sid, timeout=10)
        except SessionNotFoundError:
            raise
        except RemoteKernelError:
            info = {}
        slots = info.get("occupiedSlots") or info.get("requestedSlots") or remote.spec.resources
        rows = [
            ("session", f"{remote.spec.name} ({sid})"),
            ("image", str(info.get("image") or remote.spec.image)),
            ("endpoint", client.endpoint),
            ("resources", format_resources(slots)),
            ("work dir", await self._work_dir()),
            ("uptime", _uptime(info)),
        ]
        if self.host.start_sync:
            rows.append(("start sync", self.host.start_sync))
        self._print("".join(f"{key:<11}{value}\n" for key, value in rows))

    async def _work_dir(self) -> str:
        """The remote kernel's working directory, asked (silently) when it is a Python kernel
        on a server with the lossless console; else Backend.AI's ``/home/work``."""
        remote = self.host.remote
        language = (remote.kernel_info.get("language_info") or {}).get("name")
        if language == "python" and remote.client.has(p.FEATURE_JUPYTER_CONSOLE):
            printed = (await self.hidden(CWD_PROBE)).strip()
            if printed.startswith("/") and "\n" not in printed:
                return printed
        return WORK_DIR


def _uptime(info: dict[str, Any]) -> str:
    age = info.get("age")
    seconds: float | None = None
    if isinstance(age, (int, float)) and not isinstance(age, bool):
        seconds = age / 1000
    elif isinstance(info.get("creationTime"), str):
        created = parse_mtime(info["creationTime"])
        seconds = time() - created if created is not None else None
    return str(timedelta(seconds=int(seconds))) if seconds is not None else "unknown"


START_SYNC_FAILED = (
    "[remote_kernel] Sending the notebook's folder to the new session (sync_on_start) failed: "
    "{error}\nRun `%remote sync` to try again.\n"
)


async def sync_at_start(host: MagicHost, session_id: str) -> None:
    """``RemoteKernel.sync_on_start``: send the notebook's folder to a new session before its
    first cell runs, without a display. A failure never fails the session: the next cell
    shows it (a note), ``%remote info`` too."""
    try:
        report = await transfer.sync_up(
            host.remote.client, session_id, Path.cwd(), host.sync_ledger,
            lambda label, total: Progress(None, label, total),
        )  # fmt: skip
    except (RemoteKernelError, MagicError, OSError) as exc:
        host.start_sync = f"failed: {exc}"
        host.remote.notes.append(START_SYNC_FAILED.format(error=exc))
        return
    host.start_sync = (
        f"{report.moved} sent ({format_size(report.bytes)}), {report.unchanged} unchanged"
    )
