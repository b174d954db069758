"""A shell on a pseudo-terminal, in a session's work directory (for ``/stream/.../pty``)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path


def _shell() -> list[str]:
    for candidate in ("bash", "sh"):
        path = shutil.which(candidate)
        if path:
            return [path, "-i"] if candidate == "bash" else [path]
    return ["/bin/sh"]


class Terminal:
    """One interactive shell on a pty; output is handed to ``on_output`` as raw bytes."""

    def __init__(
        self,
        cwd: Path,
        env: dict[str, str],
        on_output: Callable[[bytes], None],
        on_exit: Callable[[], None],
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.cwd = cwd
        self.wrap = wrap  # puts the shell in the session's sandbox (SessionRunner.terminal_command)
        self.env = {**env, "TERM": env.get("TERM", "xterm-256color")}
        self.on_output = on_output
        self.on_exit = on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self.master: int | None = None

    def start(self, rows: int = 24, cols: int = 80) -> None:
        master, slave = pty.openpty()
        self._set_size(master, rows, cols)
        self.proc = subprocess.Popen(
            self.wrap(_shell()) if self.wrap is not None else _shell(),
            stdin=slave, stdout=slave, stderr=slave, cwd=self.cwd, env=self.env,
            start_new_session=True, preexec_fn=_take_controlling_tty, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the shell and every process on the pty have gone
            data = b""
        if data:
            self.on_output(data)
        else:
            self._detach()
            self.on_exit()

    def write(self, data: bytes) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        if self.master is not None:
            self._set_size(self.master, rows, cols)
            if self.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGWINCH)

    @staticmethod
    def _set_size(fd: int, rows: int, cols: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _detach(self) -> None:
        if self.master is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master)
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None

    def close(self) -> None:
        """Stop the shell (and its process group) and release the pty."""
        self._detach()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGHUP)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(2)
        self.proc = None


def _take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
