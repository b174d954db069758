"""The kernel process's own output (stdout and stderr), in a log file of its session.

:class:`KernelLog` opens the file the kernel writes to, keeps it bounded (past ``LOG_MAX`` bytes
only the last ``LOG_KEEP`` are kept) and reads its tail for ``GET /session/{id}/logs`` and for
the message of a kernel that did not start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger("remote_kernel.server")

#: The kernel process's log is cut back to its last LOG_KEEP bytes once it passes LOG_MAX.
LOG_MAX = 4 * 1024 * 1024
LOG_KEEP = 1024 * 1024


class KernelLog:
    """The log file at ``path``: opened for the kernel process, trimmed, read back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def open(self) -> IO[bytes]:
        """The file, opened for appending, to hand to the kernel as its stdout and stderr."""
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def trim(self) -> None:
        """Keep the file bounded: past LOG_MAX, keep only its last LOG_KEEP bytes.

        The kernel appends (O_APPEND), so rewriting the file in place is safe for its writes.
        """
        try:
            if self.path.stat().st_size <= LOG_MAX:
                return
            with open(self.path, "r+b") as fh:
                fh.seek(-LOG_KEEP, os.SEEK_END)
                tail = fh.read()
                fh.seek(0)
                fh.write(b"[remote_kernel: earlier kernel output was dropped]\n" + tail)
                fh.truncate()
        except OSError as exc:
            log.debug("could not trim %s: %s", self.path, exc)

    def tail(self, limit: int = 256 * 1024) -> str:
        """The last ``limit`` bytes of the kernel's output, decoded."""
        if self._file is not None:
            self._file.flush()
        self.trim()
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - limit))
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
